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
use iotpipe::io::notify::signature;

const SECRET: &str = "test-secret-of-the-webhook";

/// What the receiver saw.
#[derive(Default)]
struct Received {
    /// Requests answered 500 so far (the first `fail_first` are).
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
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let state = Arc::clone(&state);
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
                        let status = if s.failed < fail_first {
                            s.failed += 1;
                            500
                        } else {
                            if sig != signature(SECRET.as_bytes(), &body) {
                                s.bad_signatures += 1;
                            }
                            s.accepted
                                .push((id, String::from_utf8(body.to_vec()).unwrap()));
                            200
                        };
                        Ok::<_, std::convert::Infallible>(
                            Response::builder()
                                .status(status)
                                .body(Full::new(Bytes::new()))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, received, runtime)
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
    std::fs::read_to_string(out.join("alerts.jsonl"))
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
    let notify = data.dir.path().join("notify.toml");
    std::fs::write(
        &notify,
        format!(
            "ledger_dir = {:?}\n\n[[webhook]]\nname = \"ops\"\nurl = \"http://{addr}/alerts\"\nsecret_env = \"HOOK_SECRET\"\nmax_per_second = 1000.0\nbackoff = {{ initial_ms = 20, max_ms = 200 }}\n",
            data.dir.path().join("ledger").display().to_string()
        ),
    )
    .unwrap();
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
    let notify = data.dir.path().join("notify.toml");
    std::fs::write(
        &notify,
        format!(
            "ledger_dir = {:?}\ndrain_timeout_ms = 1000\n\n[[webhook]]\nname = \"ops\"\nurl = \"http://127.0.0.1:{port}/alerts\"\nsecret_env = \"HOOK_SECRET\"\nmax_per_second = 1000.0\nbackoff = {{ initial_ms = 20, max_ms = 100 }}\n",
            data.dir.path().join("ledger").display().to_string()
        ),
    )
    .unwrap();
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
