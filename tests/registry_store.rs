//! The metadata store on a real PostgreSQL 15 started by the test: migrations, the registry
//! imported and read back, history as of a time, and a change log without gaps under
//! concurrent writers.

mod common;

use common::postgres::Postgres;
use iotpipe::io::connect::store::entities::Kind;
use iotpipe::io::connect::store::registry::RegistryEntry;
use iotpipe::io::connect::store::{Store, StoreConfig};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn open(server: &Postgres) -> Store {
    Store::open(&StoreConfig::url(server.url()), |_| None)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", server.log()))
}

/// The dataset's registry changelog, as the store imports it.
fn registry_entries(data: &common::Dataset) -> Vec<RegistryEntry> {
    std::fs::read_to_string(&data.registry)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn migrations_apply_once_when_several_processes_open_the_store_at_once() {
    let server = Postgres::start();
    runtime().block_on(async {
        let url = StoreConfig::url(server.url());
        let opened =
            futures_util::future::join_all((0..4).map(|_| Store::open(&url, |_| None))).await;
        for store in opened {
            assert_eq!(store.unwrap().migrations().await.unwrap(), [1, 2]);
        }
        assert_eq!(open(&server).await.migrations().await.unwrap(), [1, 2]);
    });
}

#[test]
fn a_registry_imported_comes_back_line_for_line_and_history_answers_as_of() {
    let server = Postgres::start();
    let data = common::dataset(40, 60);
    let entries = registry_entries(&data);
    runtime().block_on(async {
        let store = open(&server).await;
        let report = store.import_registry(&entries).await.unwrap();
        assert_eq!(report.lines, entries.len());
        // Places and models were created along the way, each a change of its own.
        assert!(report.changes > entries.len(), "{report:?}");
        assert_eq!(store.export_registry().await.unwrap(), entries);

        // dev-000001 moved mid-stream; dev-000002 left the registry.
        let moved = entries
            .iter()
            .filter(|e| e.device_id == "dev-000001")
            .collect::<Vec<_>>();
        assert_eq!(moved.len(), 2, "the dataset moves dev-000001 once");
        let before = store
            .device_as_of("dev-000001", moved[1].effective_ms - 1)
            .await
            .unwrap();
        let after = store
            .device_as_of("dev-000001", moved[1].effective_ms)
            .await
            .unwrap();
        let with_time = |e: &RegistryEntry, t: i64| RegistryEntry {
            effective_ms: t,
            ..e.clone()
        };
        assert_eq!(before, Some(with_time(moved[0], moved[0].effective_ms)));
        assert_eq!(after, Some(with_time(moved[1], moved[1].effective_ms)));
        let removed = entries
            .iter()
            .find(|e| e.device_id == "dev-000002" && e.deleted)
            .unwrap();
        assert!(
            store
                .device_as_of("dev-000002", removed.effective_ms - 1)
                .await
                .unwrap()
                .is_some()
        );
        assert_eq!(
            store
                .device_as_of("dev-000002", removed.effective_ms)
                .await
                .unwrap(),
            None
        );
    });
}

#[test]
fn concurrent_writers_leave_a_change_log_without_gaps_or_duplicates_in_commit_order() {
    let server = Postgres::start();
    runtime().block_on(async {
        let store = open(&server).await;
        // Four writers, each changing its own 25 devices four times, one transaction a change.
        let writers = (0..4).map(|writer| {
            let store = store.clone();
            tokio::spawn(async move {
                for round in 0..4_i64 {
                    for d in 0..25 {
                        let entry = RegistryEntry {
                            device_id: format!("w{writer}-d{d}"),
                            effective_ms: round * 1_000,
                            deleted: false,
                            device_type: Some("thermostat".into()),
                            firmware: Some(format!("1.0.{round}")),
                            schema: Some("v1".into()),
                            org: Some("org-1".into()),
                            site: Some(format!("site-{writer}")),
                            building: Some("B1".into()),
                            model: Some("TH-100".into()),
                            thresholds: Default::default(),
                        };
                        store.import_registry(&[entry]).await.unwrap();
                    }
                }
            })
        });
        for writer in futures_util::future::join_all(writers).await {
            writer.unwrap();
        }
        let log = store.changes_after(0, i64::MAX).await.unwrap();
        let seqs: Vec<i64> = log.iter().map(|c| c.seq).collect();
        assert_eq!(
            seqs,
            (1..=log.len() as i64).collect::<Vec<_>>(),
            "gaps or repeats"
        );
        // 400 device changes, plus one org, four sites, four buildings and one model.
        assert_eq!(log.len(), 400 + 1 + 4 + 4 + 1);
        // Each device's versions appear in the log in order, 1 to 4.
        let mut versions: std::collections::BTreeMap<&str, Vec<i64>> = Default::default();
        for c in log.iter().filter(|c| c.kind == Kind::Device) {
            versions.entry(&c.id).or_default().push(c.version);
        }
        assert_eq!(versions.len(), 100);
        assert!(
            versions.values().all(|v| v == &[1, 2, 3, 4]),
            "{versions:?}"
        );
        // A reader following the log from any position sees the rest in order.
        let tail = store.changes_after(200, 50).await.unwrap();
        assert_eq!(tail.first().map(|c| c.seq), Some(201));
        assert_eq!(tail.len(), 50);
    });
}

fn iotpipe(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_iotpipe"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn iotpipe_registry_import_then_export_gives_back_the_file_and_a_bad_line_imports_nothing() {
    let server = Postgres::start();
    let data = common::dataset(30, 60);
    let url = server.url();
    let registry = data.registry.to_str().unwrap();

    // A line naming a metric the catalog lacks: refused with its line, nothing written.
    let bad = data.dir.path().join("bad.jsonl");
    let mut text = std::fs::read_to_string(&data.registry).unwrap();
    text.push_str(
        r#"{"device_id":"dev-x","device_type":"thermostat","firmware":"1","schema":"v1","org":"o","site":"s","building":"b","model":"m","thresholds":{"no_such_metric":{"min":0,"max":1}}}"#,
    );
    text.push('\n');
    std::fs::write(&bad, &text).unwrap();
    let refused = iotpipe(&[
        "registry",
        "import",
        bad.to_str().unwrap(),
        "--database-url",
        &url,
    ]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    let last_line = text.lines().count();
    assert!(
        stderr.contains(&format!("registry line {last_line}")) && stderr.contains("no_such_metric"),
        "{stderr}"
    );

    let imported = iotpipe(&["registry", "import", registry, "--database-url", &url]);
    assert!(
        imported.status.success(),
        "{}",
        String::from_utf8_lossy(&imported.stderr)
    );
    let out = data.dir.path().join("exported.jsonl");
    let exported = iotpipe(&[
        "registry",
        "export",
        "--database-url",
        &url,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(exported.status.success());
    // The same lines (as JSON; absent fields and defaults written out the same way).
    let parse = |text: &str| -> Vec<RegistryEntry> {
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    assert_eq!(
        parse(&std::fs::read_to_string(&out).unwrap()),
        parse(&std::fs::read_to_string(&data.registry).unwrap())
    );
    // What was exported replays as the registry it came from.
    let schemas = iotpipe::dataflow::schema::SchemaSet::embedded();
    let original =
        iotpipe::io::support::schema_files::load_registry(&data.registry, &schemas).unwrap();
    let round_trip = iotpipe::io::support::schema_files::load_registry(&out, &schemas).unwrap();
    assert_eq!(format!("{original:?}"), format!("{round_trip:?}"));

    // A wrong address is one error naming the flag.
    let wrong = iotpipe(&[
        "registry",
        "export",
        "--database-url",
        "postgresql://x@127.0.0.1:1/x",
    ]);
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(!wrong.status.success());
    assert!(stderr.contains("--database-url"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

/// `deploy/postgres/grafana-reader.sql` gives Grafana a login that answers every metadata-store
/// panel of `deploy/grafana` and can write nothing.
#[test]
fn the_grafana_login_reads_every_store_panel_and_writes_nothing() {
    let server = Postgres::start();
    let data = common::dataset(20, 30);
    let entries = registry_entries(&data);
    runtime().block_on(async {
        open(&server).await.import_registry(&entries).await.unwrap();
    });
    let reader_sql = include_str!("../deploy/postgres/grafana-reader.sql");
    server.psql("postgres", "postgres", reader_sql).unwrap();
    // Twice: an operator re-running it after an upgrade gets no error.
    server.psql("postgres", "postgres", reader_sql).unwrap();

    let dashboard: serde_json::Value =
        serde_json::from_str(include_str!("../deploy/grafana/dashboards/iotpipe.json")).unwrap();
    let mut queries = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        if panel["datasource"]["uid"] != "iotpipe-metadata" {
            continue;
        }
        for target in panel["targets"].as_array().unwrap() {
            // Grafana's macro, for the last hour.
            let sql = target["rawSql"].as_str().unwrap().replace(
                "$__timeFilter(committed_at)",
                "committed_at > now() - interval '1 hour'",
            );
            let rows = server
                .psql("postgres", "grafana", &sql)
                .unwrap_or_else(|e| panic!("panel {:?}: {e}", panel["title"]));
            assert!(
                !rows.trim().is_empty(),
                "panel {:?} answered nothing",
                panel["title"]
            );
            queries += 1;
        }
    }
    assert_eq!(queries, 2);
    for write in [
        "UPDATE devices SET firmware = 'x'",
        "DELETE FROM change_log",
        "CREATE TABLE grafana_was_here (x int)",
    ] {
        let refused = server.psql("postgres", "grafana", write).unwrap_err();
        assert!(
            refused.contains("read-only transaction") || refused.contains("permission denied"),
            "{write}: {refused}"
        );
    }
    // Not only the read-only default: the grants refuse it too.
    let refused = server
        .psql(
            "postgres",
            "grafana",
            "SET TRANSACTION READ WRITE; UPDATE devices SET firmware = 'x'",
        )
        .unwrap_err();
    assert!(refused.contains("permission denied"), "{refused}");
}
