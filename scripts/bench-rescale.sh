#!/usr/bin/env bash
# The rescale benchmark of docs/benchmarks.md (issue 20, goal 4): a cluster of 2 processes (1
# worker each) reads a backlog from a tansu broker on its sqlite engine (durable, as a rescale
# needs), is stopped with SIGTERM half-way, and is started again as 1 process of 2 workers on
# the same consumer group. It resumes from its checkpoints: the times to stop, to resume (the
# first output past what the cluster had written) and to catch up (everything read and through
# the dataflow), the messages read again (the rewind), and whether anything was lost or changed
# (the latest aggregate of each key in the output topic against `replay`'s of the same file; a
# record written again lands on its key).
#
#   scripts/bench-rescale.sh
#
# Environment: DEVICES (1000) and DATA_SECONDS (2400) shape the generated file (seed 7; made
# once under target/bench/rescale), REWIND_MS (690000: the least `run` accepts, a window, the
# allowed lateness and the clock skew of event time read again; the shipped default is an hour,
# for the anomaly models), BIN=path runs another build, DATA=dir runs another file instead
# (events.jsonl, registry.jsonl and a manifest with base_ms and end_ms, as gen_workload.py
# writes them; `cargo run --release --example skab -- --write-inputs DIR` writes SKAB so).
set -euo pipefail
cd "$(dirname "$0")/.."
devices=${DEVICES:-1000}
seconds=${DATA_SECONDS:-2400}
rewind_ms=${REWIND_MS:-690000}
workload=${IOTPIPE_WORKLOAD:-../shared/workload}
data=${DATA:-target/bench/rescale/d$devices-s$seconds}
if [ -z "${DATA:-}" ] && [ ! -s "$data/events.jsonl" ]; then
    mkdir -p "$data"
    python3 "$workload/gen_workload.py" --devices "$devices" --seconds "$seconds" --seed 7 \
        --out "$data/events.jsonl" --registry-out "$data/registry.jsonl" >/dev/null 2>&1
fi
cargo build --release --quiet --bin iotpipe --example kafka_load --example kafka_latest
bin=${BIN:-target/release/iotpipe}
load=target/release/examples/kafka_load
tansu=$(command -v tansu || echo "$HOME/.cargo/bin/tansu")
manifest() { python3 -c "import json;print(json.load(open('$data/events.jsonl.manifest.json'))['$1'])"; }
end_ms=$(manifest end_ms)
seconds=$(( (end_ms - $(manifest base_ms)) / 1000 ))
messages=$(wc -l <"$data/events.jsonl")

work=$(mktemp -d)
. scripts/lib.sh
pids=()
start_tansu sqlite://tansu.db
broker=$broker_pid
port=$kafka_port
pids=()
trap 'kill "${pids[@]}" $broker 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
topic() { "$tansu" topic create --broker "tcp://127.0.0.1:$port" --partitions "$2" "$1" >/dev/null; }
topic telemetry 8
topic registry 1
for t in dead alerts aggregates checkpoints; do topic "$t" 1; done

