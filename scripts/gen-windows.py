#!/usr/bin/env python3
"""Writes DAYS days of 1-minute window aggregates (`iotpipe_aggregate`, as `run` writes them)
for every device of a registry into InfluxDB 1.x, for the warehouse benchmarks: what a fleet's
store holds after running, without running the fleet for days.

    gen-windows.py URL DATABASE REGISTRY START_DAY DAYS [DEVICES]

Each device writes a window per minute for each metric its registry line has thresholds for;
60 readings a window, values around the middle of its band. Deterministic (seeded by device).
"""
import http.client, json, random, sys, urllib.parse, datetime

url, database, registry, start_day, days = sys.argv[1:6]
limit = int(sys.argv[6]) if len(sys.argv) > 6 else None
days = int(days)
start_ms = int(datetime.datetime.fromisoformat(start_day).replace(tzinfo=datetime.timezone.utc).timestamp() * 1000)
devices = []
for line in open(registry):
    d = json.loads(line)
    if "thresholds" not in d:
        continue
    devices.append((d["device_id"], d["site"], sorted(d["thresholds"].items())))
    if limit and len(devices) >= limit:
        break
host = urllib.parse.urlparse(url)
conn = http.client.HTTPConnection(host.hostname, host.port)
conn.request("POST", f"/query?q=CREATE+DATABASE+{database}")
conn.getresponse().read()
path = f"/write?db={database}&precision=ms"
points = 0
def send(lines):
    conn.request("POST", path, body="\n".join(lines).encode())
    answer = conn.getresponse()
    body = answer.read()
    if answer.status != 204:
        sys.exit(f"influxdb: {answer.status} {body[:200]!r}")
series = []
for device, site, metrics in devices:
    rng = random.Random(device)
    for metric, band in metrics:
        low, high = band["min"], band["max"]
        mid, spread = (low + high) / 2, (high - low) / 8 or 1.0
        series.append((f"iotpipe_aggregate,device_id={device},metric={metric},site={site} ", mid, spread, rng))
for minute in range(days * 1440):
    t = start_ms + minute * 60_000
    lines = []
    for prefix, mid, spread, rng in series:
        lo = mid - spread * rng.random()
        hi = lo + spread * rng.random()
        mean = (lo + hi) / 2
        s = round(mean * 60, 6)
        lines.append(
            f"{prefix}count=60i,min={lo:.6f},max={hi:.6f},mean={mean:.6f},sum={s},sum_squares={round(s * mean, 6)},"
            f"first_ts_ms={t + 500}i,last_ts_ms={t + 59_500}i,threshold_breaches=0i {t}"
        )
        if len(lines) == 20_000:
            send(lines)
            points += len(lines)
            lines = []
    if lines:
        send(lines)
        points += len(lines)
print(f"{points} windows of {len(series)} series over {days} days")
