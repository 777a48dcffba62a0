//! `iotpipe etl` against a real InfluxDB 1.6 and PostgreSQL 15, read back by DuckDB and
//! pyarrow: the warehouse's hourly and daily rollups equal a batch computation over the
//! replay's `aggregates.jsonl`, attributed by the registry's history; reruns are no-ops and
//! forced reruns write the same bytes; a run killed anywhere converges; one late window
//! rewrites one day; a registry correction in the past changes the site rollups of the hours
//! it covers and no other.
//!
//! The data: two hours of a 12-device fleet from 22:50 on 2024-01-01, so two days, with the
//! dataset's registry changes (a device moving mid-window at 23:50:12, one leaving, one
//! joining mid-window).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::influx::Influx;
use common::postgres::Postgres;
use common::warehouse::{duckdb, file_hashes, pyarrow_table};
use common::{Dataset, START_MS};
use serde_json::Value;

const HOUR_MS: u64 = 3_600_000;
const DAY_MS: u64 = 24 * HOUR_MS;
/// 2024-01-01 22:50.
const DATA_START_MS: u64 = START_MS + 22 * HOUR_MS + 50 * 60_000;
const RANGE: [&str; 4] = ["--from", "2024-01-01", "--to", "2024-01-03"];

/// The mergeable aggregate, as the batch computation keeps it.
#[derive(Clone, Copy, Debug)]
struct Agg {
    count: u64,
    sum: f64,
    sum_squares: f64,
    min: f64,
    max: f64,
    first: u64,
    last: u64,
}

impl Agg {
    fn merge(&mut self, o: &Agg) {
        self.count += o.count;
        self.sum += o.sum;
        self.sum_squares += o.sum_squares;
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
        self.first = self.first.min(o.first);
        self.last = self.last.max(o.last);
    }
}

/// The servers, the data replayed into InfluxDB, the registry in the store.
struct Fixture {
    influx: Influx,
    _postgres: Postgres,
    store_url: String,
    data: Dataset,
    out: PathBuf,
}

fn iotpipe() -> Command {
    Command::new(env!("CARGO_BIN_EXE_iotpipe"))
}

impl Fixture {
    fn start() -> Self {
        let influx = Influx::start();
        let postgres = Postgres::start();
        let store_url = postgres.url();
        let data = common::dataset_from(DATA_START_MS, 12, 7_200);
        let out = data.dir.path().join("out");
        common::succeed(common::replay_command(&data, &out).args(["--influx-url", &influx.url()]));
        common::succeed(
            iotpipe()
                .args(["registry", "import"])
                .arg(&data.registry)
                .args(["--database-url", &store_url]),
        );
        Self {
            influx,
            _postgres: postgres,
            store_url,
            data,
            out,
        }
    }

    /// A configuration writing to `warehouse`.
    fn config(&self, warehouse: &Path) -> PathBuf {
        let path = warehouse.with_extension("toml");
        std::fs::write(
            &path,
            format!(
                "warehouse = {:?}\n[influx]\nurl = {:?}\n[store]\nurl = {:?}\n",
                warehouse.to_str().unwrap(),
                self.influx.url(),
                self.store_url
            ),
        )
        .unwrap();
        path
    }

    fn etl(&self, warehouse: &Path, extra: &[&str]) -> Command {
        let mut command = iotpipe();
        command
            .args(["etl", "--config"])
            .arg(self.config(warehouse))
            .args(RANGE)
            .args(extra);
        command
    }

    /// Runs the ETL to success; its report.
    fn run_etl(&self, warehouse: &Path, extra: &[&str]) -> Value {
        let report = warehouse.with_extension("report.json");
        common::succeed(self.etl(warehouse, extra).arg("--report").arg(&report));
        serde_json::from_slice(&std::fs::read(report).unwrap()).unwrap()
    }

    /// Registry lines of every device, parsed, in file order.
    fn registry_lines(&self, extra: &[Value]) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.data.registry).unwrap();
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .chain(extra.iter().cloned())
            .collect()
    }
}