now() { date +%s.%N; }
# Every process of the run still there (else its log says why).
alive() {
    local p
    for p in "${pids[@]}"; do
        kill -0 "$p" 2>/dev/null || { echo "iotpipe ended early:" >&2; cat "$work"/*.log >&2; exit 1; }
    done
}
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.1f", b - a}'; }
# The written frontier (ms) once every process serves it, 0 before.
written_ms() { awk -v w="$(cluster_metric iotpipe_written_frontier_seconds min)" 'BEGIN {printf "%.0f", w * 1000}'; }

# The configuration both shapes share: the same consumer group, topics and checkpoints.
cat >"$work/run.toml" <<TOML
[kafka]
brokers = "127.0.0.1:$port"
group_id = "rescale"
[kafka.topics]
telemetry = "telemetry"
registry = "registry"
dead_letters = "dead"
alerts = "alerts"
aggregates = "aggregates"
checkpoints = "checkpoints"
[source]
rewind_ms = $rewind_ms
idle_timeout_ms = 3000
idle_advance_ms_per_s = 600000
TOML

start() { # name processes workers
    local processes=$2 config="$work/$1.toml"
    cp "$work/run.toml" "$config"
    if [ "$processes" -gt 1 ]; then
        printf '[cluster]\nprocesses = %d\nhostfile = "%s"\n' "$processes" "$work/$1.hosts" >>"$config"
        : >"$work/$1.hosts"
        for _ in $(seq "$processes"); do echo "127.0.0.1:$(free_port)" >>"$work/$1.hosts"; done
    fi
    pids=()
    metrics_ports=()
    for p in $(seq 0 $((processes - 1))); do
        local listen
        listen=$(free_port)
        metrics_ports+=("$listen")
        IOTPIPE_CLUSTER_PROCESS=$p IOTPIPE_METRICS_LISTEN="127.0.0.1:$listen" \
            "$bin" run --config "$config" -w "$3" --report "$work/$1.$p.json" >"$work/$1.$p.log" 2>&1 &
        pids+=($!)
    done
    for p in "${metrics_ports[@]}"; do
        until curl -s "127.0.0.1:$p/metrics" >/dev/null; do alive; sleep 0.1; done
    done
}
stop() {
    kill -TERM "${pids[@]}"
    wait "${pids[@]}"
    pids=()
}
# A number from the reports of run `name` (summed over its processes): a jq-like path.
reported() { # name python-expression-on-r
    python3 - "$work" "$1" "$2" <<'PY'
import glob, json, sys
work, name, expr = sys.argv[1:]
print(sum(eval(expr, {}, {"r": json.load(open(f))}) for f in glob.glob(f"{work}/{name}.*.json")))
PY
}

echo "machine: $(nproc) cores, $(uname -r); broker: tansu sqlite engine on 127.0.0.1"
"$load" --brokers "127.0.0.1:$port" --topic registry --events "$data/registry.jsonl" >/dev/null
echo "produce $messages messages (${DATA:-$devices devices}, $seconds s) into 8 partitions: $("$load" --brokers "127.0.0.1:$port" --topic telemetry --events "$data/events.jsonl")"

# The expected aggregates: a replay of the same file.
"$bin" replay --events "$data/events.jsonl" --registry "$data/registry.jsonl" --out "$work/replay" -w 2 >/dev/null
sort "$work/replay/aggregates.jsonl" >"$work/expected.jsonl"

# 2 processes of 1 worker, stopped once they have read half the backlog.
start two 2 1
t0=$(now)
until [ "$(cluster_metric iotpipe_messages_in_total sum)" -ge $((messages / 2)) ]; do alive; sleep 0.1; done
t_half=$(now)
written_before=$(written_ms)
stop
t_stopped=$(now)
read_a=$(reported two 'r["messages_in"]')
echo "2 processes x 1 worker: read $read_a messages in $(elapsed "$t0" "$t_half") s, written to $(( (written_before - (end_ms - seconds * 1000)) / 1000 )) s of $seconds s; SIGTERM to exit $(elapsed "$t_half" "$t_stopped") s"

# 1 process of 2 workers on the same group: from the checkpoints the 2 processes committed.
start one 1 2
t1=$(now)
until [ "$(written_ms)" -gt "$written_before" ]; do alive; sleep 0.05; done
t_resumed=$(now)
until awk -v w="$(written_ms)" -v e="$end_ms" 'BEGIN {exit !(w >= e - 31000)}'; do alive; sleep 0.1; done
t_caught=$(now)
# The last windows close as the idle partitions' watermark advances past their end (a window,
# the allowed lateness and the close's spread after the data's end).
until awk -v w="$(written_ms)" -v e="$end_ms" 'BEGIN {exit !(w >= e + 120000)}'; do alive; sleep 0.1; done
stop
read_b=$(reported one 'r["messages_in"]')
written=$(( $(reported two 'r["records_out"]["aggregates"]') + $(reported one 'r["records_out"]["aggregates"]') ))
echo "1 process x 2 workers: resumed (written frontier past the cluster's) in $(elapsed "$t1" "$t_resumed") s, caught up (all read, through the dataflow) in $(elapsed "$t1" "$t_caught") s; read $read_b messages, $((read_a + read_b - messages)) of them again (the rewind)"
target/release/examples/kafka_latest --brokers "127.0.0.1:$port" --topic aggregates >"$work/latest.jsonl" 2>"$work/latest.log"
echo "aggregates: $written records written by both runs, $(cat "$work/latest.log"); replay: $(wc -l <"$work/expected.jsonl")"
if cmp -s "$work/latest.jsonl" "$work/expected.jsonl"; then
    echo "the latest aggregate of every key equals replay's: nothing lost, nothing changed"
else
    echo "MISMATCH: $(comm -23 "$work/expected.jsonl" "$work/latest.jsonl" | wc -l) of replay's aggregates missing or different, $(comm -13 "$work/expected.jsonl" "$work/latest.jsonl" | wc -l) not replay's; missing by window start:"
    comm -23 "$work/expected.jsonl" "$work/latest.jsonl" | grep -o '"window_start_ms":[0-9]*' | sort | uniq -c | head
    exit 1
fi
