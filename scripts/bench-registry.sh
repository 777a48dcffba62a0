#!/usr/bin/env bash
# The metadata store benchmark of docs/benchmarks.md, on a PostgreSQL 15 it starts itself:
#  1. `iotpipe registry import` of a 100,000-device registry (seconds), and `export`;
#  2. the registry API's latency (p50/p99) for reads of single devices, pages, resolved devices
#     and writes, over one keep-alive connection;
#  3. change propagation: `iotpipe run` follows the store while the W1 telemetry streams in at
#     a steady rate; changes made through the API (devices moved, model thresholds changed,
#     effective now) are timed from their commit to enrichment seeing them
#     (`iotpipe_registry_propagation_seconds`), and the process's memory with the whole model.
#
#   scripts/bench-registry.sh [changes (default 200)] [telemetry rate, messages/s (default 20000)]
set -euo pipefail
cd "$(dirname "$0")/.."
changes=${1:-200}
rate=${2:-20000}
registry100k=target/bench/reg100k/registry.jsonl
w1=target/bench/w1
if [ ! -s "$registry100k" ]; then
    mkdir -p target/bench/reg100k
    python3 ../shared/workload/gen_workload.py --devices 100000 --seconds 1 --seed 3 \
        --out target/bench/reg100k/events.jsonl --registry-out "$registry100k"
fi
[ -s "$w1/events.jsonl" ] || scripts/bench-replay.sh >/dev/null
cargo build --release --quiet --bin iotpipe --example kafka_load
bin=$PWD/target/release/iotpipe
load=$PWD/target/release/examples/kafka_load
tansu=$(command -v tansu || echo "$HOME/.cargo/bin/tansu")
pg=${IOTPIPE_PG_BIN:-/usr/lib/postgresql/15/bin}
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

work=$(mktemp -d)
chmod 755 "$work"
as_pg=()
[ "$(id -u)" = 0 ] && { chown postgres "$work"; as_pg=(runuser -u postgres --); }
pg_port=$(free_port)
"${as_pg[@]}" "$pg/initdb" -D "$work/pg" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
"${as_pg[@]}" "$pg/pg_ctl" -D "$work/pg" -o "-c listen_addresses=127.0.0.1 -p $pg_port -k $work" \
    -l "$work/pg.log" -w start >/dev/null
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    "${as_pg[@]}" "$pg/pg_ctl" -D "$work/pg" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
db() { echo "postgresql://postgres@127.0.0.1:$pg_port/$1"; }
"${as_pg[@]}" "$pg/psql" -h 127.0.0.1 -p "$pg_port" -U postgres -qc 'CREATE DATABASE w1' >/dev/null

echo "machine: $(nproc) cores, $(uname -r); PostgreSQL 15 on 127.0.0.1 (fsync on, defaults)"
t0=$(date +%s.%N)
"$bin" registry import "$registry100k" --database-url "$(db postgres)" 2>&1 | tail -1
t1=$(date +%s.%N)
"$bin" registry export --database-url "$(db postgres)" --out "$work/exported.jsonl" 2>/dev/null
t2=$(date +%s.%N)
awk -v a="$t0" -v b="$t1" -v c="$t2" -v n="$(wc -l <"$registry100k")" 'BEGIN {
    printf "import: %d lines in %.1f s (%.0f lines/s); export: %.1f s\n", n, b - a, n / (b - a), c - b }'

api_port=$(free_port)
export BENCH_READ=bench-reader BENCH_WRITE=bench-writer
"$bin" registry serve --listen "127.0.0.1:$api_port" --database-url "$(db postgres)" \
    --read-token-env BENCH_READ --write-token-env BENCH_WRITE 2>"$work/api.log" &
pids+=($!)
until curl -s "127.0.0.1:$api_port/healthz" >/dev/null; do sleep 0.1; done
python3 - "$api_port" <<'PY'
import http.client, json, random, sys, time
port = int(sys.argv[1])
conn = http.client.HTTPConnection("127.0.0.1", port)
auth = {"Authorization": "Bearer bench-reader"}
def timed(method, path, body=None, headers=auth):
    start = time.perf_counter()
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    data = response.read()
    assert response.status < 300, (path, response.status, data[:200])
    return time.perf_counter() - start, data
def report(name, samples):
    samples.sort()
    p = lambda q: samples[min(len(samples) - 1, int(q * len(samples)))] * 1000
    print(f"api {name}: n={len(samples)} p50={p(0.5):.2f} ms p99={p(0.99):.2f} ms")
random.seed(1)
for _ in range(200):
    timed("GET", "/v1/devices/dev-000000")
report("GET /v1/devices/{id}", [timed("GET", f"/v1/devices/dev-{random.randrange(100000):06d}")[0] for _ in range(5000)])
report("GET /v1/devices/{id}/resolved", [timed("GET", f"/v1/devices/dev-{random.randrange(100000):06d}/resolved")[0] for _ in range(2000)])
pages, after = [], ""
for _ in range(200):
    elapsed, data = timed("GET", "/v1/devices?limit=100" + (f"&after={after}" if after else ""))
    pages.append(elapsed)
    after = json.loads(data)["next"]
