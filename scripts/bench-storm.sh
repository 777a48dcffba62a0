#!/usr/bin/env bash
# The alert-storm benchmark of docs/benchmarks.md: whole sites of a fleet go dark at once
# (power, network), at least 10,000 devices, while the rest of the fleet keeps reporting.
# Replays it (release build, 2 workers) twice, with notifications to a file channel:
#  - with the shipped rules: outage alerts per building and site replace the devices' silence
#    alerts;
#  - with outage correlation off (`min_devices = 0` at both levels): one alert per device.
# Prints, for each, the alert events by cause and kind, the notifications sent, the wall time
# and the peak RSS; and checks that every dark device is accounted for by an outage alert.
#
#   scripts/bench-storm.sh [dark devices (default 10000)]
set -euo pipefail
cd "$(dirname "$0")/.."
dark=${1:-10000}
cargo build --release --quiet --bin iotpipe
bin=$PWD/target/release/iotpipe
data=target/bench/storm
mkdir -p "$data"
devices=$((dark + dark / 10))
if [ ! -s "$data/events-$devices.jsonl" ]; then
    # One message per device every 5 s for 6 minutes.
    python3 ../shared/workload/gen_workload.py --devices "$devices" --seconds 360 \
        --rate-per-device 0.2 --seed 7 --out "$data/events-$devices.jsonl" \
        --registry-out "$data/registry-$devices.jsonl" >/dev/null
fi

# Whole sites, in order, until `dark` devices: their messages stop 3 minutes in.
python3 - "$data/registry-$devices.jsonl" "$data/events-$devices.jsonl" "$dark" \
    "$data/storm.jsonl" "$data/dark-sites.txt" <<'PY'
import json, sys
registry, events, dark, out, sites_out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
by_site = {}
for line in open(registry):
    entry = json.loads(line)
    by_site.setdefault(entry["site"], set()).add(entry["device_id"])
chosen, devices = [], set()
for site in sorted(by_site):
    if len(devices) >= dark:
        break
    chosen.append(site)
    devices |= by_site[site]
open(sites_out, "w").write("\n".join(chosen) + "\n")
from datetime import datetime
def event_ms(message):
    if isinstance(message.get("ts"), int):
        return message["ts"]
    try:
        return int(datetime.fromisoformat(message["time"].replace("Z", "+00:00")).timestamp() * 1000)
    except (KeyError, AttributeError, TypeError, ValueError):
        return None
base = json.load(open(events + ".manifest.json"))["base_ms"]
with open(events) as src, open(out, "w") as dst:
    for line in src:
        try:
            message = json.loads(line)
        except ValueError:
            message = None
        if isinstance(message, dict):
            device = message.get("device_id") or message.get("id")
            at = event_ms(message)
            # Three minutes into the fleet's time, the dark sites stop.
            if device in devices and at is not None and at - base >= 180_000:
                continue
        dst.write(line)
print(f"dark: {len(devices)} devices in {len(chosen)} sites")
PY

run() { # name rules-file
    local out="$data/out-$1"
    rm -rf "$out" && mkdir -p "$out"
    printf '[[file]]\nname = "sent"\npath = "%s/sent.jsonl"\n' "$PWD/$out" >"$out/notify.toml"
    /usr/bin/time -v "$bin" replay --events "$data/storm.jsonl" \
        --registry "$data/registry-$devices.jsonl" --out "$out" -w 2 \
        --alert-rules "$2" --notify "$out/notify.toml" >"$out/report.txt" 2>"$out/time.txt"
    python3 - "$out" "$1" "$data/dark-sites.txt" <<'PY'
import collections, json, re, sys
out, name, sites = sys.argv[1], sys.argv[2], set(open(sys.argv[3]).read().split())
events = [json.loads(l) for l in open(f"{out}/alerts.jsonl")]
sent = sum(1 for _ in open(f"{out}/sent.jsonl")) if __import__("os").path.exists(f"{out}/sent.jsonl") else 0
kinds = collections.Counter((e["cause"], e["event"]) for e in events)
time = open(f"{out}/time.txt").read()
wall = re.search(r"Elapsed \(wall clock\) time.*: (\S+)", time).group(1)
rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", time).group(1)) // 1024
dark_opened = [e for e in events if e["event"] == "opened" and e["site"] in sites]
print(f"{name}: {len(events)} alert events, {sent} notifications sent, wall {wall}, peak RSS {rss} MiB")
for (cause, event), n in sorted(kinds.items()):
    print(f"  {cause:10} {event:10} {n}")
outages = [e for e in dark_opened if e["cause"] in ("site", "building")]
print(f"  dark sites with an outage alert: {len({e['site'] for e in outages})} of {len(sites)}; "
      f"device alerts opened in them: {sum(1 for e in dark_opened if e.get('device_id'))}")
PY
}

rules=datasets/alert_rules.toml
off="$data/rules-no-outages.toml"
sed -e '/^\[site\]/,/^\[/ s/^min_devices = .*/min_devices = 0/' \
    -e '/^\[building\]/,/^\[/ s/^min_devices = .*/min_devices = 0/' "$rules" >"$off"
grep -q '^min_devices = 0' "$off"
run outages "$rules"
run per-device "$off"
