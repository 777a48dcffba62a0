//! A real InfluxDB 1.x (Debian `influxdb`) for tests: `influxd` on free loopback ports in a temp
//! dir, killed on drop; and InfluxQL queries over plain HTTP.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running influxd.
pub struct Influx {
    child: Option<Child>,
    config: std::path::PathBuf,
    pub port: u16,
    pub dir: tempfile::TempDir,
    /// Whether authentication is on (queries then go as `admin`).
    auth: bool,
    /// The test CA's directory when influxd serves https only (`ca.pem` trusts it).
    pub tls: Option<std::path::PathBuf>,
}

impl Influx {
    /// Writes the configuration for free ports (with authentication on, if `auth`); `run`
    /// starts it.
    fn configure(auth: bool) -> Self {
        Self::configure_with(auth, false)
    }

    fn configure_with(auth: bool, tls: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let https = if tls {
            super::mqtt::make_test_ca(d);
            format!(
                "https-enabled = true\nhttps-certificate = \"{0}/server.pem\"\n\
                 https-private-key = \"{0}/server.key\"\n",
                d.display()
            )
        } else {
            String::new()
        };
        let port = super::free_port();
        let rpc_port = super::free_port();
        let config = d.join("influxdb.conf");
        std::fs::write(
            &config,
            format!(
                "reporting-disabled = true\nbind-address = \"127.0.0.1:{rpc_port}\"\n\
                 [meta]\ndir = \"{0}/meta\"\n[data]\ndir = \"{0}/data\"\nwal-dir = \"{0}/wal\"\n\
                 [http]\nbind-address = \"127.0.0.1:{port}\"\nlog-enabled = false\n\
                 auth-enabled = {auth}\n{https}",
                d.display()
            ),
        )
        .unwrap();
        Self {
            child: None,
            config,
            port,
            tls: tls.then(|| dir.path().to_owned()),
            dir,
            auth,
        }
    }

    /// Configures and starts, and waits until `/ping` answers.
    pub fn start() -> Self {
        let mut influx = Self::configure(false);
        influx.run();
        influx
    }

    /// Like [`start`](Self::start), serving https only, with a certificate for 127.0.0.1
    /// signed by a test CA (`ca.pem` in [`tls`](Self::tls)).
    pub fn start_with_tls() -> Self {
        let mut influx = Self::configure_with(false, true);
        influx.run();
        influx
    }

    /// `query` over https through curl, trusting the test CA: the JSON answer.
    pub fn query_over_tls(&self, db: &str, q: &str) -> serde_json::Value {
        let ca = self.tls.as_ref().expect("started with tls").join("ca.pem");
        let output = Command::new("curl")
            .args(["-sS", "--cacert"])
            .arg(ca)
            .arg(format!(
                "https://127.0.0.1:{}/query?db={db}&epoch=ms&q={}",
                self.port,
                encode(q)
            ))
            .output()
            .expect("curl runs (scripts/test.sh installs it)");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap()
    }