report("GET /v1/devices?limit=100 (cursor pages)", pages)
_, data = timed("GET", "/v1/devices/dev-000001")
body = json.loads(data)
writes = []
for i in range(1000):
    body["firmware"] = f"9.{i}"
    writes.append(timed("PUT", "/v1/devices/dev-000001", json.dumps(body),
                        {"Authorization": "Bearer bench-writer", "Content-Type": "application/json"})[0])
report("PUT /v1/devices/{id}", writes)
PY
kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true

# Propagation: run follows the w1 store; telemetry streams at $rate/s; changes go through the API.
"$bin" registry import "$w1/registry.jsonl" --database-url "$(db w1)" 2>/dev/null
"$bin" registry serve --listen "127.0.0.1:$api_port" --database-url "$(db w1)" \
    --read-token-env BENCH_READ --write-token-env BENCH_WRITE 2>"$work/api-w1.log" &
pids+=($!)
kafka_port=$(free_port)
metrics_port=$(free_port)
(cd "$work" && env -u STORAGE_ENGINE -u LISTENER_URL -u ADVERTISED_LISTENER_URL -u CLUSTER_ID \
    "$tansu" broker --listener-url "tcp://127.0.0.1:$kafka_port" \
    --advertised-listener-url "tcp://127.0.0.1:$kafka_port" \
    --storage-engine memory://tansu/ --cluster-id bench >tansu.log 2>&1) &
pids+=($!)
sleep 2
topic() { "$tansu" topic create --broker "tcp://127.0.0.1:$kafka_port" --partitions "$2" "$1" >/dev/null; }
topic telemetry 8
for t in registry dead alerts checkpoints; do topic "$t" 1; done
cat >"$work/run.toml" <<TOML
[kafka]
brokers = "127.0.0.1:$kafka_port"
group_id = "bench"
[kafka.topics]
telemetry = "telemetry"
registry = "registry"
dead_letters = "dead"
alerts = "alerts"
checkpoints = "checkpoints"
[metrics]
listen = "127.0.0.1:$metrics_port"
[store]
url = "$(db w1)"
TOML
"$bin" run --config "$work/run.toml" -w 2 2>"$work/run.log" &
run=$!
pids+=($run)
until curl -s "127.0.0.1:$metrics_port/metrics" >/dev/null; do sleep 0.1; done
"$load" --brokers "127.0.0.1:$kafka_port" --topic telemetry --events "$w1/events.jsonl" --rate "$rate" \
    >"$work/load.log" &
pids+=($!)
sleep 5
curl -s "127.0.0.1:$metrics_port/metrics" >"$work/metrics-before.txt"
python3 - "$api_port" "$changes" <<'PY'
import http.client, json, sys, time
port, changes = int(sys.argv[1]), int(sys.argv[2])
conn = http.client.HTTPConnection("127.0.0.1", port)
headers = {"Authorization": "Bearer bench-writer", "Content-Type": "application/json"}
def call(method, path, body=None):
    conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
    response = conn.getresponse()
    data = response.read()
    assert response.status < 300, (path, response.status, data[:300])
    return json.loads(data)
buildings = [p["id"] for p in call("GET", "/v1/places?kind=building&limit=1000")["items"]]
devices = call("GET", "/v1/devices?limit=1000")["items"]
for i in range(changes):
    device = devices[i % len(devices)]
    body = {k: v for k, v in device.items() if k not in ("id", "version", "effective_ms")}
    body["place_id"] = buildings[i % len(buildings)]
    call("PUT", "/v1/devices/" + device["id"], body)   # effective now
    time.sleep(0.1)
print(f"made {changes} changes through the API, 10 per second")
PY
sleep 3
curl -s "127.0.0.1:$metrics_port/metrics" >"$work/metrics.txt"
rss=$(awk '/VmHWM/ {print $2}' /proc/$run/status)
python3 - "$work/metrics-before.txt" "$work/metrics.txt" <<'PY'
import sys
def histogram(path):
    buckets = {}
    for line in open(path):
        if line.startswith("iotpipe_registry_propagation_seconds_bucket"):
            le = line.split('le="')[1].split('"')[0]
            buckets[float("inf") if le == "+Inf" else float(le)] = float(line.split()[-1])
    return buckets
# The snapshot read at start is counted too: only what the changes below added counts.
before, after = histogram(sys.argv[1]), histogram(sys.argv[2])
added = sorted((le, n - before.get(le, 0)) for le, n in after.items())
count = added[-1][1]
quantile = lambda q: next(le for le, n in added if n >= q * count)
print(f"propagation (commit to enrichment): {int(count)} changes, "
      f"p50 <= {quantile(0.5)} s, p99 <= {quantile(0.99)} s (histogram bucket bounds)")
PY
echo "run (2 workers, store with the W1 registry of $(wc -l <"$w1/registry.jsonl") lines, telemetry at $rate/s): peak RSS $((rss / 1024)) MiB"
grep -E "^iotpipe_(messages_in_total|registry_changes_total)" "$work/metrics.txt"
