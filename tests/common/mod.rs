//! Shared test fixtures: a generated dataset with a registry that changes mid-stream, and a
//! plain batch computation of SPEC.md to hold the dataflow's outputs against.
#![allow(dead_code)]

pub mod api;
pub mod chromium;
pub mod influx;
pub mod kafka;
pub mod mqtt;
pub mod postgres;
pub mod prometheus;
pub mod reference;
pub mod warehouse;

use std::path::{Path, PathBuf};

use iotpipe::io::sources::fleet::{Fleet, FleetConfig};
use serde_json::{Value, json};

/// Event time of the first message.
pub const START_MS: u64 = 1_704_067_200_000;

/// A dataset on disk.
pub struct Dataset {
    pub dir: tempfile::TempDir,
    pub events: PathBuf,
    pub registry: PathBuf,
}

/// Writes `seconds` of a `devices`-device fleet with raised bad, late and future rates, and a
/// registry changelog that moves, deletes, adds and re-thresholds devices mid-stream.
pub fn dataset(devices: usize, seconds: u64) -> Dataset {
    dataset_from(START_MS, devices, seconds)
}

/// [`dataset`] with its first message at `start_ms`.
pub fn dataset_from(start_ms: u64, devices: usize, seconds: u64) -> Dataset {
    let dir = tempfile::tempdir().unwrap();
    let config = FleetConfig {
        devices,
        seed: 7,
        start_ms,
        bad_rate: 0.02,
        delayed_rate: 0.05,
        // Straddles the 30 s lateness bound, so lateness is decided close to the line.
        delayed_ms: (5_000, 90_000),
        late_rate: 0.005,
        future_rate: 0.001,
        // Faults after the scorer's warm-up, so anomalies and alerts are exercised too.
        fault_share: 0.1,
        fault_start_ms: (200_000, 300_000),
        fault_duration_ms: (30_000, 90_000),
        ..FleetConfig::default()
    };
    let mut fleet = Fleet::new(config);
    let mut lines = Vec::new();
    // Everything sent during `seconds` arrives within the 5 minutes after.
    fleet.advance_to(start_ms + seconds * 1000, &mut lines);
    let events = dir.path().join("events.jsonl");
    let text: String = lines.iter().map(|(_, l)| format!("{l}\n")).collect();
    std::fs::write(&events, text).unwrap();

    let mut registry: Vec<Value> = fleet
        .registry_lines()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mid = start_ms + seconds * 1000 / 2;
    // dev-000001 moves to another site mid-window (not on a window boundary).
    let mut moved = registry[1].clone();
    moved["site"] = json!("site-moved");
    moved["effective_ms"] = json!(mid + 12_345);
    // dev-000002 leaves the registry; its later messages are unknown devices.
    let deleted = json!({"device_id": "dev-000002", "deleted": true, "effective_ms": mid});
    // dev-000003 joins only mid-stream; its earlier messages are unknown devices.
    registry[3]["effective_ms"] = json!(mid - 30_000);
    // dev-000004 gets thresholds so tight that every reading breaches them.
    let mut tightened = registry[4].clone();
    for (_, t) in tightened["thresholds"].as_object_mut().unwrap() {
        *t = json!({"min": 1e9, "max": 1e9});
    }
    tightened["effective_ms"] = json!(mid);
    registry.extend([moved, deleted, tightened]);
    let registry_path = dir.path().join("registry.jsonl");
    let text: String = registry.iter().map(|v| format!("{v}\n")).collect();
    std::fs::write(&registry_path, text).unwrap();
    Dataset {
        dir,
        events,
        registry: registry_path,
    }
}

/// Reads a JSON Lines file into sorted lines.
pub fn sorted_lines(path: &Path) -> Vec<String> {
    let mut lines: Vec<String> = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(String::from)
        .collect();
    lines.sort();
    lines
}

/// The `(reason, raw)` pairs of a dead-letter file, sorted.
pub fn dead_letter_pairs(path: &Path) -> Vec<(String, String)> {
    dead_letter_pairs_of(&sorted_lines(path))
}

