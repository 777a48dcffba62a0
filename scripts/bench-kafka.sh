#!/usr/bin/env bash
# The Kafka benchmark of docs/benchmarks.md: the W1 throughput file (2,000,000 messages) through
# `iotpipe run` from a tansu broker on its memory engine (reading from the beginning, the only
# use that engine is fit for; ENGINE=sqlite://tansu.db for the durable one), sinks to Kafka; 1
# and 2 workers; then a steady produce while iotpipe consumes, with the consumer lag sampled
# every second.
#
#   scripts/bench-kafka.sh [steady rate, messages/s (default 100000)]
#
# Environment: DATA=dir reads another gen_workload.py output (events.jsonl, its manifest,
# registry.jsonl) instead of the W1 file; WORKERS="1 2" (the throughput phase's worker
# counts); PROCESSES="1 2 4" runs the throughput phase as clusters of that many processes of
# one worker each (timely's cluster mode over loopback) instead of WORKERS, the figures being
# the cluster's (messages, CPU and peak RSS summed over processes); THROUGHPUT=0 skips the
# throughput phase, STEADY=0 the steady one, STEADY_WORKERS=2 sets its workers;
# ENGINE=sqlite://tansu.db uses tansu's durable engine; BIN=path runs another build (e.g. one
# without mimalloc); WRAP="heaptrack -o FILE" runs iotpipe under a profiler;
# KAFKA_PROPERTIES='"queued.min.messages" = "10000"' adds librdkafka properties to the run's
# configuration; SOURCE='max_lead_ms = 0' adds `[source]` settings; LOGS=dir keeps each run's
# log there.
set -euo pipefail
cd "$(dirname "$0")/.."
rate=${1:-100000}
data=${DATA:-target/bench/w1}
[ -s "$data/events.jsonl" ] || scripts/bench-replay.sh >/dev/null
cargo build --release --quiet --bin iotpipe --example kafka_load
bin=${BIN:-target/release/iotpipe}
load=target/release/examples/kafka_load
tansu=$(command -v tansu || echo "$HOME/.cargo/bin/tansu")
end_ms=$(python3 -c "import json;print(json.load(open('$data/events.jsonl.manifest.json'))['end_ms'])")
messages=$(wc -l <"$data/events.jsonl")

work=$(mktemp -d)
. scripts/lib.sh
pids=()
start_tansu "${ENGINE:-memory://tansu/}"
broker=$broker_pid
port=$kafka_port
metrics_port=$(free_port)
pids=()
trap 'kill "${pids[@]}" $broker 2>/dev/null; [ -z "${LOGS:-}" ] || cp "$work"/*.log "$LOGS"/; rm -rf "$work"' EXIT
topic() { "$tansu" topic create --broker "tcp://127.0.0.1:$port" --partitions "$2" "$1" >/dev/null; }
for t in telemetry steady; do topic $t 8; done
topic registry 1

