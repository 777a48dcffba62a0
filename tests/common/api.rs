//! `iotpipe registry serve` over a PostgreSQL of its own, and calls with a reader's or a
//! writer's token.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::postgres::Postgres;
use super::{HttpAnswer, http_request};

pub const READ: &str = "reader-secret";
pub const WRITE: &str = "writer-secret";

pub struct Api {
    pub port: u16,
    child: Child,
    pub server: Postgres,
}

impl Drop for Api {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Api {
    /// A PostgreSQL of its own and `iotpipe registry serve` over it, up.
    pub fn start() -> Api {
        let server = Postgres::start();
        let port = super::free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_iotpipe"))
            .args([
                "registry",
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .args(["--database-url", &server.url()])
            .args([
                "--read-token-env",
                "TEST_READ",
                "--write-token-env",
                "TEST_WRITE",
            ])
            .env("TEST_READ", READ)
            .env("TEST_WRITE", WRITE)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let api = Api {
            port,
            child,
            server,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while super::http_get(port, "/healthz").is_none() {
            assert!(Instant::now() < deadline, "the API did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
        api
    }

    pub fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> HttpAnswer {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        if let Some(auth) = &auth {
            all.push(("Authorization", auth));
        }
        let body = body.map(|b| b.to_string());
        http_request(self.port, method, path, &all, body.as_deref())
            .unwrap_or_else(|| panic!("no answer to {method} {path}"))
    }

    pub fn write(&self, method: &str, path: &str, body: Value) -> HttpAnswer {
        self.call(method, path, Some(WRITE), &[], Some(body))
    }

    pub fn read(&self, path: &str) -> HttpAnswer {
        self.call("GET", path, Some(READ), &[], None)
    }
}

pub fn expect(answer: &HttpAnswer, status: u16) -> Value {
    assert_eq!(answer.status, status, "{}", answer.body);
    if answer.body.is_empty() {
        Value::Null
    } else {
        answer.json()
    }
}

/// A 400 naming `field`.
pub fn expect_field(answer: &HttpAnswer, field: &str) {
    let body = expect(answer, 400);
    assert_eq!(body["field"], field, "{body}");
}
