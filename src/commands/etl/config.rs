//! `iotpipe etl`'s configuration file and the command line's run options.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::dataflow::warehouse::rollup::parse_date;
use crate::io::connect::influx::config::{InfluxConfig, InfluxConfigError};
use crate::io::connect::store::StoreConfig;

/// The whole configuration of `iotpipe etl`.
///
/// ```toml
/// warehouse = "/var/lib/iotpipe/warehouse"
/// horizon_days = 3
///
/// [influx]
/// url = "http://127.0.0.1:8086"
///
/// [store]
/// url = "postgresql://iotpipe@127.0.0.1:5432/iotpipe"
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtlConfig {
    /// The warehouse folder: one folder per table, Hive partitions `date=YYYY-MM-DD` in each.
    pub warehouse: PathBuf,
    /// The InfluxDB `run` writes its windows to (`[influx]` as `run`'s; only reads are made).
    pub influx: InfluxConfig,
    /// The metadata store whose history says where each device was when (or `registry`).
    #[serde(default)]
    pub store: Option<StoreConfig>,
    /// A JSON Lines registry changelog to take the history from instead of a store.
    #[serde(default)]
    pub registry: Option<PathBuf>,
    /// A directory of schema files whose metric catalog the metadata is read with (default:
    /// the built-in schemas).
    #[serde(default)]
    pub schemas: Option<PathBuf>,
    /// Days before today that every pass fingerprints again, to find data that reached the
    /// store late (after an outage, a gateway's backlog); older days are looked at only by a
    /// `--from/--to` backfill. Keep it shorter than the store's retention.
    #[serde(default = "default_horizon_days")]
    pub horizon_days: u32,
    /// Hours read from the store per query (1, 2, 3, 4, 6, 8, 12 or 24): memory is bounded by
    /// a chunk's device-hours.
    #[serde(default = "default_chunk_hours")]
    pub chunk_hours: u32,
    /// Days rolled up at once (the command line's `-w` overrides it).
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// Time limit of one query, ms: a chunk's roll-up scans every window of `chunk_hours`, far
    /// more than a write (`influx.timeout_ms` is the writers').
    #[serde(default = "default_query_timeout_ms")]
    pub query_timeout_ms: u64,
}

fn default_query_timeout_ms() -> u64 {
    600_000
}

fn default_horizon_days() -> u32 {
    3
}
fn default_chunk_hours() -> u32 {
    1
}
fn default_workers() -> usize {
    1
}

/// How one invocation runs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EtlRun {
    /// First day, `YYYY-MM-DD` (none: the horizon).
    pub from: Option<String>,
    /// Day after the last, `YYYY-MM-DD` (none: through today).
    pub to: Option<String>,
    /// Run a pass every this many ms until stopped (none: one pass).
    pub every_ms: Option<u64>,
    /// Roll every day up again, fingerprints or not.
    pub force: bool,
    /// Draw a progress bar on standard error (when it is a terminal).
    pub progress: bool,
}

/// A configuration or run option that cannot work; the message names it and the fix.
#[derive(Debug, thiserror::Error)]
pub enum EtlConfigError {
    /// The file could not be read or parsed.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// `[influx]` cannot work.
    #[error(transparent)]
    Influx(#[from] InfluxConfigError),
    /// A field or option cannot work.
    #[error("{field}: {message}")]
    Invalid {
        /// The field or option.
        field: &'static str,
        /// What is wrong and how to fix it.
        message: String,
    },
}

fn invalid(field: &'static str, message: impl Into<String>) -> EtlConfigError {
    EtlConfigError::Invalid {
        field,
        message: message.into(),
    }
}

impl EtlConfig {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Self, EtlConfigError> {
        let file = |message: String| EtlConfigError::File {
            path: path.to_owned(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| file(e.to_string()))?;
        toml::from_str(&text).map_err(|e| file(e.to_string()))
    }

