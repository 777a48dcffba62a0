# Shared by the bench scripts (sourced): a free port, a tansu broker, a webhook receiver and
# influxd on loopback, and readings of processes and their metrics. The caller sets `work` (a
# scratch directory), `tansu` (the binary) and `pids` (an array its cleanup kills).

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

# start_tansu [ENGINE]: a broker on a free port, `kafka_port`, `broker_pid`, its data in
# "$work"; ENGINE is memory://tansu/ (the default: fast, fit only for reading from the
# beginning) or sqlite://tansu.db (durable: offsets and data survive restarts). Topics then
# come from `tansu topic create`.
start_tansu() {
    kafka_port=$(free_port)
    (cd "$work" && exec env -u STORAGE_ENGINE -u LISTENER_URL -u ADVERTISED_LISTENER_URL -u CLUSTER_ID \
        "$tansu" broker --listener-url "tcp://127.0.0.1:$kafka_port" \
        --advertised-listener-url "tcp://127.0.0.1:$kafka_port" \
        --storage-engine "${1:-memory://tansu/}" --cluster-id bench >tansu.log 2>&1) &
    broker_pid=$!
    pids+=($broker_pid)
    sleep 2
}

# cpu_s PID: the user + system CPU seconds process PID has used.
cpu_s() { awk '{print ($14 + $15) / 100}' "/proc/$1/stat"; }

# cluster_metric FAMILY sum|min: a metric summed (counts, as an integer) or the least (a
# frontier, in seconds to the millisecond) over the processes serving "${metrics_ports[@]}".
cluster_metric() {
    local p
    for p in "${metrics_ports[@]}"; do
        curl -s "127.0.0.1:$p/metrics" | awk -v m="$1" '$1 == m {print $2}'
    done | awk -v how="$2" '{ if (how == "sum") v += $1; else if (NR == 1 || $1 < v) v = $1 }
        END { if (how == "sum") printf "%d\n", v; else printf "%.3f\n", v }'
}

# start_hook_receiver PORT FILE: answers every POST with 200 and appends, per event id it
# carried (a group request carries several), "ID<TAB>unix time" to FILE, and one line per
# request to FILE.requests.
start_hook_receiver() {
    python3 - "$1" "$2" <<'PY' &
import http.server, json, sys, time
port, out = int(sys.argv[1]), open(sys.argv[2], "a", buffering=1)
requests = open(sys.argv[2] + ".requests", "a", buffering=1)
class Hook(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
        now = time.time()
        for event in body.get("events", [body]):
            out.write(f"{event['id']}\t{now:.6f}\n")
        requests.write(f"{now:.6f}\n")
    def log_message(self, *args): pass
http.server.ThreadingHTTPServer(("127.0.0.1", port), Hook).serve_forever()
PY
    pids+=($!)
}

# start_influxd: influxd 1.6 on a free port with its data in "$influx_dir" (default
# "$work/influxdb"), `influx_url` and `influxd_pid` set once it answers /ping.
start_influxd() {
    local port rpc
    influx_dir=${influx_dir:-$work/influxdb}
    port=$(free_port)
    rpc=$(free_port)
    cat >"$work/influxdb.conf" <<CONF
reporting-disabled = true
bind-address = "127.0.0.1:$rpc"
[meta]
dir = "$influx_dir/meta"
[data]
dir = "$influx_dir/data"
wal-dir = "$influx_dir/wal"
[http]
bind-address = "127.0.0.1:$port"
log-enabled = false
CONF
    influxd run -config "$work/influxdb.conf" 2>"$work/influxd.log" &
    influxd_pid=$!
    pids+=($influxd_pid)
    influx_url="http://127.0.0.1:$port"
    until curl -fs "$influx_url/ping" >/dev/null; do sleep 0.2; done
}
