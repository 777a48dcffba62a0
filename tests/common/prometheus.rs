//! A real Prometheus server (Debian `prometheus` 2.42) for tests: scraping one target every
//! second, on a free loopback port in a temp dir, killed on drop; and PromQL through its HTTP API.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running Prometheus.
pub struct Prometheus {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `http://127.0.0.1:target_port/metrics` every second, and waits
    /// until it is ready.
    pub fn scraping(target_port: u16) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = super::free_port();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  \
                 - job_name: iotpipe\n    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n"
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus runs (scripts/test.sh installs it)");
        let prometheus = Self { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !matches!(super::http_get(port, "/-/ready"), Some((200, _))) {
            assert!(
                Instant::now() < deadline,
                "prometheus not ready:\n{}",
                prometheus.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        prometheus
    }

    /// The value of the instant vector `query` (one series), once Prometheus has one; waits up
    /// to `within`.
    pub fn value(&self, query: &str, within: Duration) -> Option<f64> {
        let deadline = Instant::now() + within;
        let path = format!(
            "/api/v1/query?query={}",
            query
                .replace('{', "%7B")
                .replace('}', "%7D")
                .replace('"', "%22")
        );
        loop {
            if let Some((200, body)) = super::http_get(self.port, &path) {
                let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
                let value = answer["data"]["result"][0]["value"][1]
                    .as_str()
                    .and_then(|v| v.parse().ok());
                if value.is_some() {
                    return value;
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Its log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
