//! The ingestion tier against real servers: mosquitto with the fleet configuration of
//! `deploy/mosquitto/`, tansu (sqlite), and the `iotpipe bridge` and `iotpipe loadgen`
//! binaries.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::kafka::{Engine, Tansu};
use common::mqtt::{BRIDGE_PASSWORD, BRIDGE_USER, FLEET_SECRET, Mosquitto};
use iotpipe::commands::loadgen::LoadPlan;
use iotpipe::commands::loadgen::credentials::device_password;
use iotpipe::io::connect::mqtt::{MqttConnectionConfig, TlsConfig};
use iotpipe::io::connect::secret::Secret;
use iotpipe::io::sources::fleet::{FleetConfig, device_id};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Packet};
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions};

const TOPIC: &str = "iotpipe.telemetry";

/// Connects and waits for the broker's answer.
async fn connect(
    port: u16,
    client_id: &str,
    credentials: Option<(&str, &str)>,
) -> Result<(AsyncClient, EventLoop), ConnectionError> {
    let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
    if let Some((user, password)) = credentials {
        options.set_credentials(user, password);
    }
    let (client, mut events) = AsyncClient::new(options, 64);
    loop {
        match events.poll().await? {
            Event::Incoming(Packet::ConnAck(_)) => return Ok((client, events)),
            _ => continue,
        }
    }
}

fn refused(result: Result<(AsyncClient, EventLoop), ConnectionError>) -> ConnectReturnCode {
    match result {
        Err(ConnectionError::ConnectionRefused(code)) => code,
        Err(e) => panic!("expected a refusal, got {e}"),
        Ok(_) => panic!("expected a refusal, got a connection"),
    }
}

#[test]
fn devices_publish_only_as_themselves_and_strangers_are_refused() {
    let broker = Mosquitto::fleet(3, "");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let port = broker.port;
        // The bridge's user reads everything devices publish.
        let (reader, mut reader_events) =
            connect(port, "reader", Some((BRIDGE_USER, BRIDGE_PASSWORD)))
                .await
                .unwrap();
        reader
            .subscribe("devices/#", QoS::AtLeastOnce)
            .await
            .unwrap();
        let password = device_password(FLEET_SECRET, "dev-000000");
        let (device, mut device_events) =
            connect(port, "dev-000000", Some(("dev-000000", &password)))
                .await
                .unwrap();
        tokio::spawn(async move { while device_events.poll().await.is_ok() {} });
        // Wait for the subscription before publishing.
        loop {
            if let Event::Incoming(Packet::SubAck(_)) = reader_events.poll().await.unwrap() {
                break;
            }
        }
        for (topic, body) in [
            ("devices/dev-000001/telemetry", "spoofed"),
            ("devices/dev-000000/telemetry", "own"),
        ] {
            device
                .publish(topic, QoS::AtLeastOnce, false, body)
                .await
                .unwrap();
        }
        let mut received = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while let Ok(Ok(event)) = tokio::time::timeout_at(deadline, reader_events.poll()).await {
            if let Event::Incoming(Packet::Publish(p)) = event {
                received.push(String::from_utf8_lossy(&p.payload).into_owned());
            }
        }
        assert_eq!(
            received,
            ["own"],
            "only the device's own topic gets through"
        );

        for (who, credentials) in [
            ("an unknown user", Some(("intruder", "guess"))),
            ("a wrong password", Some(("dev-000001", "guess"))),
            (
                "another device's password",
                Some(("dev-000001", password.as_str())),
            ),
            ("no credentials", None),
        ] {
            let code = refused(connect(port, "stranger", credentials).await);
            assert!(
                matches!(
                    code,
                    ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized
                ),
                "{who}: {code:?}"
            );
        }
    });
}

