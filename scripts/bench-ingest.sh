#!/usr/bin/env bash
# The ingestion-tier benchmark of docs/benchmarks.md: `iotpipe loadgen` -> mosquitto (the
# deploy/mosquitto configuration: passwords, ACL, persistence) -> `iotpipe bridge` (N bridges in
# a shared group) -> tansu (memory engine), all on this machine. Sends RATE messages/s for
# SECONDS at QoS 1 over CLIENTS connections and reports what each stage sustained and the CPU
# each process used.
#
#   scripts/bench-ingest.sh [RATE (default 20000)] [SECONDS (30)] [CLIENTS (8)] [BRIDGES (1)]
set -euo pipefail
cd "$(dirname "$0")/.."
rate=${1:-20000}
seconds=${2:-30}
clients=${3:-8}
bridges=${4:-1}
cargo build --release --quiet --bin iotpipe
bin=$PWD/target/release/iotpipe
tansu=$(command -v tansu || echo "$HOME/.cargo/bin/tansu")
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
cpu_s() { awk '{print ($14 + $15) / 100}' "/proc/$1/stat"; }
metric() { curl -s "127.0.0.1:$1/metrics" | awk -v m="$2" '$1 == m {print $2}'; }

work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT

kafka_port=$(free_port)
(cd "$work" && exec env -u STORAGE_ENGINE -u LISTENER_URL -u ADVERTISED_LISTENER_URL -u CLUSTER_ID \
    "$tansu" broker --listener-url "tcp://127.0.0.1:$kafka_port" \
    --advertised-listener-url "tcp://127.0.0.1:$kafka_port" \
    --storage-engine "${TANSU_ENGINE:-memory://tansu/}" --cluster-id bench >tansu.log 2>&1) &
tansu_pid=$!
pids+=($tansu_pid)

mqtt_port=$(free_port)
printf 'iotpipe-bridge:bridge\niotpipe-loadgen:loadgen\n' >"$work/passwd"
mosquitto_passwd -U "$work/passwd"
cp deploy/mosquitto/acl "$work/acl"
printf '\nuser iotpipe-loadgen\ntopic write devices/#\n' >>"$work/acl"
sed -e "s|^password_file .*|password_file $work/passwd|" -e "s|^acl_file .*|acl_file $work/acl|" \
    -e "s|^persistence_location .*|persistence_location $work/|" \
    -e "s|^listener .*|listener $mqtt_port 127.0.0.1|" -e '/^cafile\|^certfile\|^keyfile/d' \
    deploy/mosquitto/mosquitto.conf >"$work/mosquitto.conf"
echo "user root" >>"$work/mosquitto.conf"
mosquitto -c "$work/mosquitto.conf" 2>"$work/mosquitto.log" &
mosquitto_pid=$!
pids+=($mosquitto_pid)
sleep 2
"$tansu" topic create --broker "tcp://127.0.0.1:$kafka_port" --partitions 8 iotpipe.telemetry >/dev/null

group=""
[ "$bridges" -gt 1 ] && group=iotpipe
bridge_pids=()
metrics_ports=()
for i in $(seq 0 $((bridges - 1))); do
    port=$(free_port)
    cat >"$work/bridge-$i.toml" <<TOML
[mqtt]
host = "127.0.0.1"
port = $mqtt_port
client_id = "bridge-$i"
username = "iotpipe-bridge"
password = "bridge"
[subscription]
share_group = "$group"
[kafka]
brokers = "127.0.0.1:$kafka_port"
[metrics]
listen = "127.0.0.1:$port"
TOML
    "$bin" bridge --config "$work/bridge-$i.toml" 2>"$work/bridge-$i.log" &
    bridge_pids+=($!)
    pids+=($!)
    metrics_ports+=($port)
done
for port in "${metrics_ports[@]}"; do
    until curl -s "127.0.0.1:$port/metrics" >/dev/null; do sleep 0.1; done
done
forwarded() {
    local sum=0
    for port in "${metrics_ports[@]}"; do sum=$((sum + $(metric "$port" iotpipe_bridge_forwarded_total))); done
    echo $sum
}

echo "machine: $(nproc) cores, $(uname -r); rate=$rate/s for ${seconds}s, $clients MQTT connections, QoS 1, $bridges bridge(s)"
declare -A cpu0
for p in $tansu_pid $mosquitto_pid "${bridge_pids[@]}"; do cpu0[$p]=$(cpu_s "$p"); done
export LOADGEN_PASSWORD=loadgen
t0=$(date +%s.%N)
"$bin" loadgen --to "mqtt://127.0.0.1:$mqtt_port" --devices 100000 --rate "$rate" --duration "$seconds" \
    --clients "$clients" --username iotpipe-loadgen --password-env LOADGEN_PASSWORD \
    --report "$work/report.json" 2>"$work/loadgen.log" &
loader=$!
pids+=($loader)
sleep 1
loader_cpu0=$(cpu_s $loader)
# The load generator's CPU, read each second while it runs (it is gone once it exits).
while kill -0 $loader 2>/dev/null; do
    loader_cpu=$(cpu_s $loader 2>/dev/null || echo "$loader_cpu")
    sleep 1
done
wait $loader || true
t_sent=$(date +%s.%N)
sent=$(python3 -c "import json;print(json.load(open('$work/report.json'))['sent'])")
until [ "$(forwarded)" -ge "$sent" ] || awk -v a="$t_sent" -v b="$(date +%s.%N)" 'BEGIN {exit !(b - a > 120)}'; do sleep 0.1; done
t_done=$(date +%s.%N)
cat "$work/loadgen.log" | tail -1
awk -v s="$sent" -v t0="$t0" -v ts="$t_sent" -v td="$t_done" -v f="$(forwarded)" 'BEGIN {
    printf "sent=%d forwarded=%d loadgen_s=%.1f drain_after_loadgen_s=%.1f end_to_end_msgs_per_s=%.0f\n",
        s, f, ts - t0, td - ts, f / (td - t0) }'
elapsed=$(awk -v a="$t0" -v b="$t_done" 'BEGIN {print b - a}')
report_cpu() { awk -v n="$1" -v c0="$2" -v c1="$3" -v e="$elapsed" -v s="$sent" 'BEGIN {
    printf "  %-10s cpu_s=%.1f cores=%.2f cpu_us_per_msg=%.1f\n", n, c1 - c0, (c1 - c0) / e, (c1 - c0) / s * 1e6 }'; }
echo "CPU over the run (${elapsed}s):"
report_cpu loadgen "$loader_cpu0" "${loader_cpu:-$loader_cpu0}"
report_cpu mosquitto "${cpu0[$mosquitto_pid]}" "$(cpu_s $mosquitto_pid)"
for p in "${bridge_pids[@]}"; do report_cpu bridge "${cpu0[$p]}" "$(cpu_s "$p")"; done
report_cpu tansu "${cpu0[$tansu_pid]}" "$(cpu_s $tansu_pid)"
if [ "$(forwarded)" -lt "$sent" ]; then
    echo "not everything was forwarded; bridge metrics and logs:"
    for port in "${metrics_ports[@]}"; do curl -s "127.0.0.1:$port/metrics" | grep -v "^#" | grep -v bucket; done
    tail -n 5 "$work"/bridge-*.log "$work/mosquitto.log"
fi
