#!/usr/bin/env bash
# The InfluxDB benchmarks of docs/benchmarks.md, against influxd 1.6 (Debian `influxdb`) started
# here on a free port in a temp dir:
#   1. points/s: the W1 file of bench-replay.sh through `iotpipe replay --influx-url` (-w 2);
#   2. end-to-end latency: `iotpipe demo --influx-url` at each fleet size given (1 message/s per
#      device), for SECONDS each, printing p50/p99 from message due to InfluxDB's acknowledgement.
#
#   scripts/bench-influx.sh [seconds] [devices...]   (default: 120 10000 100000)
#   IOTPIPE_BENCH_SKIP_REPLAY=1 skips 1; IOTPIPE_BENCH_GZIP=false sends plain bodies;
#   BIN=path runs another build; IOTPIPE_BENCH_DEMO_FLAGS adds flags to each demo run (e.g. "--close-slice-devices 0");
#   IOTPIPE_BENCH_WARM=1 first runs each fleet for 60 s into the same database, so the measured
#   run finds its series in InfluxDB's index (steady state, not a fleet's first minutes); the
#   workload is ../shared/workload (IOTPIPE_WORKLOAD).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-120}
shift || true
fleets=("$@")
[ ${#fleets[@]} -gt 0 ] || fleets=(10000 100000)
workload=${IOTPIPE_WORKLOAD:-../shared/workload}
data=target/bench/w1
cargo build --release --quiet
bin=${BIN:-./target/release/iotpipe}

dir=$(mktemp -d)
work=$dir
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"' EXIT
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
start_influxd
url=$influx_url
printf 'url = "%s"\ngzip = %s\nqueue_batches = %s\n' "$url" "${IOTPIPE_BENCH_GZIP:-true}" "${IOTPIPE_BENCH_QUEUE:-8}" >"$dir/influx.toml"
echo "influxd 1.6 at $url, gzip=${IOTPIPE_BENCH_GZIP:-true}"

# CPU seconds influxd has used so far.
influxd_cpu() { ps -o times= -p "$influxd_pid" | tr -d ' '; }

if [ -z "${IOTPIPE_BENCH_SKIP_REPLAY:-}" ]; then
    before=$(influxd_cpu)
    mkdir -p "$data"
    if [ ! -s "$data/events.jsonl" ]; then
        python3 "$workload/gen_workload.py" --devices 10000 --seconds 200 --seed 42 \
            --out "$data/events.jsonl" --registry-out "$data/registry.jsonl"
    fi
    out=$(/usr/bin/time -f "rss_kb=%M cpu_s=%U+%S" "$bin" replay \
        --events "$data/events.jsonl" --registry "$data/registry.jsonl" \
        --out "$data/out-influx" -w 2 --influx-config "$dir/influx.toml" --influx-database bench_replay 2>&1)
    messages=$(grep '^messages' <<<"$out" | awk '{print $2}')
    points=$(grep '^influxdb points' <<<"$out" | awk '{print $3}')
    elapsed=$(grep '^elapsed' <<<"$out" | awk '{print $2}')
    rss=$(grep -o 'rss_kb=[0-9]*' <<<"$out" | cut -d= -f2)
    cpu=$(grep -o 'cpu_s=[0-9.+]*' <<<"$out" | cut -d= -f2 | bc)
    awk -v m="$messages" -v p="$points" -v e="$elapsed" -v k="$rss" -v c="$cpu" -v i="$(( $(influxd_cpu) - before ))" \
        'BEGIN { printf "replay: messages=%d points=%d elapsed_s=%.1f points_per_s=%.0f messages_per_s=%.0f iotpipe_peak_rss_mib=%.0f iotpipe_cpu_s=%.1f influxd_cpu_s=%d\n", m, p, e, p / e, m / e, k / 1024, c, i }'
fi

for devices in "${fleets[@]}"; do
    if [ -n "${IOTPIPE_BENCH_WARM:-}" ]; then
        "$bin" demo --devices "$devices" --duration 60 --plain --history-s 0 --no-dashboard \
            -w 2 --influx-config "$dir/influx.toml" --influx-database "bench_demo_$devices" \
            >/dev/null 2>&1
    fi
    before=$(influxd_cpu)
    # No head start of history: latency is measured from real time on.
    out=$("$bin" demo --devices "$devices" --duration "$seconds" --plain \
        --history-s 0 --no-dashboard -w 2 --influx-config "$dir/influx.toml" --influx-database "bench_demo_$devices" \
        ${IOTPIPE_BENCH_DEMO_FLAGS:-} 2>&1)
    rate=$(grep '^t=' <<<"$out" | tail -n 10 | grep -o 'rate=[0-9]*' | cut -d= -f2 |
        awk '{ s += $1; n++ } END { if (n) printf "%.0f", s / n }')
    echo "demo devices=$devices offered=${devices}/s achieved_last_10s=${rate}/s influxd_cpu_s=$(( $(influxd_cpu) - before ))"
    grep -E '^influx latency|^influx batches|^influxdb points|^messages' <<<"$out" | sed 's/^/  /'
done