#[test]
fn tls_with_a_client_certificate_connects_and_without_one_is_refused() {
    let broker = Mosquitto::fleet(1, "");
    let dir = broker.dir.path();
    let mut config = MqttConnectionConfig::plain("127.0.0.1", broker.mutual_tls_port.unwrap(), "b");
    config.username = Some(BRIDGE_USER.into());
    let password = Secret(BRIDGE_PASSWORD.into());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let attempt = |tls: TlsConfig| {
        let mut config = config.clone();
        config.tls = Some(tls);
        let options = config.options("mqtt", Some(&password)).unwrap();
        let (_client, mut events) = AsyncClient::new(options, 8);
        runtime.block_on(async {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                    Ok(_) => continue,
                    Err(e) => return Err(e.to_string()),
                }
            }
        })
    };
    let ca_file = dir.join("ca.pem");
    attempt(TlsConfig {
        ca_file: ca_file.clone(),
        client_cert_file: Some(dir.join("client.pem")),
        client_key_file: Some(dir.join("client.key")),
        server_name: None,
    })
    .unwrap();
    let refused = attempt(TlsConfig {
        ca_file,
        ..TlsConfig::default()
    });
    assert!(refused.is_err(), "connected without a client certificate");
}

/// A bridge process.
struct Bridge {
    child: Child,
    metrics_port: u16,
    config: PathBuf,
    log: PathBuf,
}

impl Bridge {
    fn start(dir: &Path, name: &str, group: &str, broker: &Mosquitto, kafka: &Tansu) -> Self {
        Self::start_with(dir, name, group, broker, kafka, "")
    }

    /// A bridge with more `[kafka]` settings (`extra_kafka`, TOML lines).
    fn start_with(
        dir: &Path,
        name: &str,
        group: &str,
        broker: &Mosquitto,
        kafka: &Tansu,
        extra_kafka: &str,
    ) -> Self {
        let config = dir.join(format!("{name}.toml"));
        let metrics_port = common::free_port();
        std::fs::write(
            &config,
            format!(
                "[mqtt]\nhost = \"127.0.0.1\"\nport = {}\nclient_id = \"{name}\"\n\
                 username = \"{BRIDGE_USER}\"\npassword_env = \"BRIDGE_PASSWORD\"\n\
                 [mqtt.tls]\nca_file = \"{}\"\n\
                 [subscription]\nmax_in_flight = 1000\nshare_group = \"{group}\"\n\
                 [metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n\
                 [kafka]\nbrokers = \"{}\"\n{extra_kafka}\n",
                broker.tls_port.unwrap(),
                broker.ca_file.as_ref().unwrap().display(),
                kafka.brokers()
            ),
        )
        .unwrap();
        let log = dir.join(format!("{name}.log"));
        let child = Self::spawn(&config, &log);
        Self {
            child,
            metrics_port,
            config,
            log,
        }
    }

    fn spawn(config: &Path, log: &Path) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        Command::new(env!("CARGO_BIN_EXE_iotpipe"))
            .args(["bridge", "--config"])
            .arg(config)
            .env("BRIDGE_PASSWORD", BRIDGE_PASSWORD)
            .env("IOTPIPE_LOG", "iotpipe=info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    fn kill_and_restart(&mut self, down: Duration) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        std::thread::sleep(down);
        self.child = Self::spawn(&self.config, &self.log);
    }