metric() { curl -s "127.0.0.1:$metrics_port/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
# The consumer lag the broker reports, summed over partitions.
lag_sum() { curl -s "127.0.0.1:$metrics_port/metrics" | awk '$1 ~ /^iotpipe_consumer_lag_messages[{]/ {s += $2} END {printf "%d\n", s}'; }
start_run() { # name telemetry-topic workers
    for t in dead alerts aggregates checkpoints; do topic "$1.$t" 1; done
    cat >"$work/$1.toml" <<TOML
[kafka]
brokers = "127.0.0.1:$port"
group_id = "$1"
[kafka.topics]
telemetry = "$2"
registry = "registry"
dead_letters = "$1.dead"
alerts = "$1.alerts"
aggregates = "$1.aggregates"
checkpoints = "$1.checkpoints"
[source]
idle_timeout_ms = 1000
idle_advance_ms_per_s = 600000
${SOURCE:-}
[metrics]
listen = "127.0.0.1:$metrics_port"
[kafka.properties]
${KAFKA_PROPERTIES:-}
TOML
    local processes=${4:-1}
    pids=()
    metrics_ports=()
    if [ "$processes" -gt 1 ]; then
        printf '[cluster]\nprocesses = %d\nhostfile = "%s"\n' "$processes" "$work/$1.hosts" >>"$work/$1.toml"
        : >"$work/$1.hosts"
        for _ in $(seq "$processes"); do echo "127.0.0.1:$(free_port)" >>"$work/$1.hosts"; done
    fi
    for p in $(seq 0 $((processes - 1))); do
        local listen=$metrics_port
        [ "$p" -eq 0 ] || listen=$(free_port)
        metrics_ports+=("$listen")
        IOTPIPE_CLUSTER_PROCESS=$p IOTPIPE_METRICS_LISTEN="127.0.0.1:$listen" \
            ${WRAP:-} "$bin" run --config "$work/$1.toml" -w "$3" 2>"$work/$1.$p.log" &
        pids+=($!)
    done
    pid=${pids[0]}
    wrapper=$pid
    for p in "${metrics_ports[@]}"; do
        until curl -s "127.0.0.1:$p/metrics" >/dev/null; do sleep 0.1; done
    done
    # Under a wrapper, measure and stop iotpipe itself (the newest process of this command).
    if [ -n "${WRAP:-}" ]; then pid=$(pgrep -n -f -- "run --config $work/$1.toml"); fi
}
stop_run() {
    if [ ${#pids[@]} -gt 1 ]; then
        kill -TERM "${pids[@]}"
        wait "${pids[@]}"
        return
    fi
    kill -TERM $pid
    if [ "$pid" = "$wrapper" ]; then
        wait $pid
    else
        while kill -0 $pid 2>/dev/null; do sleep 0.2; done
        wait $wrapper || true
    fi
}

echo "machine: $(nproc) cores, $(uname -r); broker: tansu ${ENGINE:-memory://tansu/} on 127.0.0.1"
"$load" --brokers "127.0.0.1:$port" --topic registry --events "$data/registry.jsonl" >/dev/null
[ "${THROUGHPUT:-1}" = 0 ] ||
    echo "produce W1 into 8 partitions: $("$load" --brokers "127.0.0.1:$port" --topic telemetry --events "$data/events.jsonl")"

# Each shape: "workers processes".
shapes=()
if [ "${THROUGHPUT:-1}" = 0 ]; then
    :
elif [ -n "${PROCESSES:-}" ]; then
    for p in $PROCESSES; do shapes+=("1 $p"); done
else
    for w in ${WORKERS:-1 2}; do shapes+=("$w 1"); done
fi
for shape in ${shapes[@]+"${shapes[@]}"}; do
    read -r workers processes <<<"$shape"
    start_run "bench-w$workers-p$processes" telemetry "$workers" "$processes"
    t0=$(date +%s.%N)
    until [ "$(cluster_metric iotpipe_messages_in_total sum)" -ge "$messages" ]; do sleep 0.1; done
    t_read=$(date +%s.%N)
    # Everything read has gone through the dataflow once the written frontier reaches the
    # last watermark (the end of the data less the allowed lateness).
    until awk -v w="$(cluster_metric iotpipe_written_frontier_seconds min)" -v e="$end_ms" 'BEGIN {exit !(w * 1000 >= e - 31000)}'; do sleep 0.1; done
    t_done=$(date +%s.%N)
    cpu=0; rss=0
    for p in "${pids[@]}"; do
        [ ${#pids[@]} -gt 1 ] || p=$pid
        cpu=$(awk -v a="$cpu" -v b="$(cpu_s "$p")" 'BEGIN {print a + b}')
        rss=$((rss + $(awk '/VmHWM/ {print $2}' "/proc/$p/status")))
    done
    stop_run
    awk -v w="$workers" -v p="$processes" -v n="$messages" -v t0="$t0" -v tr="$t_read" -v td="$t_done" -v c="$cpu" -v k="$rss" 'BEGIN {
        printf "processes=%d workers=%d read_s=%.2f messages_per_s=%.0f through_dataflow_s=%.2f cpu_s_per_million=%.1f peak_rss_mib=%.0f\n",
            p, w, tr - t0, n / (tr - t0), td - t0, c / (n / 1e6), k / 1024 }'
done

[ "${STEADY:-1}" = 0 ] && exit 0
# Steady produce at $rate messages/s while STEADY_WORKERS (2) consume; lag = sent so far - read
# so far.
start_run bench-steady steady "${STEADY_WORKERS:-2}"
"$load" --brokers "127.0.0.1:$port" --topic steady --events "$data/events.jsonl" --rate "$rate" >"$work/steady-load.log" &
loader=$!
t0=$(date +%s.%N)
max_lag=0; sum_lag=0; samples=0
while kill -0 $loader 2>/dev/null; do
    sleep 1
    now=$(date +%s.%N)
    read_so_far=$(metric iotpipe_messages_in_total)
    lag=$(awk -v r="$rate" -v t0="$t0" -v now="$now" -v n="$messages" -v got="$read_so_far" 'BEGIN {
        sent = r * (now - t0); if (sent > n) sent = n; l = sent - got; print (l > 0 ? int(l) : 0) }')
    watermark_lag=$(metric iotpipe_watermark_lag_seconds)
    echo "t=$(awk -v a="$t0" -v b="$now" 'BEGIN {printf "%.0f", b - a}')s lag_messages=$lag broker_lag=$(lag_sum)"
    samples=$((samples + 1)); sum_lag=$((sum_lag + lag)); [ "$lag" -gt "$max_lag" ] && max_lag=$lag
done
cat "$work/steady-load.log"
echo "steady rate=$rate/s samples=$samples mean_lag=$((sum_lag / (samples > 0 ? samples : 1))) max_lag=$max_lag messages"
stop_run