/// The `(reason, raw)` pairs of dead-letter lines, sorted.
pub fn dead_letter_pairs_of(lines: &[String]) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = lines
        .iter()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (
                v["reason"].as_str().unwrap().to_owned(),
                v["raw"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    pairs.sort();
    pairs
}

/// Writes a timely host file for `processes` processes on free loopback ports.
pub fn write_hostfile(path: &Path, processes: usize) {
    let hosts: String = (0..processes)
        .map(|_| format!("127.0.0.1:{}\n", free_port()))
        .collect();
    std::fs::write(path, hosts).unwrap();
}

/// Sends `signal` (`TERM`, `INT`, `KILL`) to process `pid` as a service manager would; whether
/// it was delivered (the process may have ended).
pub fn send_signal(pid: u32, signal: &str) -> bool {
    std::process::Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .is_ok_and(|status| status.success())
}

/// Waits up to `timeout` for `child` (its stderr piped) to end, reading its stderr meanwhile
/// so a chatty child never blocks on a full pipe; returns how it ended and what it printed
/// there. One that does not end is killed, and the test fails with its stderr.
pub fn wait_for_end(
    child: &mut std::process::Child,
    timeout: std::time::Duration,
) -> (std::process::ExitStatus, String) {
    let mut pipe = child.stderr.take().expect("stderr piped");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut pipe, &mut text).unwrap();
        text
    });
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status, reader.join().unwrap());
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("the command did not end\n{}", reader.join().unwrap());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// The one error line (`iotpipe: ...`) a failed command printed on stderr.
pub fn error_line(stderr: &str) -> &str {
    stderr
        .lines()
        .find(|l| l.starts_with("iotpipe: "))
        .unwrap_or_else(|| panic!("no error line in\n{stderr}"))
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The text of `GET /metrics` on a loopback port, which `promtool check metrics` (the
/// Prometheus project's own linter) must accept.
pub fn scrape_metrics(port: u16) -> String {
    let text = try_scrape_metrics(port).unwrap_or_else(|| panic!("no metrics on port {port}"));
    promtool_check(&text);
    text
}

/// Runs `promtool check metrics` on `text`; it must find nothing wrong.
pub fn promtool_check(text: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool runs (scripts/test.sh installs prometheus)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The text of `GET /metrics` on a loopback port, if something answers there.
pub fn try_scrape_metrics(port: u16) -> Option<String> {
    http_get(port, "/metrics").map(|(_, body)| body)
}

/// `GET path` on a loopback port: the status and the body, if something answers there.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    http_request(port, "GET", path, &[], None).map(|r| (r.status, r.body))
}

/// An HTTP answer: status, headers (names lower-case) and body.
#[allow(dead_code)]
pub struct HttpAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

#[allow(dead_code)]
impl HttpAnswer {
    /// The first header named `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {} {}", self.status, self.body))
    }
}

/// One HTTP/1.1 request on a loopback port (a connection of its own), if something answers.
pub fn http_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Option<HttpAnswer> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        request.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    request.push_str("\r\n");
    request.push_str(body.unwrap_or(""));
    stream.write_all(request.as_bytes()).ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let headers: Vec<(String, String)> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    // Chunked answers: keep what lies between the chunk sizes.
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        body.split("\r\n").skip(1).step_by(2).collect::<String>()
    } else {
        body.to_owned()
    };
    Some(HttpAnswer {
        status,
        headers,
        body,
    })
}

/// `iotpipe replay` of a dataset into `out`, with 2 workers; more arguments may follow.
pub fn replay_command(data: &Dataset, out: &Path) -> std::process::Command {
    replay_command_with_workers(data, out, 2)
}

/// The same with `workers` workers.
pub fn replay_command_with_workers(
    data: &Dataset,
    out: &Path,
    workers: usize,
) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_iotpipe"));
    command
        .args(["replay", "--events"])
        .arg(&data.events)
        .arg("--registry")
        .arg(&data.registry)
        .arg("--out")
        .arg(out)
        .args(["-w", &workers.to_string()]);
    command
}

/// Runs `command` to its end, which must be a success; its standard output.
pub fn succeed(command: &mut std::process::Command) -> String {
    let output = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// `replay` in this process over `events` with every score written, in small chunks (many
/// hand-offs of the watermark prefix between workers).
pub fn replay_in_process(
    events: &Path,
    registry: &Path,
    workers: usize,
    out: &Path,
) -> iotpipe::io::support::summary::RunSummary {
    use iotpipe::dataflow::PipelineConfig;
    use iotpipe::dataflow::anomaly::AnomalyConfig;
    use iotpipe::dataflow::schema::SchemaSet;
    let schemas = SchemaSet::embedded();
    let registry = iotpipe::io::support::schema_files::load_registry(registry, &schemas).unwrap();
    let job = iotpipe::commands::replay::ReplayJob {
        events: events.to_owned(),
        registry: std::sync::Arc::new(registry),
        alert_controls: Default::default(),
        out: out.to_owned(),
        schemas,
        pipeline: PipelineConfig {
            anomaly: AnomalyConfig {
                emit_all_scores: true,
                ..AnomalyConfig::default()
            },
            ..PipelineConfig::default()
        },
        chunk_bytes: 64 * 1024,
        notifier: None,
        influx: None,
        stop: Default::default(),
    };
    let cluster = iotpipe::io::support::cluster::ClusterConfig {
        workers,
        ..iotpipe::io::support::cluster::ClusterConfig::default()
    };
    iotpipe::commands::replay::replay(job, &cluster)
        .unwrap()
        .expect("process 0 reports")
}

/// SplitMix64 from `seed`: numbers that are the same in every run, for fuzz inputs.
pub fn split_mix(seed: u64) -> impl Iterator<Item = u64> {
    let mut state = seed;
    std::iter::repeat_with(move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

/// `text` percent-encoded for a URL's path segment or query value.
#[allow(dead_code)]
pub fn url_encode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}
