//! Alert notifications against real receivers: a webhook server on loopback (signatures,
//! retries on 500, each event exactly once across two replays) and mosquitto.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use iotpipe::io::sinks::notify::signature;

const SECRET: &str = "test-secret-of-the-webhook";

/// What the receiver saw.
#[derive(Default)]
struct Received {
    /// Requests answered with an error so far.
    failed: usize,
    /// (event id header, body) of accepted requests, in arrival order.
    accepted: Vec<(String, String)>,
    /// Requests whose signature did not verify.
    bad_signatures: usize,
}

/// A webhook receiver on loopback that answers 500 to its first `fail_first` requests.
fn start_receiver(
    fail_first: usize,
) -> (SocketAddr, Arc<Mutex<Received>>, tokio::runtime::Runtime) {
    start_receiver_on(0, fail_first)
}

/// The same, on a given port (0: any).
fn start_receiver_on(
    port: u16,
    fail_first: usize,
) -> (SocketAddr, Arc<Mutex<Received>>, tokio::runtime::Runtime) {
    start_answering_receiver(port, move |request| {
        (request < fail_first).then_some((500, "try again later"))
    })
}

/// A receiver on `port` (0: any) that answers request number `n` (from 0) with
/// `answer(n)`'s status and body, or accepts it (200) when that is `None`.
fn start_answering_receiver(
    port: u16,
    answer: impl Fn(usize) -> Option<(u16, &'static str)> + Send + Sync + 'static,
) -> (SocketAddr, Arc<Mutex<Received>>, tokio::runtime::Runtime) {
    start_receiver_with(port, None, answer)
}

/// The same, speaking TLS with the certificate and key of `tls` when given.
fn start_receiver_with(
    port: u16,
    tls: Option<Arc<rustls::ServerConfig>>,
    answer: impl Fn(usize) -> Option<(u16, &'static str)> + Send + Sync + 'static,
) -> (SocketAddr, Arc<Mutex<Received>>, tokio::runtime::Runtime) {
    let answer = Arc::new(answer);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let received = Arc::new(Mutex::new(Received::default()));
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(("127.0.0.1", port)))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let state = Arc::clone(&received);
    runtime.spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let state = Arc::clone(&state);
            let answer = Arc::clone(&answer);
            let tls = tls.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let state = Arc::clone(&state);
                    let answer = Arc::clone(&answer);
                    async move {
                        let id = req
                            .headers()
                            .get("x-iotpipe-event-id")
                            .map(|v| v.to_str().unwrap().to_string())
                            .unwrap_or_default();
                        let sig = req
                            .headers()
                            .get("x-iotpipe-signature")
                            .map(|v| v.to_str().unwrap().to_string())
                            .unwrap_or_default();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let mut s = state.lock().unwrap();
                        let request = s.failed + s.accepted.len();
                        let (status, reason) = match answer(request) {
                            Some(refusal) => {
                                s.failed += 1;
                                refusal
                            }
                            None => {
                                if sig != signature(SECRET.as_bytes(), &body) {
                                    s.bad_signatures += 1;
                                }
                                s.accepted
                                    .push((id, String::from_utf8(body.to_vec()).unwrap()));
                                (200, "")
                            }
                        };
                        Ok::<_, std::convert::Infallible>(
                            Response::builder()
                                .status(status)
                                .body(Full::new(Bytes::from_static(reason.as_bytes())))
                                .unwrap(),
                        )
                    }
                });
                let http = hyper::server::conn::http1::Builder::new();
                match tls {
                    None => {
                        let _ = http.serve_connection(TokioIo::new(stream), service).await;
                    }
                    Some(config) => {
                        // A client that refuses the certificate ends the handshake: nothing to
                        // serve then.
                        let acceptor = tokio_rustls::TlsAcceptor::from(config);
                        if let Ok(stream) = acceptor.accept(stream).await {
                            let _ = http.serve_connection(TokioIo::new(stream), service).await;
                        }
                    }
                }
            });
        }
    });
    (addr, received, runtime)
}