    /// Checks the configuration with `run`'s options; the days `--from` and `--to` name.
    pub fn validate(&self, run: &EtlRun) -> Result<(Option<u64>, Option<u64>), EtlConfigError> {
        if self.warehouse.as_os_str().is_empty() {
            return Err(invalid("warehouse", "is empty: name the warehouse folder"));
        }
        match (&self.store, &self.registry) {
            (None, None) => {
                return Err(invalid(
                    "store",
                    "neither [store] nor registry is set: the warehouse needs the device history (set [store] url, or registry = FILE)",
                ));
            }
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "registry",
                    "set either [store] or registry, not both",
                ));
            }
            _ => {}
        }
        if self.chunk_hours == 0 || 24 % self.chunk_hours != 0 {
            return Err(invalid(
                "chunk_hours",
                format!(
                    "{} does not divide a day: use 1, 2, 3, 4, 6, 8, 12 or 24",
                    self.chunk_hours
                ),
            ));
        }
        if self.query_timeout_ms == 0 {
            return Err(invalid(
                "query_timeout_ms",
                "is 0: use the longest a query may take, in ms",
            ));
        }
        if self.workers == 0 {
            return Err(invalid("workers", "is 0: use 1 or more"));
        }
        if run.every_ms == Some(0) {
            return Err(invalid("--every", "is 0: use a period such as 1h"));
        }
        let day =
            |field: &'static str, text: &Option<String>| -> Result<Option<u64>, EtlConfigError> {
                text.as_deref()
                    .map(|t| {
                        parse_date(t).ok_or_else(|| {
                            invalid(field, format!("{t:?} is not a day: use YYYY-MM-DD"))
                        })
                    })
                    .transpose()
            };
        let (from, to) = (day("--from", &run.from)?, day("--to", &run.to)?);
        if from.is_none() && to.is_some() {
            return Err(invalid(
                "--to",
                "needs --from (the first day of the backfill)",
            ));
        }
        if let (Some(from), Some(to)) = (from, to)
            && to <= from
        {
            return Err(invalid(
                "--to",
                "is not after --from: --to is the day after the last",
            ));
        }
        Ok((from, to))
    }
}

/// A period such as `30s`, `15m`, `1h` or `1d`, in ms.
pub fn parse_period(text: &str) -> Option<u64> {
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = number.parse().ok()?;
    let unit_ms = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    n.checked_mul(unit_ms).filter(|ms| *ms > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Result<EtlConfig, toml::de::Error> {
        toml::from_str(&format!(
            "warehouse = \"/tmp/w\"\nregistry = \"r.jsonl\"\n{extra}\n[influx]\nurl = \"http://127.0.0.1:8086\"\n"
        ))
    }

    #[test]
    fn what_cannot_work_is_named_with_its_fix() {
        let ok = config("").unwrap();
        assert_eq!(ok.validate(&EtlRun::default()).unwrap(), (None, None));
        let message = |c: &EtlConfig, run: &EtlRun| c.validate(run).unwrap_err().to_string();
        assert!(
            message(&config("chunk_hours = 5").unwrap(), &EtlRun::default())
                .starts_with("chunk_hours: 5 does not divide")
        );
        let mut neither = ok.clone();
        neither.registry = None;
        assert!(message(&neither, &EtlRun::default()).starts_with("store: neither"));
        let run = |from: Option<&str>, to: Option<&str>| EtlRun {
            from: from.map(str::to_owned),
            to: to.map(str::to_owned),
            ..EtlRun::default()
        };
        assert!(
            message(&ok, &run(Some("2024-02-30"), None))
                .starts_with("--from: \"2024-02-30\" is not a day")
        );
        assert!(message(&ok, &run(None, Some("2024-01-02"))).starts_with("--to: needs --from"));
        assert!(
            message(&ok, &run(Some("2024-01-02"), Some("2024-01-02")))
                .starts_with("--to: is not after")
        );
        assert_eq!(
            ok.validate(&run(Some("2024-01-01"), Some("2024-01-03")))
                .unwrap(),
            (Some(1_704_067_200_000), Some(1_704_240_000_000))
        );
        let unknown = config("horizon = 3").unwrap_err().to_string();
        assert!(unknown.contains("unknown field `horizon`"), "{unknown}");
    }

    #[test]
    fn periods_have_units() {
        assert_eq!(parse_period("1h"), Some(3_600_000));
        assert_eq!(parse_period("15m"), Some(900_000));
        assert_eq!(parse_period("30s"), Some(30_000));
        assert_eq!(parse_period("1d"), Some(86_400_000));
        for bad in ["h", "1", "0h", "1w", "-1h", ""] {
            assert_eq!(parse_period(bad), None, "{bad}");
        }
    }
}
