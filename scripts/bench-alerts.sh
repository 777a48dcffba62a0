#!/usr/bin/env bash
# The dispatcher benchmark of docs/benchmarks.md: `iotpipe alerts` between a tansu alerts topic
# and a webhook receiver (Python, on loopback), release build.
#  1. a storm: N alert events (10,000 devices of one building silent at once) produced at
#     once; the time until the receiver has acknowledged the last, and the peak RSS;
#  2. steady: events produced at a fixed rate; the latency from each event's production to the
#     receiver's acknowledgement, p50 and p99.
#
#   scripts/bench-alerts.sh [storm events (default 10000)] [steady rate/s (default 200)]
#   GROUP_WAIT_MS=500 scripts/bench-alerts.sh ...   # the webhook groups (see group_wait_ms)
set -euo pipefail
cd "$(dirname "$0")/.."
storm=${1:-10000}
rate=${2:-200}
cargo build --release --quiet --bin iotpipe --example kafka_load
bin=$PWD/target/release/iotpipe
load=$PWD/target/release/examples/kafka_load
tansu=$(command -v tansu || echo "$HOME/.cargo/bin/tansu")
work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
. scripts/lib.sh

# Alert events as `run` writes them: `opened` silence alerts of devices of one building.
events() { # count first-device prefix
    python3 - "$1" "$2" <<'PY'
import json, sys
n, prefix = int(sys.argv[1]), sys.argv[2]
for i in range(n):
    device = f"{prefix}-{i:06d}"
    alert = f"{device}/silence/1704067200000"
    print(json.dumps({"id": f"{alert}/opened/1704067200000", "alert_id": alert, "event": "opened",
                      "device_id": device, "site": "site-1", "org": "acme", "building": "B1",
                      "metric": None, "rule": "device-silent", "severity": "major",
                      "cause": "silence", "ts_ms": 1704067200000, "score": None, "value": None}))
PY
}
events "$storm" storm >"$work/storm.jsonl"
steady_n=$((rate * 20))
events "$steady_n" steady >"$work/steady.jsonl"

# The receiver: records when each event id was acknowledged.
hook_port=$(free_port)
start_hook_receiver "$hook_port" "$work/received.tsv"

start_tansu
"$tansu" topic create --broker "tcp://127.0.0.1:$kafka_port" --partitions 4 alerts >/dev/null
cat >"$work/alerts.toml" <<TOML
[kafka]
brokers = "127.0.0.1:$kafka_port"
topics = { alerts = "alerts" }
[notify]
ledger_dir = "$work/ledger"
drain_timeout_ms = 10000
[[notify.webhook]]
name = "hook"
url = "http://127.0.0.1:$hook_port/alerts"
max_per_second = 100000.0
group_wait_ms = ${GROUP_WAIT_MS:-0}
TOML
echo "machine: $(nproc) cores, $(uname -r); tansu memory engine, 4 partitions"

/usr/bin/time -f "%M" -o "$work/rss" "$bin" alerts --config "$work/alerts.toml" \
    >"$work/alerts.out" 2>"$work/alerts.log" &
dispatcher=$!
pids+=($dispatcher)
sleep 3
t0=$(date +%s.%N)
"$load" --brokers "127.0.0.1:$kafka_port" --topic alerts --events "$work/storm.jsonl" >/dev/null
until [ "$(grep -c '^storm' "$work/received.tsv" 2>/dev/null || echo 0)" -ge "$storm" ]; do sleep 0.05; done
awk -v t0="$t0" -v n="$storm" '/^storm/ { if ($2 > last) last = $2 } END {
    printf "storm: %d events produced at once, all acknowledged after %.2f s (%.0f events/s)\n",
        n, last - t0, n / (last - t0) }' "$work/received.tsv"
echo "storm: $(wc -l <"$work/received.tsv.requests") webhook requests"

t0=$(date +%s.%N)
"$load" --brokers "127.0.0.1:$kafka_port" --topic alerts --events "$work/steady.jsonl" \
    --rate "$rate" >/dev/null
until [ "$(grep -c '^steady' "$work/received.tsv" 2>/dev/null || echo 0)" -ge "$steady_n" ]; do sleep 0.05; done
# Event i was due at t0 + i / rate (the loader paces from its start).
awk -v t0="$t0" -v rate="$rate" '/^steady/ {
        split($1, parts, "/"); split(parts[1], d, "-"); i = d[2] + 0
        print ($2 - (t0 + i / rate)) * 1000 }' "$work/received.tsv" | sort -n |
    awk -v rate="$rate" '{ v[NR] = $1 } END {
        printf "steady: %d events at %d/s, production to acknowledgement p50 %.1f ms, p99 %.1f ms (the loader'"'"'s own pacing included)\n",
            NR, rate, v[int(NR * 0.5)], v[int(NR * 0.99)] }'
# SIGTERM to the dispatcher under `time`, which then writes its peak RSS.
pkill -TERM -P "$dispatcher"
wait "$dispatcher" 2>/dev/null || true
echo "dispatcher peak RSS: $(($(cat "$work/rss") / 1024)) MiB"
grep '^notify' "$work/alerts.out" || true