    /// SIGTERM, and the final report line.
    fn stop(mut self) -> String {
        assert!(common::send_signal(self.child.id(), "TERM"));
        let status = self.child.wait().unwrap();
        let log = std::fs::read_to_string(&self.log).unwrap();
        assert!(status.success(), "bridge exited with {status}:\n{log}");
        log.lines()
            .rev()
            .find(|l| l.starts_with("bridge: received"))
            .unwrap_or_else(|| panic!("no report in\n{log}"))
            .to_owned()
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        // A failed test must not leave a bridge reconnecting forever.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `iotpipe loadgen` arguments for a repeatable run of `devices` devices.
fn loadgen_args(to: &str, devices: usize, rate: u32, seconds: u32) -> Vec<String> {
    [
        "loadgen",
        "--to",
        to,
        "--devices",
        &devices.to_string(),
        "--rate",
        &rate.to_string(),
        "--duration",
        &seconds.to_string(),
        "--start-ms",
        "1704067200000",
        "--seed",
        "11",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Arguments for a paced run to `broker`'s device listener, one connection per device, each
/// authenticating as itself, with the JSON report written to `report`.
fn device_loadgen_args(
    broker: &Mosquitto,
    (devices, rate, seconds): (usize, u32, u32),
    report: &Path,
) -> Vec<String> {
    let mut args = loadgen_args(
        &format!("mqtt://127.0.0.1:{}", broker.port),
        devices,
        rate,
        seconds,
    );
    args.extend(["--device-secret-env".into(), "FLEET_SECRET".into()]);
    args.extend(["--report".into(), report.display().to_string()]);
    args
}

/// The number after `name ` in a bridge's report line.
fn report_count(line: &str, name: &str) -> u64 {
    let after = line
        .split(&format!("{name} "))
        .nth(1)
        .unwrap_or_else(|| panic!("no {name} in {line}"));
    after
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

fn loadgen(args: &[String]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_iotpipe"));
    command
        .args(args)
        .env("FLEET_SECRET", FLEET_SECRET)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

fn report_of(output: &Output, path: &Path) -> serde_json::Value {
    assert!(
        output.status.success(),
        "loadgen failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The `(device id, message)` pairs the loadgen arguments send; checks that a run to a file
/// writes the same messages.
fn expected_messages(dir: &Path, devices: usize, rate: u32, seconds: u32) -> Vec<(String, String)> {
    let plan = LoadPlan {
        fleet: FleetConfig {
            devices,
            rate_per_device: rate as f64 / devices as f64,
            seed: 11,
            start_ms: 1_704_067_200_000,
            ..FleetConfig::default()
        },
        span_ms: seconds as u64 * 1000,
        paced: false,
        drain_timeout: Duration::ZERO,
    };
    let mut planned = plan.messages();
    let mut messages = Vec::new();
    while planned.next_batch(&mut messages) {}
    let path = dir.join("expected.jsonl");
    let mut args = loadgen_args(&format!("file:{}", path.display()), devices, rate, seconds);
    args.push("--unpaced".into());
    let output = loadgen(&args).output().unwrap();
    assert!(output.status.success());
    let written = std::fs::read_to_string(&path).unwrap();
    assert!(written.lines().eq(messages.iter().map(|m| m.line.as_str())));
    messages
        .into_iter()
        .map(|m| (device_id(m.device), m.line))
        .collect()
}

/// What Kafka holds against what was sent.
struct Gaps {
    /// Expected `(device, message)`s not in Kafka.
    missing: usize,
    /// Messages in Kafka beyond the expected ones.
    duplicates: usize,
}

/// Waits until Kafka holds at least `at_least` messages (or stops growing for 30 s), then
/// compares its `(key, message)`s with `expected`.
fn kafka_gaps(kafka: &Tansu, expected: &[(String, String)], at_least: usize) -> Gaps {
    let mut seen = 0;
    let mut stalled_at = Instant::now() + Duration::from_secs(30);
    let records = loop {
        let records = kafka.read_all(TOPIC);
        if records.len() > seen {
            seen = records.len();
            stalled_at = Instant::now() + Duration::from_secs(30);
        }
        if records.len() >= at_least || Instant::now() > stalled_at {
            break records;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let mut counts: BTreeMap<(&str, &str), i64> = BTreeMap::new();
    for (key, line) in expected {
        *counts.entry((key.as_str(), line.as_str())).or_default() += 1;
    }
    for (key, value) in &records {
        let count = counts.get_mut(&(key.as_str(), value.as_str()));
        // Every record is a sent message under its device's key.
        *count.unwrap_or_else(|| panic!("unexpected record {key:?}: {value:?}")) -= 1;
    }
    let missing: i64 = counts.values().filter(|n| **n > 0).sum();
    let gaps = Gaps {
        missing: missing as usize,
        duplicates: records.len() + missing as usize - expected.len(),
    };
    eprintln!(
        "{} messages expected, {} in Kafka: {} missing, {} duplicates",
        expected.len(),
        records.len(),
        gaps.missing,
        gaps.duplicates
    );
    gaps
}

fn setup() -> (Mosquitto, Tansu, tempfile::TempDir) {
    let broker = Mosquitto::fleet(40, "");
    let kafka = Tansu::start(Engine::Sqlite);
    kafka.create_topics(&[(TOPIC, 4)]);
    (broker, kafka, tempfile::tempdir().unwrap())
}

#[test]
fn every_message_reaches_kafka_when_a_bridge_is_killed_mid_stream() {
    let (broker, kafka, dir) = setup();
    let (devices, rate, seconds) = (40, 400, 20);
    let expected = expected_messages(dir.path(), devices, rate, seconds);
    // Two bridges in one shared-subscription group split the messages.
    let mut first = Bridge::start(dir.path(), "bridge-0", "iotpipe", &broker, &kafka);
    let second = Bridge::start(dir.path(), "bridge-1", "iotpipe", &broker, &kafka);
    std::thread::sleep(Duration::from_secs(1));
    let report = dir.path().join("report.json");
    let args = device_loadgen_args(&broker, (devices, rate, seconds), &report);
    let sender = loadgen(&args).spawn().unwrap();
    std::thread::sleep(Duration::from_secs(7));
    first.kill_and_restart(Duration::from_secs(1));
    let output = sender.wait_with_output().unwrap();
    let report = report_of(&output, &report);
    assert_eq!(report["sent"].as_u64().unwrap() as usize, expected.len());
    assert_eq!(report["acknowledged"], report["sent"]);
    let Gaps {
        missing,
        duplicates,
    } = kafka_gaps(&kafka, &expected, expected.len());
    assert_eq!(missing, 0, "messages lost");
    let first_report = first.stop();
    let second_report = second.stop();
    eprintln!("{first_report}\n{second_report}");
    assert!(
        report_count(&second_report, "forwarded") > 0,
        "{second_report}"
    );
    assert!(
        report_count(&first_report, "forwarded") > 0,
        "{first_report}"
    );
    // Only what the killed bridge had in flight can come twice.
    assert!(duplicates <= 2 * 1000, "{duplicates} duplicates");
}

/// Restarts mosquitto (SIGTERM, 2 s down) in the middle of a loadgen run through one bridge
/// subscribed with `group`; returns what Kafka misses, the loadgen's report and the bridge's.
fn broker_restart_mid_stream(group: &str) -> (Gaps, serde_json::Value, String) {
    let (mut broker, kafka, dir) = setup();
    let (devices, rate, seconds) = (40, 400, 20);
    let expected = expected_messages(dir.path(), devices, rate, seconds);
    let bridge = Bridge::start(dir.path(), "bridge-0", group, &broker, &kafka);
    std::thread::sleep(Duration::from_secs(1));
    let report = dir.path().join("report.json");
    let args = device_loadgen_args(&broker, (devices, rate, seconds), &report);
    let sender = loadgen(&args).spawn().unwrap();
    std::thread::sleep(Duration::from_secs(7));
    broker.restart_after(Duration::from_secs(2));
    let output = sender.wait_with_output().unwrap();
    let report = report_of(&output, &report);
    assert_eq!(report["acknowledged"], report["sent"]);
    let unrouted = report["unrouted"].as_u64().unwrap() as usize;
    let gaps = kafka_gaps(&kafka, &expected, expected.len() - unrouted);
    let metrics = common::scrape_metrics(bridge.metrics_port);
    for line in [
        "iotpipe_bridge_connected 1",
        "iotpipe_bridge_in_flight_messages 0",
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }
    let forwarded = metric(&metrics, "iotpipe_bridge_forwarded_total");
    assert!(
        forwarded >= (expected.len() - gaps.missing) as u64,
        "{metrics}"
    );
    assert!(metric(&metrics, "iotpipe_bridge_reconnects_total") >= 1);
    let bridge_report = bridge.stop();
    assert!(
        report_count(&bridge_report, "reconnects") >= 1,
        "{bridge_report}"
    );
    (gaps, report, bridge_report)
}

fn metric(text: &str, name: &str) -> u64 {
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} missing from\n{text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[test]
fn the_bridge_resumes_on_its_own_after_a_broker_restart_and_nothing_is_lost() {
    let (gaps, report, _) = broker_restart_mid_stream("");
    assert_eq!(gaps.missing, 0, "messages lost");
    // The plain persistent subscription is restored with the session: no message finds the
    // broker without a subscriber.
    assert_eq!(report["unrouted"], 0);
}

/// mosquitto 2.0 restores a persisted session without its shared subscriptions: until the
/// bridge subscribes again, device messages have no subscriber and are dropped, and the broker
/// tells the device so ("no matching subscribers"). The bridge subscribes on every connect, so
/// those are the only losses.
#[test]
fn with_a_shared_subscription_a_broker_restart_loses_only_what_the_broker_dropped() {
    let (gaps, report, _) = broker_restart_mid_stream("iotpipe");
    let unrouted = report["unrouted"].as_u64().unwrap() as usize;
    eprintln!("shared subscription across a broker restart: {unrouted} dropped by the broker");
    // Exactly what the broker said it dropped is missing: nothing else is lost, and every
    // message it reported dropping is indeed not in Kafka.
    assert_eq!(
        gaps.missing, unrouted,
        "{} missing, but the broker reported dropping {unrouted}",
        gaps.missing
    );
}

/// Unpaced load: the broker delivers faster than one PUBACK per poll-loop turn goes out, and
/// every message must still be acknowledged on the connection it came on.
#[test]
fn a_burst_is_forwarded_and_acknowledged_in_full() {
    let (broker, kafka, dir) = setup();
    let (devices, rate, seconds) = (40, 1_000, 10);
    let expected = expected_messages(dir.path(), devices, rate, seconds);
    let bridge = Bridge::start(dir.path(), "bridge-0", "", &broker, &kafka);
    std::thread::sleep(Duration::from_secs(1));
    let report = dir.path().join("report.json");
    let mut args = device_loadgen_args(&broker, (devices, rate, seconds), &report);
    args.push("--unpaced".into());
    let report = report_of(&loadgen(&args).output().unwrap(), &report);
    assert_eq!(report["sent"].as_u64().unwrap() as usize, expected.len());
    let gaps = kafka_gaps(&kafka, &expected, expected.len());
    assert_eq!((gaps.missing, gaps.duplicates), (0, 0));
    let deadline = Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        let metrics = common::scrape_metrics(bridge.metrics_port);
        if metric(&metrics, "iotpipe_bridge_forwarded_total") >= expected.len() as u64
            || Instant::now() > deadline
        {
            break metrics;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        metric(&metrics, "iotpipe_bridge_forwarded_total"),
        expected.len() as u64
    );
    assert_eq!(
        metric(&metrics, "iotpipe_bridge_left_for_redelivery_total"),
        0
    );
    bridge.stop();
}

#[test]
fn loadgen_straight_to_kafka_writes_every_message_keyed_by_device() {
    let kafka = Tansu::start(Engine::Sqlite);
    kafka.create_topics(&[(TOPIC, 4)]);
    let dir = tempfile::tempdir().unwrap();
    let (devices, rate, seconds) = (30, 300, 10);
    let expected = expected_messages(dir.path(), devices, rate, seconds);
    let report = dir.path().join("report.json");
    let mut args = loadgen_args(
        &format!("kafka://{}/{TOPIC}", kafka.brokers()),
        devices,
        rate,
        seconds,
    );
    args.extend([
        "--unpaced".into(),
        "--report".into(),
        report.display().to_string(),
    ]);
    let report = report_of(&loadgen(&args).output().unwrap(), &report);
    assert_eq!(
        report["acknowledged"].as_u64().unwrap() as usize,
        expected.len()
    );
    let gaps = kafka_gaps(&kafka, &expected, expected.len());
    assert_eq!((gaps.missing, gaps.duplicates), (0, 0));
}

#[test]
fn a_bridge_stops_promptly_on_sigterm_while_the_broker_is_down() {
    let broker = Mosquitto::fleet(1, "");
    let kafka = Tansu::start(Engine::Sqlite);
    kafka.create_topics(&[(TOPIC, 1)]);
    let dir = tempfile::tempdir().unwrap();
    let bridge = Bridge::start(dir.path(), "bridge-0", "", &broker, &kafka);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !common::try_scrape_metrics(bridge.metrics_port)
        .is_some_and(|m| m.contains("iotpipe_bridge_connected 1"))
    {
        assert!(Instant::now() < deadline, "the bridge did not connect");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(broker);
    std::thread::sleep(Duration::from_secs(2));
    let asked = Instant::now();
    let report = bridge.stop();
    assert!(
        asked.elapsed() < Duration::from_secs(15),
        "took {:?}",
        asked.elapsed()
    );
    assert!(report.contains("received 0"), "{report}");
}

#[test]
fn a_bridge_with_a_wrong_password_stops_with_one_clear_error() {
    let broker = Mosquitto::fleet(1, "");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bridge.toml");
    std::fs::write(
        &config,
        format!(
            "[mqtt]\nhost = \"127.0.0.1\"\nport = {}\nclient_id = \"bridge-0\"\n\
             username = \"{BRIDGE_USER}\"\npassword_env = \"BRIDGE_PASSWORD\"\n\
             [kafka]\nbrokers = \"127.0.0.1:1\"\n",
            broker.port
        ),
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_iotpipe"))
        .args(["bridge", "--config"])
        .arg(&config)
        .env("BRIDGE_PASSWORD", "not-it")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("refused the connection") && stderr.contains("mqtt.username"),
        "{stderr}"
    );
    assert!(!stderr.contains("not-it"), "the password leaked: {stderr}");
}

/// Publishes one QoS 1 message as `dev-000000` and waits for its PUBACK.
async fn publish_as_device(port: u16, payload: Vec<u8>) {
    let password = device_password(FLEET_SECRET, "dev-000000");
    let (device, mut events) = connect(port, "dev-000000", Some(("dev-000000", &password)))
        .await
        .unwrap();
    device
        .publish(
            "devices/dev-000000/telemetry",
            QoS::AtLeastOnce,
            false,
            payload,
        )
        .await
        .unwrap();
    loop {
        if let Event::Incoming(Packet::PubAck(_)) = events.poll().await.unwrap() {
            break;
        }
    }
    let _ = device.disconnect().await;
}

/// Waits up to 30 s for `topic` to hold `count` records.
fn wait_for_records(kafka: &Tansu, topic: &str, count: usize) -> Vec<(String, String)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let records = kafka.read_all(topic);
        if records.len() >= count || Instant::now() > deadline {
            return records;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_200_kib_message_is_forwarded_and_one_kafka_refuses_is_a_dead_letter_not_a_stall() {
    let (broker, kafka, dir) = setup();
    let dead_topic = "iotpipe.dead_letters";
    kafka.create_topics(&[(dead_topic, 1)]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let big = |fill: u8| -> Vec<u8> {
        let mut body = br#"{"device_id":"dev-000000","ts":1704067200000,"note":""#.to_vec();
        body.extend(std::iter::repeat_n(fill, 200 * 1024));
        body.extend(br#"","t":21.5}"#);
        body
    };
    // Within the broker's and Kafka's limits: forwarded whole, and acknowledged.
    let bridge = Bridge::start(dir.path(), "bridge-big", "", &broker, &kafka);
    std::thread::sleep(Duration::from_secs(1));
    runtime.block_on(publish_as_device(broker.port, big(b'a')));
    let records = wait_for_records(&kafka, TOPIC, 1);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].1.as_bytes(), big(b'a').as_slice());
    let report = bridge.stop();
    assert_eq!(report_count(&report, "forwarded"), 1, "{report}");

    // A Kafka that takes at most 100 kB refuses the next one: it becomes a bounded dead letter
    // and is acknowledged, so it does not come back on every restart.
    let small_kafka = format!(
        "dead_letter_topic = \"{dead_topic}\"\n[kafka.properties]\n\"message.max.bytes\" = \"100000\"\n"
    );
    let mut bridge =
        Bridge::start_with(dir.path(), "bridge-big", "", &broker, &kafka, &small_kafka);
    std::thread::sleep(Duration::from_secs(1));
    runtime.block_on(publish_as_device(broker.port, big(b'b')));
    let dead = wait_for_records(&kafka, dead_topic, 1);
    assert_eq!(dead.len(), 1);
    let letter: serde_json::Value = serde_json::from_str(&dead[0].1).unwrap();
    assert_eq!(letter["reason"], "sink_rejected");
    assert_eq!(letter["raw_len"].as_u64(), Some(big(b'b').len() as u64));
    assert!(letter["raw"].as_str().unwrap().len() <= 4096);
    let metrics = common::scrape_metrics(bridge.metrics_port);
    assert_eq!(metric(&metrics, "iotpipe_bridge_rejected_total"), 1);
    // Restarted, the bridge gets nothing again: the broker had its acknowledgement.
    bridge.kill_and_restart(Duration::from_millis(200));
    std::thread::sleep(Duration::from_secs(3));
    let report = bridge.stop();
    assert_eq!(report_count(&report, "received"), 0, "{report}");
    assert_eq!(kafka.read_all(dead_topic).len(), 1);
    assert_eq!(kafka.read_all(TOPIC).len(), 1);
}