/// A rustls server configuration with `dir`'s `server.pem` and `server.key` (see
/// `common::mqtt::make_test_ca`).
fn server_tls(dir: &Path) -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(dir.join("server.pem"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    Arc::new(config)
}

fn replay(data: &common::Dataset, out: &Path, notify: &Path) -> String {
    common::succeed(
        common::replay_command(data, out)
            .arg("--notify")
            .arg(notify)
            .env("HOOK_SECRET", SECRET),
    )
}

fn alert_ids(out: &Path) -> Vec<String> {
    ids_in(&out.join("alerts.jsonl"))
}

/// The `id` of every JSON line of a file (alert events, kept notifications), in order.
fn ids_in(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

#[test]
fn a_webhook_gets_each_signed_alert_event_once_across_replays_and_retries_after_500() {
    let data = common::dataset(200, 420);
    let (addr, received, _runtime) = start_receiver(3);
    let notify = webhook_config(&data, &format!("http://{addr}/alerts"));
    let out = data.dir.path().join("out");
    let first = replay(&data, &out, &notify);
    let ids = alert_ids(&out);
    assert!(ids.len() >= 10, "too few alert events: {}", ids.len());
    assert!(first.contains("retries 3"), "{first}");
    // The same input again: the ledger knows every id, so nothing is sent twice.
    let second = replay(&data, &out, &notify);
    assert!(
        second.contains(&format!("delivered 0 (already {})", ids.len())),
        "{second}"
    );
    let r = received.lock().unwrap();
    assert_eq!(r.failed, 3);
    assert_eq!(r.bad_signatures, 0);
    let got: Vec<String> = r.accepted.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(got, ids, "each event once, in order");
    for (id, body) in &r.accepted {
        let event: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(event["id"].as_str(), Some(id.as_str()));
        for field in ["event", "site", "rule", "severity", "cause", "ts_ms"] {
            assert!(!event[field].is_null(), "{field} missing in {body}");
        }
    }
}

#[test]
fn events_a_dead_webhook_missed_are_kept_and_sent_by_the_next_run() {
    let data = common::dataset(200, 420);
    let port = common::free_port();
    let notify = webhook_config(&data, &format!("http://127.0.0.1:{port}/alerts"));
    let out = data.dir.path().join("out");
    // Nothing listens: the run ends with every event kept.
    let first = replay(&data, &out, &notify);
    let ids = alert_ids(&out);
    assert!(
        first.contains("delivered 0 (already 0), rejected 0")
            && first.contains(&format!("undelivered {}", ids.len())),
        "{first}"
    );
    let spool = data.dir.path().join("ledger/ops.pending.jsonl");
    assert_eq!(
        std::fs::read_to_string(&spool).unwrap().lines().count(),
        ids.len()
    );
    // The receiver is back: the next run sends the kept events first, and its own (the same
    // ids) are skipped as delivered.
    let (_addr, received, _runtime) = start_receiver_on(port, 0);
    let second = replay(&data, &out, &notify);
    assert!(
        second.contains(&format!("delivered {} (already {})", ids.len(), ids.len())),
        "{second}"
    );
    assert!(!spool.exists());
    let r = received.lock().unwrap();
    let got: Vec<String> = r.accepted.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(got, ids);
}

/// A notify config with one webhook at `url` and a ledger directory in `data`'s temp dir.
fn webhook_config(data: &common::Dataset, url: &str) -> std::path::PathBuf {
    let notify = data.dir.path().join("notify.toml");
    std::fs::write(
        &notify,
        format!(
            "ledger_dir = {:?}\ndrain_timeout_ms = 2000\n\n[[webhook]]\nname = \"ops\"\nurl = \"{url}\"\nsecret_env = \"HOOK_SECRET\"\nmax_per_second = 1000.0\nbackoff = {{ initial_ms = 20, max_ms = 100 }}\n",
            data.dir.path().join("ledger").display().to_string()
        ),
    )
    .unwrap();
    notify
}

/// A replay with `--notify` that must fail; its standard output and last line of standard
/// error.
fn failing_replay(data: &common::Dataset, out: &Path, notify: &Path) -> (String, String) {
    let output = common::replay_command(data, out)
        .arg("--notify")
        .arg(notify)
        .env("HOOK_SECRET", SECRET)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert_eq!(output.status.code(), Some(1), "{stdout}\n{stderr}");
    let last = stderr.trim().lines().last().unwrap_or_default().to_owned();
    (stdout, last)
}

#[test]
fn a_webhook_that_refuses_the_sender_stops_the_replay_naming_the_field_and_loses_nothing() {
    let data = common::dataset(200, 420);
    let (addr, received, _runtime) = start_answering_receiver(0, |_| Some((401, "bad signature")));
    let notify = webhook_config(&data, &format!("http://{addr}/alerts"));
    let out = data.dir.path().join("out");
    let (stdout, last) = failing_replay(&data, &out, &notify);
    assert!(
        last.starts_with("iotpipe: notify channel `ops`: secret_env")
            && last.contains("HTTP 401: bad signature")
            && last.contains("5 times in a row"),
        "{last}"
    );
    // Asked five times, then given up: not retried forever, and nothing lost.
    assert_eq!(received.lock().unwrap().failed, 5);
    let ids = alert_ids(&out);
    assert!(ids.len() >= 10, "too few alert events: {}", ids.len());
    assert!(
        stdout.contains(&format!("undelivered {}", ids.len())),
        "{stdout}"
    );
    let spool = data.dir.path().join("ledger/ops.pending.jsonl");
    let kept = ids_in(&spool);
    assert_eq!(kept, ids, "every event kept, in order");
}

#[test]
fn events_a_webhook_refuses_for_good_are_kept_with_the_reason_and_the_rest_delivered() {
    let data = common::dataset(200, 420);
    // The second and third requests are refused as the receiver's 422 says.
    let (addr, received, _runtime) = start_answering_receiver(0, |request| {
        (1..=2)
            .contains(&request)
            .then_some((422, "unknown severity"))
    });
    let notify = webhook_config(&data, &format!("http://{addr}/alerts"));
    let out = data.dir.path().join("out");
    let stdout = replay(&data, &out, &notify);
    let ids = alert_ids(&out);
    assert!(
        stdout.contains(&format!(
            "delivered {} (already 0), rejected 2, retries 0, undelivered 0",
            ids.len() - 2
        )),
        "{stdout}"
    );
    let rejected: Vec<serde_json::Value> =
        std::fs::read_to_string(data.dir.path().join("ledger/ops.rejected.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    assert_eq!(rejected.len(), 2);
    for (kept, id) in rejected.iter().zip(&ids[1..3]) {
        assert_eq!(kept["id"].as_str(), Some(id.as_str()));
        assert_eq!(kept["reason"].as_str(), Some("HTTP 422: unknown severity"));
        let event: serde_json::Value =
            serde_json::from_str(kept["event"].as_str().unwrap()).unwrap();
        assert_eq!(event["id"].as_str(), Some(id.as_str()));
    }
    let r = received.lock().unwrap();
    let got: Vec<&String> = r.accepted.iter().map(|(id, _)| id).collect();
    let want: Vec<&String> = ids
        .iter()
        .enumerate()
        .filter(|(i, _)| !(1..=2).contains(i))
        .map(|(_, id)| id)
        .collect();
    assert_eq!(got, want);
}

#[test]
fn a_file_channel_that_cannot_be_opened_stops_the_replay_naming_its_path() {
    let data = common::dataset(200, 420);
    let notify = data.dir.path().join("notify.toml");
    let missing = data.dir.path().join("no-such-dir/alerts.jsonl");
    std::fs::write(
        &notify,
        format!(
            "ledger_dir = {:?}\n\n[[file]]\nname = \"archive\"\npath = {:?}\n",
            data.dir.path().join("ledger").display().to_string(),
            missing.display().to_string()
        ),
    )
    .unwrap();
    let out = data.dir.path().join("out");
    let (_, last) = failing_replay(&data, &out, &notify);
    assert!(
        last.starts_with("iotpipe: notify channel `archive`: path: ")
            && last.contains("no-such-dir"),
        "{last}"
    );
    let kept =
        std::fs::read_to_string(data.dir.path().join("ledger/archive.pending.jsonl")).unwrap();
    assert_eq!(kept.lines().count(), alert_ids(&out).len());
}

#[test]
fn an_mqtt_broker_that_refuses_the_credentials_stops_the_replay_naming_the_fields() {
    let broker = common::mqtt::Mosquitto::fleet(1, "");
    let data = common::dataset(200, 420);
    let notify = data.dir.path().join("notify.toml");
    std::fs::write(
        &notify,
        format!(
            "[[mqtt]]\nname = \"bus\"\nhost = \"127.0.0.1\"\nport = {}\nusername = \"{}\"\npassword_env = \"BUS_PASSWORD\"\nack_timeout_ms = 2000\nbackoff = {{ initial_ms = 20, max_ms = 100 }}\n",
            broker.port,
            common::mqtt::BRIDGE_USER
        ),
    )
    .unwrap();
    let out = data.dir.path().join("out");
    let output = common::replay_command(&data, &out)
        .arg("--notify")
        .arg(&notify)
        .env("BUS_PASSWORD", "not-the-password")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let last = stderr.trim().lines().last().unwrap_or_default();
    assert!(
        last.starts_with("iotpipe: notify channel `bus`: username and password_env")
            && last.contains("refused the connection"),
        "{last}"
    );
}

#[test]
fn an_https_webhook_gets_every_event_through_tls_and_an_untrusted_certificate_stops_the_replay() {
    let data = common::dataset(200, 420);
    let certs = tempfile::tempdir().unwrap();
    common::mqtt::make_test_ca(certs.path());
    let (addr, received, _runtime) =
        start_receiver_with(0, Some(server_tls(certs.path())), |_| None);
    let url = format!("https://{addr}/alerts");
    let notify = webhook_config(&data, &url);
    let with_tls = |ca_file: &Path| {
        let text = std::fs::read_to_string(&notify).unwrap();
        let text = text.replace(
            "[[webhook]]\n",
            &format!(
                "[[webhook]]\ntls = {{ ca_file = {:?} }}\n",
                ca_file.display().to_string()
            ),
        );
        std::fs::write(&notify, text).unwrap();
    };
    with_tls(&certs.path().join("ca.pem"));
    let out = data.dir.path().join("out");
    let stdout = replay(&data, &out, &notify);
    let ids = alert_ids(&out);
    assert!(ids.len() >= 10, "too few alert events: {}", ids.len());
    assert!(
        stdout.contains(&format!("delivered {}", ids.len())),
        "{stdout}"
    );
    {
        let r = received.lock().unwrap();
        assert_eq!(r.bad_signatures, 0);
        let got: Vec<&String> = r.accepted.iter().map(|(id, _)| id).collect();
        assert_eq!(got, ids.iter().collect::<Vec<_>>());
    }
    // A CA that did not sign the receiver's certificate: refused 5 times in a row, the run
    // stops naming the tls settings, and the events are kept.
    let other = tempfile::tempdir().unwrap();
    common::mqtt::make_test_ca(other.path());
    std::fs::write(
        &notify,
        std::fs::read_to_string(&notify).unwrap().replace(
            &certs.path().join("ca.pem").display().to_string(),
            &other.path().join("ca.pem").display().to_string(),
        ),
    )
    .unwrap();
    std::fs::remove_dir_all(data.dir.path().join("ledger")).unwrap();
    let (stdout, last) = failing_replay(&data, &out, &notify);
    assert!(
        last.starts_with("iotpipe: notify channel `ops`: tls (ca_file, server_name")
            && last.contains("5 times in a row"),
        "{last}"
    );
    assert!(
        stdout.contains(&format!("undelivered {}", ids.len())),
        "{stdout}"
    );
    assert_eq!(
        received.lock().unwrap().accepted.len(),
        ids.len(),
        "nothing sent untrusted"
    );
}

#[test]
fn mosquitto_receives_every_alert_event() {
    let broker = common::mqtt::Mosquitto::anonymous();
    let data = common::dataset(200, 420);
    // Subscribe first, so nothing published is missed.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let received: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let (client, mut events) = {
        let mut options = rumqttc::MqttOptions::new("alert-listener", "127.0.0.1", broker.port);
        options.set_max_packet_size(1 << 20, 1 << 20);
        rumqttc::AsyncClient::new(options, 64)
    };
    let subscribed = Arc::new(Mutex::new(false));
    {
        let received = Arc::clone(&received);
        let subscribed = Arc::clone(&subscribed);
        runtime.spawn(async move {
            loop {
                match events.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        let body = String::from_utf8(p.payload.to_vec()).unwrap();
                        let event: serde_json::Value = serde_json::from_str(&body).unwrap();
                        received
                            .lock()
                            .unwrap()
                            .insert(event["id"].as_str().unwrap().to_string(), p.topic.clone());
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                        *subscribed.lock().unwrap() = true;
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
    }
    runtime
        .block_on(client.subscribe("iotpipe/alerts/#", rumqttc::QoS::AtLeastOnce))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !*subscribed.lock().unwrap() {
        assert!(Instant::now() < deadline, "no SUBACK");
        std::thread::sleep(Duration::from_millis(20));
    }

    let notify = data.dir.path().join("notify.toml");
    std::fs::write(
        &notify,
        format!(
            "[[mqtt]]\nname = \"bus\"\nhost = \"127.0.0.1\"\nport = {}\n",
            broker.port
        ),
    )
    .unwrap();
    let out = data.dir.path().join("out");
    let stdout = replay(&data, &out, &notify);
    let ids = alert_ids(&out);
    assert!(
        stdout.contains(&format!("delivered {}", ids.len())),
        "{stdout}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while received.lock().unwrap().len() < ids.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let got = received.lock().unwrap();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(got.keys().cloned().collect::<Vec<_>>(), want);
    assert!(
        got.values()
            .all(|topic| topic.starts_with("iotpipe/alerts/site-"))
    );
}

/// Debian's `prometheus-alertmanager` on loopback, routing every alert to a webhook receiver;
/// stopped when dropped.
struct Alertmanager {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Alertmanager {
    fn start(receiver: SocketAddr) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("alertmanager.yml");
        std::fs::write(
            &config,
            format!(
                "route:\n  receiver: hook\n  group_by: [alertname, site]\n  group_wait: 1s\n  \
                 group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: hook\n    \
                 webhook_configs:\n      - url: http://{receiver}/alertmanager\n"
            ),
        )
        .unwrap();
        let port = common::free_port();
        let child = std::process::Command::new("prometheus-alertmanager")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("prometheus-alertmanager runs (scripts/test.sh installs it)");
        let alertmanager = Self {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while common::http_get(port, "/-/ready").is_none_or(|(status, _)| status != 200) {
            assert!(Instant::now() < deadline, "Alertmanager did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        alertmanager
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Its active alerts.
    fn alerts(&self) -> Vec<serde_json::Value> {
        let (status, body) = common::http_get(self.port, "/api/v2/alerts").unwrap();
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Alert ids whose last event in `out/alerts.jsonl` is not `resolved`, and those that are.
fn open_and_resolved(out: &Path) -> (BTreeMap<String, serde_json::Value>, Vec<String>) {
    let mut last: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    for line in std::fs::read_to_string(out.join("alerts.jsonl"))
        .unwrap()
        .lines()
    {
        let event: serde_json::Value = serde_json::from_str(line).unwrap();
        last.insert(event["alert_id"].as_str().unwrap().to_owned(), event);
    }
    let (open, resolved): (BTreeMap<_, _>, BTreeMap<_, _>) = last
        .into_iter()
        .partition(|(_, e)| e["event"] != "resolved");
    (open, resolved.into_keys().collect())
}

/// A real Alertmanager gets iotpipe's alerts: the open ones active with labels to route on,
/// the resolved ones not, and routes them on to its own receiver; with iotpipe gone, they end
/// by themselves a few resend intervals later.
#[test]
fn alertmanager_gets_open_alerts_with_their_labels_and_routes_them() {
    let data = common::dataset(200, 420);
    let (hook, routed, _runtime) = start_receiver(0);
    let alertmanager = Alertmanager::start(hook);
    let notify = data.dir.path().join("notify.toml");
    std::fs::write(
        &notify,
        format!(
            "ledger_dir = {:?}\ndrain_timeout_ms = 5000\n\n[[alertmanager]]\nname = \"am\"\n\
             url = \"{}\"\nresend_interval_ms = 1000\nlabels = {{ env = \"test\" }}\n\
             backoff = {{ initial_ms = 20, max_ms = 100 }}\n",
            data.dir.path().join("ledger").display().to_string(),
            alertmanager.url()
        ),
    )
    .unwrap();
    let out = data.dir.path().join("out");
    let report = replay(&data, &out, &notify);
    let ids = alert_ids(&out);
    let rejected = data.dir.path().join("ledger/am.rejected.jsonl");
    assert!(
        report.contains(&format!("delivered {} (already 0), rejected 0", ids.len())),
        "{report}\n{}",
        std::fs::read_to_string(&rejected).unwrap_or_default()
    );
    let (open, resolved) = open_and_resolved(&out);
    assert!(!open.is_empty() && !resolved.is_empty(), "{report}");

    let active = alertmanager.alerts();
    let active_ids: BTreeMap<String, &serde_json::Value> = active
        .iter()
        .map(|a| {
            let id = a["annotations"]["alert_id"].as_str().unwrap().to_owned();
            (id, a)
        })
        .collect();
    assert_eq!(
        active_ids.keys().collect::<Vec<_>>(),
        open.keys().collect::<Vec<_>>(),
        "the open alerts are active, the resolved ones not"
    );
    for (id, alert) in &active_ids {
        let event = &open[id];
        let labels = &alert["labels"];
        assert_eq!(labels["alertname"], event["rule"], "{alert}");
        assert_eq!(labels["severity"], event["severity"], "{alert}");
        assert_eq!(labels["cause"], event["cause"], "{alert}");
        assert_eq!(labels["site"], event["site"], "{alert}");
        assert_eq!(labels["org"], event["org"], "{alert}");
        assert_eq!(labels["env"], "test", "{alert}");
        if event["device_id"].is_string() {
            assert_eq!(labels["device_id"], event["device_id"], "{alert}");
            assert_eq!(labels["building"], event["building"], "{alert}");
            assert!(!event["building"].as_str().unwrap().is_empty(), "{event}");
        }
        assert_eq!(alert["status"]["state"], "active", "{alert}");
    }

    // Alertmanager routes them on: its webhook receiver gets them, grouped, firing.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = routed.lock().unwrap().accepted.clone();
        let firing: usize = got
            .iter()
            .map(|(_, body)| serde_json::from_str::<serde_json::Value>(body).unwrap())
            .filter(|n| n["status"] == "firing")
            .map(|n| n["alerts"].as_array().unwrap().len())
            .sum();
        if firing >= open.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Alertmanager routed {firing} of {}",
            open.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // iotpipe is gone: nobody posts the open alerts again, and they end within a few intervals.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !alertmanager.alerts().is_empty() {
        assert!(
            Instant::now() < deadline,
            "alerts still active without iotpipe"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// While an alert is open, the channel posts it again each resend interval, each post moving
/// its end further out: Alertmanager keeps it firing as long as iotpipe runs.
#[test]
fn alertmanager_alerts_stay_firing_while_posted_again() {
    use iotpipe::io::sinks::notify::{
        AlertmanagerChannel, AlertmanagerConfig, Backoff, Channel, Notification,
    };
    let (hook, _routed, _runtime) = start_receiver(0);
    let alertmanager = Alertmanager::start(hook);
    let mut channel = AlertmanagerChannel::new(AlertmanagerConfig {
        name: "am".into(),
        url: alertmanager.url(),
        tls: None,
        resend_interval_ms: 1_000,
        labels: BTreeMap::new(),
        generator_url: None,
        timeout_ms: 2_000,
        min_severity: Default::default(),
        overdue_only: false,
        backoff: Backoff::default(),
    })
    .unwrap();
    let event = serde_json::json!({
        "id": "dev-1/m0/threshold/0/opened/0", "alert_id": "dev-1/m0/threshold/0",
        "event": "opened", "device_id": "dev-1", "site": "s", "org": "o", "building": "b",
        "metric": "temperature", "rule": "hot", "severity": "major", "cause": "threshold",
        "ts_ms": 1_704_067_200_000_u64, "score": null, "value": 99.5,
    });
    let notification = Notification {
        id: event["id"].as_str().unwrap().into(),
        severity: iotpipe::dataflow::alert::Severity::Major,
        site: "s".into(),
        silenced: false,
        overdue: false,
        emitted_ms: None,
        members: Vec::new(),
        json: event.to_string(),
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let ends_at = || -> String {
        let alerts = alertmanager.alerts();
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        assert_eq!(alerts[0]["startsAt"], "2024-01-01T00:00:00.000Z");
        alerts[0]["endsAt"].as_str().unwrap().to_owned()
    };
    runtime.block_on(channel.deliver(&notification)).unwrap();
    let first = ends_at();
    // Past the 4 s the first post gave it: alive only because it was posted again.
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(1_000));
        let wait = channel
            .idle_interval()
            .expect("an open alert to post again");
        runtime.block_on(async {
            tokio::time::sleep(wait).await;
            channel.idle().await;
        });
    }
    let later = ends_at();
    assert!(later > first, "endsAt {first} then {later}");
    // Resolved: it ends at the event's time.
    let mut resolved = event.clone();
    resolved["event"] = "resolved".into();
    resolved["id"] = "dev-1/m0/threshold/0/resolved/60000".into();
    resolved["ts_ms"] = 1_704_067_260_000_u64.into();
    let resolved = Notification {
        id: resolved["id"].as_str().unwrap().into(),
        json: resolved.to_string(),
        ..notification
    };
    runtime.block_on(channel.deliver(&resolved)).unwrap();
    assert!(alertmanager.alerts().is_empty());
    assert_eq!(channel.idle_interval(), None, "nothing open to post again");
}

/// Starts `iotpipe alerts` with `config`; its stdout and stderr go to `log`.
fn start_dispatcher(config: &Path, log: &Path) -> std::process::Child {
    let log_file = std::fs::File::create(log).unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_iotpipe"))
        .args(["alerts", "--config"])
        .arg(config)
        .env("HOOK_SECRET", SECRET)
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .spawn()
        .unwrap()
}

/// The ids a receiver accepted, in order.
fn accepted_ids(received: &Mutex<Received>) -> Vec<String> {
    received
        .lock()
        .unwrap()
        .accepted
        .iter()
        .map(|(id, _)| id.clone())
        .collect()
}

/// `iotpipe alerts` delivers the alert events of the alerts topic to a webhook, and, killed
/// with SIGKILL mid-stream and started again, then stopped and started once more, sends each
/// event at most once more than once (the one in flight at the kill, which the receiver drops
/// by its `x-iotpipe-event-id`), loses none, and keeps each alert's events in order.
#[test]
fn the_dispatcher_killed_and_restarted_delivers_every_alert_event_once_in_order() {
    let data = common::dataset(200, 420);
    // The alert events `run` would write: a replay's, keyed by alert id.
    let out = data.dir.path().join("replayed");
    common::succeed(&mut common::replay_command(&data, &out));
    let lines: Vec<String> = std::fs::read_to_string(out.join("alerts.jsonl"))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert!(lines.len() >= 20, "too few alert events: {}", lines.len());
    let events: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let tansu = common::kafka::Tansu::start(common::kafka::Engine::Sqlite);
    tansu.create_topics(&[("alerts", 4)]);
    tansu.produce(
        "alerts",
        events
            .iter()
            .zip(&lines)
            .map(|(e, l)| (None, e["alert_id"].as_str().unwrap(), l.as_bytes())),
    );

    let (hook, received, _runtime) = start_receiver(0);
    let config = data.dir.path().join("alerts.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbrokers = \"{}\"\ntopics = {{ alerts = \"alerts\" }}\n\n[notify]\n\
             ledger_dir = {:?}\ndrain_timeout_ms = 5000\n\n[[notify.webhook]]\nname = \"ops\"\n\
             url = \"http://{hook}/alerts\"\nsecret_env = \"HOOK_SECRET\"\nmax_per_second = 15.0\n",
            tansu.brokers(),
            data.dir.path().join("ledger").display().to_string(),
        ),
    )
    .unwrap();
    let log = data.dir.path().join("dispatcher.log");
    let wait_for = |count: usize, dispatcher: &mut std::process::Child| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while accepted_ids(&received).len() < count {
            assert!(
                dispatcher.try_wait().unwrap().is_none(),
                "the dispatcher exited:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            assert!(
                Instant::now() < deadline,
                "{} of {count} delivered",
                accepted_ids(&received).len()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // Killed a third of the way.
    let mut dispatcher = start_dispatcher(&config, &log);
    wait_for(lines.len() / 3, &mut dispatcher);
    dispatcher.kill().unwrap();
    dispatcher.wait().unwrap();
    let at_kill = accepted_ids(&received).len();
    // Started again: it goes on from what the webhook had not acknowledged.
    let mut dispatcher = start_dispatcher(&config, &log);
    wait_for(lines.len().min(at_kill + 5), &mut dispatcher);
    // Stopped cleanly mid-stream, and started once more.
    assert!(common::send_signal(dispatcher.id(), "TERM"));
    let status = dispatcher.wait().unwrap();
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let mut dispatcher = start_dispatcher(&config, &log);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut distinct = accepted_ids(&received);
        distinct.sort();
        distinct.dedup();
        if distinct.len() >= lines.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} delivered",
            distinct.len(),
            lines.len()
        );
        assert!(
            dispatcher.try_wait().unwrap().is_none(),
            "the dispatcher exited"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Nothing more comes.
    std::thread::sleep(Duration::from_millis(1_500));
    let _ = dispatcher.kill();
    let _ = dispatcher.wait();

    let got = accepted_ids(&received);
    let mut distinct = got.clone();
    distinct.sort();
    distinct.dedup();
    let mut want: Vec<String> = events
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    want.sort();
    assert_eq!(distinct, want, "every event, none other");
    assert!(
        got.len() <= want.len() + 1,
        "{} deliveries of {} events: more than the one in flight at the kill",
        got.len(),
        want.len()
    );
    assert_eq!(received.lock().unwrap().bad_signatures, 0);
    // Each alert's events in the order they happened.
    let position: BTreeMap<&str, usize> = got
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i))
        .collect();
    let mut by_alert: BTreeMap<&str, Vec<&serde_json::Value>> = BTreeMap::new();
    for e in &events {
        by_alert
            .entry(e["alert_id"].as_str().unwrap())
            .or_default()
            .push(e);
    }
    for (alert, events) in by_alert {
        let order: Vec<usize> = events
            .iter()
            .map(|e| position[e["id"].as_str().unwrap()])
            .collect();
        assert!(order.is_sorted(), "alert {alert}: delivered out of order");
    }
}

/// The webhook's payload templates against receivers: the alert event's JSON, a Slack message
/// and PagerDuty Events v2 events, each signed over what is sent, one per alert event.
#[test]
fn webhooks_send_the_event_a_slack_message_or_a_pagerduty_event() {
    let data = common::dataset(200, 420);
    let receivers: Vec<_> = (0..3).map(|_| start_receiver(0)).collect();
    let notify = data.dir.path().join("notify.toml");
    let mut config = "drain_timeout_ms = 5000\n".to_string();
    for ((addr, _, _), format) in receivers.iter().zip(["json", "slack", "pagerduty"]) {
        config.push_str(&format!(
            "\n[[webhook]]\nname = \"{format}\"\nurl = \"http://{addr}/hook\"\n\
             secret_env = \"HOOK_SECRET\"\nmax_per_second = 1000.0\nformat = \"{format}\"\n"
        ));
    }
    config.push_str("routing_key_env = \"PD_ROUTING_KEY\"\n");
    std::fs::write(&notify, config).unwrap();
    let out = data.dir.path().join("out");
    common::succeed(
        common::replay_command(&data, &out)
            .arg("--notify")
            .arg(&notify)
            .env("HOOK_SECRET", SECRET)
            .env("PD_ROUTING_KEY", "R0UTING"),
    );
    let events: Vec<serde_json::Value> = std::fs::read_to_string(out.join("alerts.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(events.len() >= 10);
    let bodies = |i: usize| -> Vec<serde_json::Value> {
        let r = receivers[i].1.lock().unwrap();
        assert_eq!(r.bad_signatures, 0, "signed over what is sent");
        r.accepted
            .iter()
            .map(|(_, body)| serde_json::from_str(body).unwrap())
            .collect()
    };
    assert_eq!(bodies(0), events, "json: the events themselves");
    let slack = bodies(1);
    assert_eq!(slack.len(), events.len());
    for (message, event) in slack.iter().zip(&events) {
        let text = message["text"].as_str().unwrap();
        assert!(
            text.starts_with(&format!(
                "[{}]",
                event["severity"].as_str().unwrap().to_uppercase()
            )),
            "{text}"
        );
        assert!(text.contains(event["rule"].as_str().unwrap()), "{text}");
        assert_eq!(message["blocks"].as_array().unwrap().len(), 2, "{message}");
    }
    let pagerduty = bodies(2);
    assert_eq!(pagerduty.len(), events.len());
    for (pd, event) in pagerduty.iter().zip(&events) {
        assert_eq!(pd["routing_key"], "R0UTING");
        assert_eq!(pd["dedup_key"], event["alert_id"]);
        let action = if event["event"] == "resolved" {
            "resolve"
        } else {
            "trigger"
        };
        assert_eq!(pd["event_action"], action);
        assert!(
            ["critical", "error", "warning", "info"]
                .contains(&pd["payload"]["severity"].as_str().unwrap()),
            "{pd}"
        );
        assert_eq!(pd["payload"]["custom_details"], *event);
    }
}

/// `iotpipe alerts` with a configuration that cannot work stops at once with one line naming
/// the field.
#[test]
fn the_dispatcher_refuses_a_config_without_channels_or_brokers_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    for (toml, field) in [
        (
            "[kafka]\nbrokers = \"127.0.0.1:9\"\n\n[notify]\n",
            "notify has no channel",
        ),
        (
            "[kafka]\nbrokers = \" \"\n\n[notify]\n[[notify.file]]\nname = \"f\"\npath = \"x\"\n",
            "kafka.brokers",
        ),
        (
            "[kafka]\nbrokers = \"127.0.0.1:9\"\nbrokres = 1\n",
            "brokres",
        ),
    ] {
        let config = dir.path().join("alerts.toml");
        std::fs::write(&config, toml).unwrap();
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_iotpipe"))
            .args(["alerts", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(field), "{field}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// A storm of one site's events in one request (or a few): a webhook with `group_wait_ms`
/// sends every event once, in groups of one site, cause and kind, each event's id inside;
/// a second notifier with the same ledger sends none again.
#[test]
fn a_grouping_webhook_sends_a_storm_in_a_few_requests_each_event_once() {
    use iotpipe::io::sinks::notify::{Notification, Notifier, NotifyConfig};
    use iotpipe::io::support::metrics::Metrics;
    let (addr, received, _runtime) = start_receiver(0);
    let ledger = tempfile::tempdir().unwrap();
    let config: NotifyConfig = toml::from_str(&format!(
        "ledger_dir = {:?}\n[[webhook]]\nname = \"grouped\"\nurl = \"http://{addr}/hook\"\n\
         group_wait_ms = 300\nmax_per_second = 1000.0\n",
        ledger.path().display().to_string()
    ))
    .unwrap();
    let event = |i: usize, site: &str, cause: &str| {
        let json = serde_json::json!({
            "id": format!("dev-{i}/{cause}/0/opened/0"), "alert_id": format!("dev-{i}/{cause}/0"),
            "event": "opened", "device_id": format!("dev-{i}"), "site": site, "org": "o",
            "building": "b", "metric": null, "rule": "r", "severity": "major", "cause": cause,
            "ts_ms": 1_704_067_200_000_u64, "score": null, "value": null,
        });
        Notification {
            id: json["id"].as_str().unwrap().into(),
            severity: iotpipe::dataflow::alert::Severity::Major,
            site: site.into(),
            silenced: false,
            overdue: false,
            emitted_ms: None,
            members: Vec::new(),
            json: json.to_string(),
        }
    };
    // 1,200 silence events of site A, with 30 threshold events of A and 30 of site B among them.
    let mut storm: Vec<Notification> = (0..1_200).map(|i| event(i, "A", "silence")).collect();
    for i in 0..30 {
        storm.insert(i * 40, event(10_000 + i, "A", "threshold"));
        storm.insert(i * 40 + 1, event(20_000 + i, "B", "silence"));
    }
    let metrics = std::sync::Arc::new(Metrics::default());
    for round in 0..2 {
        let notifier = Notifier::start(&config, &metrics).unwrap();
        notifier.handle().send(&storm);
        let reports = notifier.finish();
        assert_eq!(reports[0].failure, None);
        if round == 1 {
            assert_eq!(reports[0].delivered, 0, "sent again: {:?}", reports[0]);
            assert_eq!(reports[0].already_delivered, storm.len() as u64);
        } else {
            assert_eq!(reports[0].delivered, storm.len() as u64);
        }
    }
    let received = received.lock().unwrap();
    let mut ids = Vec::new();
    for (_, body) in &received.accepted {
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        let events = match body["events"].as_array() {
            Some(events) => events.clone(),
            None => vec![body],
        };
        let (site, cause) = (&events[0]["site"], &events[0]["cause"]);
        assert!(
            events
                .iter()
                .all(|e| &e["site"] == site && &e["cause"] == cause)
        );
        ids.extend(events.iter().map(|e| e["id"].as_str().unwrap().to_owned()));
    }
    let mut sent: Vec<String> = storm.iter().map(|n| n.id.clone()).collect();
    assert!(
        received.accepted.len() <= 12,
        "{} requests for {} events",
        received.accepted.len(),
        sent.len()
    );
    ids.sort();
    sent.sort();
    assert_eq!(ids, sent, "every event exactly once");
}
