#!/usr/bin/env bash
# The warehouse benchmarks of docs/benchmarks.md, against influxd 1.6 started here on a free
# port in a temp dir:
#   1. one day of a DEVICES-device fleet's windows (scripts/gen-windows.py, the W1 registry)
#      rolled up by `iotpipe etl` end to end: seconds, peak RSS, device-hours read per second,
#      rows written per second, Parquet bytes per row; then the same pass again (fingerprints
#      only: nothing changed);
#   2. a month of MONTH_DEVICES devices rolled up, then one analytics question, a month of
#      per-site hourly means, asked of DuckDB over the warehouse and of InfluxDB (InfluxQL over
#      the windows), best of 3 each.
#
#   scripts/bench-etl.sh [devices] [month_devices] [workers]   (default: 10000 100 1)
#
# The windows are written once (InfluxDB 1.6 takes them at about 32,000 points/s here: 18 min
# for the day) into target/bench/etl/influxdb and kept for the next run.
set -euo pipefail
cd "$(dirname "$0")/.."
devices=${1:-10000}
month_devices=${2:-100}
workers=${3:-1}
workload=${IOTPIPE_WORKLOAD:-../shared/workload}
python=${IOTPIPE_PYTHON:-target/pyenv/bin/python}
registry=target/bench/w1/registry.jsonl
cargo build --release --quiet
if [ ! -s "$registry" ]; then
    mkdir -p target/bench/w1
    python3 "$workload/gen_workload.py" --devices 10000 --seconds 200 --seed 42 \
        --out target/bench/w1/events.jsonl --registry-out "$registry"
fi
"$python" -c "import duckdb" 2>/dev/null || { echo "bench-etl.sh: run scripts/test.sh first (duckdb in $python)" >&2; exit 1; }

work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
store=target/bench/etl
mkdir -p "$store"
influx_dir=$PWD/$store/influxdb
start_influxd
echo "influxd 1.6 at $influx_url, data in $influx_dir"
generate() { # database days devices
    local marker="$store/$1-$3.done"
    if [ -e "$marker" ]; then
        echo "  (windows written by an earlier run: $(cat "$marker"))"
        return
    fi
    local started=$SECONDS
    python3 scripts/gen-windows.py "$influx_url" "$1" "$registry" 2024-01-01 "$2" "$3" >"$work/generated"
    echo "$(cat "$work/generated") in $((SECONDS - started)) s" | tee "$marker"
}

etl_config() { # database warehouse
    printf 'warehouse = "%s"\nregistry = "%s"\nworkers = %s\n[influx]\nurl = "%s"\ndatabase = "%s"\n' \
        "$2" "$PWD/$registry" "$workers" "$influx_url" "$1" >"$work/$1.toml"
}
etl() { # database from to -> prints the report's fields
    /usr/bin/time -f "rss_kb=%M" -o "$work/time" ./target/release/iotpipe etl --config "$work/$1.toml" \
        --from "$2" --to "$3" --report "$work/report.json" >/dev/null
    python3 - "$work/report.json" "$(cut -d= -f2 "$work/time")" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); rss = int(sys.argv[2]) / 1024
s = r["seconds"]
print(f"  {s:.2f} s, peak RSS {rss:.0f} MiB; days written {r['days_written']}, unchanged {r['days_unchanged']}")
if r["days_written"]:
    print(f"  read {r['rows_read']} device-hours ({r['rows_read'] / s:,.0f}/s) + {r['windows_read']} windows;"
          f" wrote {r['rows_written']} rows ({r['rows_written'] / s:,.0f}/s), {r['bytes_written']} bytes"
          f" ({r['bytes_written'] / r['rows_written']:.1f} bytes/row)")
PY
}

echo "1. one day, $devices devices"
generate "day$devices" 1 "$devices"
etl_config "day$devices" "$work/warehouse-day"
echo " etl (first pass):"
etl "day$devices" 2024-01-01 2024-01-02
echo " etl (again: fingerprints only):"
etl "day$devices" 2024-01-01 2024-01-02
for table in device_1h device_1d site_1h; do
    file="$work/warehouse-day/$table/date=2024-01-01/part-0.parquet"
    rows=$("$python" -c "import pyarrow.parquet as pq, sys; print(pq.read_metadata(sys.argv[1]).num_rows)" "$file")
    bytes=$(stat -c %s "$file")
    echo "  $table: $rows rows, $bytes bytes, $(( bytes / rows )) bytes/row"
done

echo "2. a month, $month_devices devices"
generate "month$month_devices" 30 "$month_devices"
etl_config "month$month_devices" "$work/warehouse-month"
echo " etl:"
etl "month$month_devices" 2024-01-01 2024-01-31
"$python" - "$work/warehouse-month" "$influx_url" "month$month_devices" <<'PY'
import duckdb, json, sys, time, urllib.parse, urllib.request
warehouse, url, database = sys.argv[1], sys.argv[2], sys.argv[3]
sql = f"""SELECT site, metric, hour_start, sum(sum) / sum(count) AS mean
FROM read_parquet('{warehouse}/site_1h/*/*.parquet', hive_partitioning = true)
WHERE hour_start >= TIMESTAMP '2024-01-01' AND hour_start < TIMESTAMP '2024-01-31'
GROUP BY ALL"""
q = ('SELECT sum("sum") / sum("count") AS mean FROM "iotpipe_aggregate" '
     "WHERE time >= '2024-01-01T00:00:00Z' AND time < '2024-01-31T00:00:00Z' GROUP BY time(1h), \"site\", \"metric\" fill(none)")
def duck():
    con = duckdb.connect()
    return len(con.execute(sql).fetchall())
def influx():
    body = urllib.request.urlopen(f"{url}/query?db={database}&epoch=ms&q={urllib.parse.quote(q)}").read()
    return sum(len(s["values"]) for s in json.loads(body)["results"][0].get("series", []))
for name, run in [("DuckDB over the warehouse", duck), ("InfluxDB (InfluxQL)", influx)]:
    times, rows = [], 0
    for _ in range(3):
        start = time.perf_counter(); rows = run(); times.append(time.perf_counter() - start)
    print(f"  {name}: {min(times) * 1000:.0f} ms (best of 3), {rows} site-metric-hours")
PY