/// The device's org, site and building at `ts_ms` by the registry lines: the line with the
/// latest effective time at or before it (of two at one time, the later); none if deleted.
fn places_at(lines: &[Value], device: &str, ts_ms: u64) -> [Option<String>; 3] {
    let mut best: Option<(u64, &Value)> = None;
    for line in lines.iter().filter(|l| l["device_id"] == device) {
        let effective = line["effective_ms"].as_u64().unwrap_or(0);
        if effective <= ts_ms && best.is_none_or(|(t, _)| effective >= t) {
            best = Some((effective, line));
        }
    }
    match best {
        Some((_, line)) if line["deleted"] != true => {
            ["org", "site", "building"].map(|k| line[k].as_str().map(str::to_owned))
        }
        _ => [None, None, None],
    }
}

fn key_part(value: Option<&str>) -> String {
    value.unwrap_or("(null)").to_owned()
}

/// The batch computation: every table's rows, by table and key, from `aggregates.jsonl` and
/// the registry lines (extra lines after the file's).
fn batch(out: &Path, lines: &[Value]) -> BTreeMap<String, BTreeMap<String, Agg>> {
    let mut tables: BTreeMap<String, BTreeMap<String, Agg>> = BTreeMap::new();
    for line in common::sorted_lines(&out.join("aggregates.jsonl")) {
        let w: Value = serde_json::from_str(&line).unwrap();
        let (device, metric) = (
            w["device_id"].as_str().unwrap(),
            w["metric"].as_str().unwrap(),
        );
        let start = w["window_start_ms"].as_u64().unwrap();
        let first = w["first_ts_ms"].as_u64().unwrap();
        let agg = Agg {
            count: w["count"].as_u64().unwrap(),
            sum: w["sum"].as_f64().unwrap(),
            sum_squares: w["sum_squares"].as_f64().unwrap(),
            min: w["min"].as_f64().unwrap(),
            max: w["max"].as_f64().unwrap(),
            first,
            last: w["last_ts_ms"].as_u64().unwrap(),
        };
        let [org, site, building] = places_at(lines, device, first).map(|p| key_part(p.as_deref()));
        for (grain, period) in [
            ("1h", start - start % HOUR_MS),
            ("1d", start - start % DAY_MS),
        ] {
            for (level, key) in [
                (
                    "device",
                    format!("{period}|{device}|{metric}|{org}|{site}|{building}"),
                ),
                (
                    "building",
                    format!("{period}|{org}|{site}|{building}|{metric}"),
                ),
                ("site", format!("{period}|{org}|{site}|{metric}")),
                ("org", format!("{period}|{org}|{metric}")),
            ] {
                tables
                    .entry(format!("{level}_{grain}"))
                    .or_default()
                    .entry(key)
                    .and_modify(|a| a.merge(&agg))
                    .or_insert(agg);
            }
        }
    }
    tables
}

/// A table as DuckDB reads it (Hive partitions), by the batch computation's keys; checks that
/// each row sits in the partition of its period's date.
fn read_table(warehouse: &Path, table: &str) -> BTreeMap<String, Agg> {
    let (period, keys) = match table.split_once('_').unwrap() {
        ("device", grain) => (grain, "device_id, metric, org, site, building"),
        ("building", grain) => (grain, "org, site, building, metric"),
        ("site", grain) => (grain, "org, site, metric"),
        (_, grain) => (grain, "org, metric"),
    };
    let period = if period == "1h" {
        "hour_start"
    } else {
        "day_start"
    };
    let sql = format!(
        "SELECT epoch_ms({period}) AS period, {keys}, count, sum, sum_squares, min, max, epoch_ms(first_ts) AS first, epoch_ms(last_ts) AS last, CAST(date AS VARCHAR) AS date, strftime({period}, '%Y-%m-%d') AS period_date FROM read_parquet('{}/{table}/*/*.parquet', hive_partitioning = true, union_by_name = true)",
        warehouse.display()
    );
    let mut rows = BTreeMap::new();
    for row in duckdb(&sql) {
        assert_eq!(
            row["date"], row["period_date"],
            "{table}: a row in another day's partition"
        );
        let mut key = row["period"].as_i64().unwrap().to_string();
        for column in keys.split(", ") {
            key.push('|');
            key.push_str(&key_part(row[column].as_str()));
        }
        let agg = Agg {
            count: row["count"].as_u64().unwrap(),
            sum: row["sum"].as_f64().unwrap(),
            sum_squares: row["sum_squares"].as_f64().unwrap(),
            min: row["min"].as_f64().unwrap(),
            max: row["max"].as_f64().unwrap(),
            first: row["first"].as_u64().unwrap(),
            last: row["last"].as_u64().unwrap(),
        };
        assert!(
            rows.insert(key.clone(), agg).is_none(),
            "{table}: {key} twice"
        );
    }
    rows
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * b.abs().max(1.0)
}