    /// Like [`start`](Self::start), with authentication on and one admin user, `admin` with
    /// password `secret`: a write with other credentials is refused (401).
    pub fn start_with_auth() -> Self {
        use std::io::{Read, Write};
        let mut influx = Self::configure(true);
        influx.run();
        // With no user yet, 1.x lets anyone create the first admin.
        let q = "CREATE%20USER%20admin%20WITH%20PASSWORD%20%27secret%27%20WITH%20ALL%20PRIVILEGES";
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", influx.port)).unwrap();
        write!(
            stream,
            "POST /query?q={q} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\
             Connection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        influx
    }

    /// Starts influxd on the configured ports and data.
    pub fn run(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("influxd.log"))
            .unwrap();
        let child = Command::new("influxd")
            .args(["run", "-config"])
            .arg(&self.config)
            .arg("-pidfile")
            .arg(self.dir.path().join("influxd.pid"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("influxd runs (scripts/test.sh installs the influxdb package)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        let up = |influx: &Self| match influx.tls {
            None => matches!(influx.get("/ping"), Some((204, _))),
            Some(_) => std::net::TcpStream::connect(("127.0.0.1", influx.port)).is_ok(),
        };
        while !up(self) {
            assert!(Instant::now() < deadline, "influxd did not answer /ping");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Runs InfluxQL `q` on `db`; the JSON answer, times in epoch ms.
    pub fn query(&self, db: &str, q: &str) -> serde_json::Value {
        let (status, body) = self
            .get(&format!("/query?db={db}&epoch=ms&q={}", encode(q)))
            .expect("influxd answers");
        assert_eq!(status, 200, "{q}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    fn get(&self, path: &str) -> Option<(u16, String)> {
        if self.auth && path.starts_with("/query?") {
            super::http_get(self.port, &format!("{path}&u=admin&p=secret"))
        } else {
            super::http_get(self.port, path)
        }
    }

    /// The windows of the test data's hours once there are `count` of them (waiting up to a
    /// minute: InfluxDB gets them a little after Kafka does), or what there is then.
    pub fn wait_for_windows(&self, count: usize) -> Windows {
        let span = format!(
            "time >= {}ms AND time < {}ms",
            super::START_MS - 3_600_000,
            super::START_MS + 7_200_000
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let windows = self.windows(&span);
            if windows.len() >= count || Instant::now() >= deadline {
                return windows;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Every window of `iotpipe_aggregate` within InfluxQL time condition `span`.
    pub fn windows(&self, span: &str) -> Windows {
        let answer = self.query(
            "iotpipe",
            &format!(
                "SELECT \"count\", \"min\", \"max\", \"mean\", \"threshold_breaches\", \"sum\" \
                 FROM iotpipe_aggregate WHERE {span} GROUP BY \"device_id\", \"metric\", \"site\""
            ),
        );
        let mut windows = Windows::new();
        let series = answer["results"][0]["series"].as_array();
        for series in series.into_iter().flatten() {
            let tags = &series["tags"];
            let tag = |k: &str| tags[k].as_str().unwrap().to_owned();
            for row in series["values"].as_array().unwrap() {
                // The exact sum beside the mean: what rollups over windows add up.
                let (count, mean, sum) = (
                    row[1].as_f64().unwrap(),
                    row[4].as_f64().unwrap(),
                    row[6].as_f64().expect("every window has its sum"),
                );
                assert!(
                    (sum - mean * count).abs() <= 1e-9 * sum.abs().max(1.0),
                    "sum {sum} against mean {mean} x count {count}"
                );
                windows.insert(
                    (
                        tag("device_id"),
                        tag("metric"),
                        row[0].as_u64().unwrap(),
                        tag("site"),
                    ),
                    (
                        row[1].as_u64().unwrap(),
                        row[2].as_f64().unwrap(),
                        row[3].as_f64().unwrap(),
                        row[4].as_f64().unwrap(),
                        row[5].as_u64().unwrap(),
                    ),
                );
            }
        }
        windows
    }

    /// Kills influxd (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Influx {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Percent-encodes a query parameter.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// (device, metric, window start, site) -> (count, min, max, mean, threshold breaches).
pub type Windows = BTreeMap<(String, String, u64, String), (u64, f64, f64, f64, u64)>;

/// The windows of `aggregates.jsonl` lines.
pub fn windows_of_lines(lines: &[String]) -> Windows {
    lines
        .iter()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            (
                (
                    v["device_id"].as_str().unwrap().to_owned(),
                    v["metric"].as_str().unwrap().to_owned(),
                    v["window_start_ms"].as_u64().unwrap(),
                    v["site"].as_str().unwrap().to_owned(),
                ),
                (
                    v["count"].as_u64().unwrap(),
                    v["min"].as_f64().unwrap(),
                    v["max"].as_f64().unwrap(),
                    v["mean"].as_f64().unwrap(),
                    v["threshold_breaches"].as_u64().unwrap(),
                ),
            )
        })
        .collect()
}
