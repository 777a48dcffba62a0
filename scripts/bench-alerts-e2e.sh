#!/usr/bin/env bash
# Alert delivery under load, for docs/benchmarks.md: `iotpipe run` (2 workers) reads the W1
# telemetry from tansu at a steady rate and writes its alert events to the alerts topic;
# `iotpipe alerts` delivers them to a webhook receiver (Python, on loopback). The dispatcher's
# `iotpipe_notify_latency_seconds` times each event from its record's timestamp (when `run`
# wrote it) to the receiver's acknowledgement; both share the machine's 2 cores.
#
#   scripts/bench-alerts-e2e.sh [telemetry rate, messages/s (default 10000)] [seconds (default 180)]
set -euo pipefail
cd "$(dirname "$0")/.."
rate=${1:-10000}
seconds=${2:-180}
w1=target/bench/w1
[ -s "$w1/events.jsonl" ] || scripts/bench-replay.sh >/dev/null
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

hook_port=$(free_port)
start_hook_receiver "$hook_port" "$work/received.tsv"

start_tansu
topic() { "$tansu" topic create --broker "tcp://127.0.0.1:$kafka_port" --partitions "$2" "$1" >/dev/null; }
topic telemetry 8
topic alerts 4
for t in registry dead checkpoints; do topic "$t" 1; done
"$load" --brokers "127.0.0.1:$kafka_port" --topic registry --events "$w1/registry.jsonl" >/dev/null

run_metrics=$(free_port)
alerts_metrics=$(free_port)
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
listen = "127.0.0.1:$run_metrics"
TOML
# The shipped rules, with spikes alerted from a score of 0.9999 (about 3.9 standard deviations)
# instead of 0.999999999, and scorers that score from their second window instead of their
# fourth: W1 is 200 s long, and its faults alone give a handful of alerts, too few to time;
# this gives a few every second.
printf '[pipeline.anomaly.defaults]\nwarmup_windows = 1\n' >>"$work/run.toml"
sed -E -e 's/^\[\[rules\]\]/[[pipeline.alerts.rules]]/' \
    -e 's/^\[(lifecycle|site|building|notification)\]/[pipeline.alerts.\1]/' \
    -e 's/min_score = 0.999999999, kinds = \["spike"\]/min_score = 0.9999, kinds = ["spike"]/' \
    datasets/alert_rules.toml >>"$work/run.toml"
grep -q 'min_score = 0.9999, kinds' "$work/run.toml"
cat >"$work/alerts.toml" <<TOML
[kafka]
brokers = "127.0.0.1:$kafka_port"
group_id = "bench"
topics = { alerts = "alerts" }
[metrics]
listen = "127.0.0.1:$alerts_metrics"
[notify]
ledger_dir = "$work/ledger"
[[notify.webhook]]
name = "hook"
url = "http://127.0.0.1:$hook_port/alerts"
max_per_second = 100000.0
TOML
echo "machine: $(nproc) cores, $(uname -r); tansu memory engine; W1 telemetry at $rate/s for $seconds s"
"$bin" run --config "$work/run.toml" -w 2 2>"$work/run.log" &
pids+=($!)
"$bin" alerts --config "$work/alerts.toml" >"$work/alerts.out" 2>"$work/alerts.log" &
pids+=($!)
until curl -s "127.0.0.1:$run_metrics/metrics" >/dev/null && curl -s "127.0.0.1:$alerts_metrics/metrics" >/dev/null; do
    sleep 0.1
done
"$load" --brokers "127.0.0.1:$kafka_port" --topic telemetry --events "$w1/events.jsonl" --rate "$rate" \
    >"$work/load.log" &
loader=$!
pids+=($loader)
sleep "$seconds"
kill "$loader" 2>/dev/null || true
sleep 5
curl -s "127.0.0.1:$alerts_metrics/metrics" >"$work/alerts-metrics.txt"
curl -s "127.0.0.1:$run_metrics/metrics" >"$work/run-metrics.txt"
python3 - "$work/alerts-metrics.txt" "$work/run-metrics.txt" "$work/received.tsv" <<'PY'
import sys
def histogram(path, name):
    buckets = {}
    for line in open(path):
        if line.startswith(f"iotpipe_{name}_seconds_bucket"):
            le = line.split('le="')[1].split('"')[0]
            buckets[float("inf") if le == "+Inf" else float(le)] = float(line.split()[-1])
    return sorted(buckets.items())
def value(path, name):
    for line in open(path):
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.split()[-1])
    return 0.0
latency = histogram(sys.argv[1], "notify_latency")
count = latency[-1][1]
quantile = lambda q: next(le for le, n in latency if n >= q * count)
received = sum(1 for _ in open(sys.argv[3]))
print(f"alert events delivered: {int(count)} (the receiver acknowledged {received}); "
      f"run wrote to the alerts topic -> receiver acknowledged: p50 <= {quantile(0.5)} s, "
      f"p99 <= {quantile(0.99)} s (histogram bucket bounds)")
messages = value(sys.argv[2], "iotpipe_messages_in_total")
print(f"run read {int(messages)} messages; batch latency p99 <= "
      f"{next(le for le, n in histogram(sys.argv[2], 'batch_latency') if n >= 0.99 * histogram(sys.argv[2], 'batch_latency')[-1][1])} s")
PY