/// Every table of the warehouse equals the batch computation: counts, extremes and times
/// exactly, sums and squares to 1e-9 relative.
fn assert_warehouse_equals_batch(warehouse: &Path, want: &BTreeMap<String, BTreeMap<String, Agg>>) {
    for (table, want_rows) in want {
        let got = read_table(warehouse, table);
        let keys = |m: &BTreeMap<String, Agg>| m.keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(&got), keys(want_rows), "{table}: keys");
        for (key, w) in want_rows {
            let g = &got[key];
            assert_eq!(
                (g.count, g.min, g.max, g.first, g.last),
                (w.count, w.min, w.max, w.first, w.last),
                "{table} {key}"
            );
            assert!(
                close(g.sum, w.sum),
                "{table} {key}: sum {} vs {}",
                g.sum,
                w.sum
            );
            assert!(
                close(g.sum_squares, w.sum_squares),
                "{table} {key}: sum_squares {} vs {}",
                g.sum_squares,
                w.sum_squares
            );
        }
    }
}

fn parquet_hashes(warehouse: &Path) -> BTreeMap<String, String> {
    file_hashes(warehouse)
        .into_iter()
        .filter(|(path, _)| path.ends_with(".parquet"))
        .collect()
}

#[test]
fn the_warehouse_equals_a_batch_computation_and_reruns_change_nothing() {
    let fixture = Fixture::start();
    let warehouse = fixture.data.dir.path().join("warehouse");
    let report = fixture.run_etl(&warehouse, &[]);
    assert_eq!(report["days_written"], 2, "{report}");
    assert!(
        report["windows_read"].as_u64().unwrap() > 0,
        "the moved device's hour is read window by window: {report}"
    );
    let want = batch(&fixture.out, &fixture.registry_lines(&[]));
    assert_eq!(want.len(), 8);
    // The dataset's device that moved at 23:50:12 has data at both sites that hour.
    assert!(
        want["site_1h"].keys().any(|k| k.contains("|site-moved|")),
        "{:?}",
        want["site_1h"].keys()
    );
    assert_warehouse_equals_batch(&warehouse, &want);

    // pyarrow reads every table as a Hive dataset, each file with its schema version.
    for (table, rows) in &want {
        let (count, versions) = pyarrow_table(&warehouse.join(table));
        assert_eq!(count, rows.len() as u64, "{table}");
        assert_eq!(versions, vec!["1"; 2], "{table}");
    }
    let dimension = duckdb(&format!(
        "SELECT device_id, epoch_ms(valid_from) AS valid_from, epoch_ms(valid_to) AS valid_to, site FROM '{}/device_dim/*.parquet' WHERE device_id = 'dev-000001' ORDER BY valid_from",
        warehouse.display()
    ));
    assert_eq!(dimension.len(), 2, "{dimension:?}");
    assert_eq!(dimension[1]["site"], "site-moved");
    assert_eq!(dimension[0]["valid_to"], dimension[1]["valid_from"]);
    assert!(dimension[1]["valid_to"].is_null());

    // Again: nothing changed, nothing written. Forced: every day rewritten, the same bytes.
    let hashes = file_hashes(&warehouse);
    let again = fixture.run_etl(&warehouse, &[]);
    assert_eq!(
        (
            again["days_unchanged"].as_u64(),
            again["days_written"].as_u64()
        ),
        (Some(2), Some(0)),
        "{again}"
    );
    assert_eq!(file_hashes(&warehouse), hashes);
    let forced = fixture.run_etl(&warehouse, &["--force", "-w", "2"]);
    assert_eq!(forced["days_written"], 2, "{forced}");
    assert_eq!(
        file_hashes(&warehouse),
        hashes,
        "a forced rerun writes the same bytes"
    );

    // A run killed between writing a file and renaming it leaves the old files; run again,
    // it converges to what a clean run writes.
    let killed = fixture.data.dir.path().join("killed");
    let status = fixture
        .etl(&killed, &[])
        .env("IOTPIPE_ETL_FAILPOINT", "before_rename:4")
        .status()
        .unwrap();
    assert!(!status.success());
    let left = file_hashes(&killed);
    assert!(
        left.keys().any(|p| p.ends_with(".tmp")),
        "the killed run left its file beside: {left:?}"
    );
    assert_eq!(
        left.keys().filter(|p| p.ends_with(".parquet")).count(),
        3,
        "{left:?}"
    );
    fixture.run_etl(&killed, &[]);
    assert_eq!(
        file_hashes(&killed),
        hashes,
        "no temporary file is left, every file as a clean run's"
    );

    // Killed at random moments, five times, then run to the end: the same files.
    let random = fixture.data.dir.path().join("random");
    for (i, delay_ms) in common::split_mix(19).take(5).map(|r| r % 400).enumerate() {
        let mut child = fixture.etl(&random, &["-w", "2"]).spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms + 20 * i as u64));
        let _ = child.kill();
        let _ = child.wait();
    }
    fixture.run_etl(&random, &[]);
    assert_eq!(parquet_hashes(&random), parquet_hashes(&warehouse));

    // As a service: a pass every second until SIGTERM, which ends it cleanly with its report.
    let report = fixture.data.dir.path().join("service.json");
    let mut service = fixture
        .etl(&warehouse, &["--every", "1s", "--report"])
        .arg(&report)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(3_500));
    assert!(common::send_signal(service.id(), "TERM"));
    assert!(service.wait().unwrap().success());
    let report: Value = serde_json::from_slice(&std::fs::read(report).unwrap()).unwrap();
    assert!(report["passes"].as_u64().unwrap() >= 2, "{report}");
    assert_eq!(report["days_written"], 0, "{report}");
    assert_eq!(file_hashes(&warehouse), hashes);
}

#[test]
fn late_data_rewrites_its_day_and_a_past_correction_only_the_hours_it_covers() {
    let fixture = Fixture::start();
    let warehouse = fixture.data.dir.path().join("warehouse");
    fixture.run_etl(&warehouse, &[]);
    let before = parquet_hashes(&warehouse);
    let changed =
        |before: &BTreeMap<String, String>, after: &BTreeMap<String, String>| -> Vec<String> {
            after
                .iter()
                .filter(|(path, hash)| before.get(*path) != Some(*hash))
                .map(|(path, _)| path.clone())
                .collect()
        };

    // One window reaches the store late: a device's 22:40 window, before the data began.
    let late_ms = START_MS + 22 * HOUR_MS + 40 * 60_000;
    let first: Value =
        serde_json::from_str(&common::sorted_lines(&fixture.out.join("aggregates.jsonl"))[0])
            .unwrap();
    let (device, metric) = (
        first["device_id"].as_str().unwrap(),
        first["metric"].as_str().unwrap(),
    );
    let line = format!(
        "iotpipe_aggregate,device_id={device},metric={metric},site=late count=2i,min=-1000,max=-999,mean=-999.5,sum=-1999,sum_squares=1998001,first_ts_ms={}i,last_ts_ms={}i,threshold_breaches=0i {late_ms}",
        late_ms + 1_000,
        late_ms + 2_000
    );
    let place =
        places_at(&fixture.registry_lines(&[]), device, late_ms).map(|p| key_part(p.as_deref()));
    let key = format!(
        "{}|{device}|{metric}|{}|{}|{}",
        late_ms - late_ms % HOUR_MS,
        place[0],
        place[1],
        place[2]
    );
    let hour_before = read_table(&warehouse, "device_1h")[&key];
    let status = Command::new("curl")
        .args([
            "-sf",
            "-XPOST",
            &format!("{}/write?db=iotpipe&precision=ms", fixture.influx.url()),
            "--data-binary",
            &line,
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let report = fixture.run_etl(&warehouse, &[]);
    assert_eq!(
        (
            report["days_written"].as_u64(),
            report["days_unchanged"].as_u64()
        ),
        (Some(1), Some(1)),
        "{report}"
    );
    let after_late = parquet_hashes(&warehouse);
    let rewritten = changed(&before, &after_late);
    assert_eq!(rewritten.len(), 8, "{rewritten:?}");
    assert!(
        rewritten.iter().all(|p| p.contains("date=2024-01-01/")),
        "{rewritten:?}"
    );
    let hour_after = read_table(&warehouse, "device_1h")[&key];
    assert_eq!(hour_after.count, hour_before.count + 2);
    assert!(close(hour_after.sum, hour_before.sum - 1999.0));
    assert_eq!(
        (hour_after.min, hour_after.first),
        (-1000.0, late_ms + 1_000)
    );

    // A correction in the past: dev-000007 was at another site from 23:20 to 23:40 on
    // 2024-01-01. The site rollups change in hour 23 only; the next day is untouched.
    let lines = fixture.registry_lines(&[]);
    let original = lines
        .iter()
        .find(|l| l["device_id"] == "dev-000007")
        .unwrap()
        .clone();
    let mut moved = original.clone();
    moved["site"] = Value::from("site-corrected");
    moved["effective_ms"] = Value::from(START_MS + 23 * HOUR_MS + 20 * 60_000);
    let mut back = original.clone();
    back["effective_ms"] = Value::from(START_MS + 23 * HOUR_MS + 40 * 60_000);
    let correction = fixture.data.dir.path().join("correction.jsonl");
    std::fs::write(&correction, format!("{moved}\n{back}\n")).unwrap();
    common::succeed(
        iotpipe()
            .args(["registry", "import"])
            .arg(&correction)
            .args(["--database-url", &fixture.store_url]),
    );
    let sites_before = read_table(&warehouse, "site_1h");
    let report = fixture.run_etl(&warehouse, &[]);
    assert_eq!(report["days_written"], 1, "{report}");
    let after_correction = parquet_hashes(&warehouse);
    let rewritten = changed(&after_late, &after_correction);
    assert_only_day_and_dimension(&rewritten, "2024-01-01");
    let sites_after = read_table(&warehouse, "site_1h");
    let hour_23 = (START_MS + 23 * HOUR_MS).to_string();
    let differing: Vec<&String> = sites_after
        .keys()
        .chain(sites_before.keys())
        .filter(|k| match (sites_before.get(*k), sites_after.get(*k)) {
            (Some(a), Some(b)) => (a.count, a.sum) != (b.count, b.sum),
            _ => true,
        })
        .collect();
    assert!(!differing.is_empty());
    assert!(
        differing
            .iter()
            .all(|k| k.starts_with(&format!("{hour_23}|"))),
        "{differing:?}"
    );
    assert!(
        differing.iter().any(|k| k.contains("|site-corrected|")),
        "{differing:?}"
    );
    // And the corrected warehouse is the batch computation over the corrected history (but
    // for the late window's hour, which the batch's file lacks).
    let want = batch(&fixture.out, &fixture.registry_lines(&[moved, back]));
    let late_hour = format!("{}|", late_ms - late_ms % HOUR_MS);
    for (key, w) in want["site_1h"]
        .iter()
        .filter(|(k, _)| !k.starts_with(&late_hour))
    {
        let g = &sites_after[key];
        assert_eq!((g.count, g.min, g.max), (w.count, w.min, w.max), "{key}");
        assert!(close(g.sum, w.sum), "{key}");
    }

    // A new level of the hierarchy: dev-000008 sits in a zone of its building from 2024-01-02.
    // The second day's device tables gain a nullable `zone` column; the first day's files
    // stay as they were, and a reader takes both together.
    let day_2 = (START_MS + DAY_MS) as i64;
    add_zone(&fixture.store_url, "dev-000008", day_2);
    let report = fixture.run_etl(&warehouse, &[]);
    assert_eq!(report["days_written"], 1, "{report}");
    let after_zone = parquet_hashes(&warehouse);
    let rewritten = changed(&after_correction, &after_zone);
    assert_only_day_and_dimension(&rewritten, "2024-01-02");
    assert!(!rewritten.iter().any(|p| p.contains("date=2024-01-01/")));
    let zones = duckdb(&format!(
        "SELECT CAST(date AS VARCHAR) AS date, device_id, zone, count(*) AS n FROM read_parquet('{}/device_1h/*/*.parquet', hive_partitioning = true, union_by_name = true) GROUP BY ALL ORDER BY ALL",
        warehouse.display()
    ));
    for row in &zones {
        let in_zone = row["date"] == "2024-01-02" && row["device_id"] == "dev-000008";
        assert_eq!(row["zone"].as_str(), in_zone.then_some("Zone A"), "{row:?}");
    }
    assert!(zones.iter().any(|r| r["zone"] == "Zone A"), "{zones:?}");
    let dimension = duckdb(&format!(
        "SELECT zone, site FROM '{}/device_dim/*.parquet' WHERE device_id = 'dev-000008' ORDER BY valid_from",
        warehouse.display()
    ));
    assert_eq!(dimension.len(), 2, "{dimension:?}");
    assert!(dimension[0]["zone"].is_null());
    assert_eq!(dimension[1]["zone"], "Zone A");
    assert_eq!(dimension[0]["site"], dimension[1]["site"]);
}

/// Every file in `rewritten` is of `date`'s partitions or the device dimension.
fn assert_only_day_and_dimension(rewritten: &[String], date: &str) {
    let partition = format!("date={date}/");
    assert!(
        rewritten
            .iter()
            .all(|p| p.contains(&partition) || p.starts_with("device_dim/")),
        "{rewritten:?}"
    );
}

/// Puts a zone inside `device_id`'s building and the device in it, from `effective_ms`.
fn add_zone(store_url: &str, device_id: &str, effective_ms: i64) {
    use iotpipe::io::connect::store::entities::Kind;
    use iotpipe::io::connect::store::write::Precondition;
    use iotpipe::io::connect::store::{Store, StoreConfig};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = Store::open(&StoreConfig::url(store_url), |_| None)
            .await
            .unwrap();
        let device = store
            .get(Kind::Device, device_id, None)
            .await
            .unwrap()
            .unwrap();
        let building = device.body["place_id"].as_str().unwrap().to_owned();
        let zone = serde_json::json!({"kind": "zone", "parent_id": building, "name": "Zone A"});
        store
            .put(
                Kind::Place,
                "zone-a",
                &zone,
                effective_ms,
                Precondition::None,
            )
            .await
            .unwrap();
        let mut body = device.body.clone();
        body["place_id"] = Value::from("zone-a");
        store
            .put(
                Kind::Device,
                device_id,
                &body,
                effective_ms,
                Precondition::None,
            )
            .await
            .unwrap();
    });
}

#[test]
fn bad_configurations_are_named_with_their_fix() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("etl.toml");
    let run = |text: &str, extra: &[&str]| -> String {
        std::fs::write(&config, text).unwrap();
        let output = iotpipe()
            .args(["etl", "--config"])
            .arg(&config)
            .args(extra)
            .output()
            .unwrap();
        assert!(!output.status.success());
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let base = "warehouse = \"w\"\n[influx]\nurl = \"http://127.0.0.1:1\"\n";
    assert!(run(base, &[]).contains("store: neither [store] nor registry is set"));
    let with_registry = format!("registry = \"r.jsonl\"\n{base}");
    assert!(run(&with_registry, &["--to", "2024-01-02"]).contains("--to: needs --from"));
    assert!(
        run(&with_registry, &["--every", "often"]).contains("--every: \"often\" is not a period")
    );
    assert!(
        run(&format!("chunk_hours = 7\n{with_registry}"), &[])
            .contains("chunk_hours: 7 does not divide a day")
    );
    assert!(run(&format!("horizon = 1\n{with_registry}"), &[]).contains("unknown field `horizon`"));
}
