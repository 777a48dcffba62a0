//! `iotpipe run`'s configuration file, with environment overrides.
//!
//! One TOML file; every section but `[kafka]` may be left out. Environment variables override
//! single fields, for deployments that template the environment rather than files:
//!
//! | variable | field |
//! |---|---|
//! | `IOTPIPE_KAFKA_BROKERS` | `kafka.brokers` |
//! | `IOTPIPE_KAFKA_GROUP_ID` | `kafka.group_id` |
//! | `IOTPIPE_CLUSTER_WORKERS` | `cluster.workers` |
//! | `IOTPIPE_CLUSTER_PROCESSES` | `cluster.processes` |
//! | `IOTPIPE_CLUSTER_PROCESS` | `cluster.process` |
//! | `IOTPIPE_CLUSTER_HOSTFILE` | `cluster.hostfile` |
//! | `IOTPIPE_METRICS_LISTEN` | `metrics.listen` |
//! | `IOTPIPE_INFLUX_URL` | `influx.url` |
//! | `IOTPIPE_INFLUX_PASSWORD` | `influx.password` |
//! | `IOTPIPE_INFLUX_TOKEN` | `influx.token` |
//! | `IOTPIPE_STORE_URL` | `store.url` |

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::dataflow::PipelineConfig;
use crate::dataflow::schema::SchemaSet;
use crate::io::connect::influx::config::{InfluxConfig, InfluxConfigError};
use crate::io::connect::kafka::KafkaConfig;
use crate::io::connect::store::StoreConfig;
use crate::io::sources::kafka::telemetry::SourceConfig;
use crate::io::support::cluster::ClusterConfig;
use crate::io::support::config::{
    ConfigError, EnvOverride, integer, load_toml_with_overrides, parse_toml_with_overrides, text,
};

/// The whole configuration of `iotpipe run`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Brokers, topics and client properties.
    pub kafka: KafkaConfig,
    /// Reading, idle partitions and commits.
    #[serde(default)]
    pub source: SourceConfig,
    /// The timely cluster (the command line's `-w/-n/-p/-h` override it).
    #[serde(default)]
    pub cluster: ClusterConfig,
    /// Windows, event time, anomaly scoring and alert rules (`[pipeline.window]`,
    /// `[pipeline.event_time]`, `[pipeline.anomaly]`, `[pipeline.alerts]`).
    #[serde(default)]
    pub pipeline: PipelineConfig,
    /// A directory of schema files (default: the schemas built into iotpipe).
    #[serde(default)]
    pub schemas: Option<PathBuf>,
    /// The metrics endpoint.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// The built-in dashboard (served by process 0).
    #[serde(default)]
    pub dashboard: DashboardConfig,
    /// How long a stopping process waits for its records to be acknowledged (ms).
    #[serde(default = "default_drain_timeout_ms")]
    pub drain_timeout_ms: u64,
    /// The InfluxDB readings, aggregates, rollups, anomalies and alert events also go to
    /// (none: not written).
    #[serde(default)]
    pub influx: Option<InfluxConfig>,
    /// The metadata store whose change log the registry follows (none: the registry is the
    /// `kafka.topics.registry` changelog).
    #[serde(default)]
    pub store: Option<StoreConfig>,
}

fn default_drain_timeout_ms() -> u64 {
    10_000
}

/// Where metrics are served.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `host:port` of the Prometheus endpoint (`/metrics`); none: not served.
    pub listen: Option<SocketAddr>,
}

/// Where the dashboard is served.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DashboardConfig {
    /// `host:port` of the dashboard, served by process 0; none: not served. Set it in the file
    /// every process reads (not per process): all of them build the dataflow that feeds it.
    pub listen: Option<SocketAddr>,
    /// The environment variable holding the token the dashboard's acknowledge and silence
    /// actions need (`Authorization: Bearer`, with a `[store]`); none: the dashboard only
    /// shows.
    #[serde(default)]
    pub action_token_env: Option<String>,
}

/// A configuration that cannot be used; the message names the field and the fix.
#[derive(Debug, thiserror::Error)]
pub enum RunConfigError {
    /// The file could not be read or parsed, or an environment override does not fit.
    #[error(transparent)]
    File(#[from] ConfigError),
    /// A field of `[influx]` cannot work.
    #[error(transparent)]
    Influx(#[from] InfluxConfigError),
    /// A field's value cannot work.
    #[error("{field}: {message}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong and how to fix it.
        message: String,
    },
}

const OVERRIDES: [EnvOverride; 11] = [
    text("IOTPIPE_KAFKA_BROKERS", &["kafka", "brokers"]),
    text("IOTPIPE_KAFKA_GROUP_ID", &["kafka", "group_id"]),
    integer("IOTPIPE_CLUSTER_WORKERS", &["cluster", "workers"]),
    integer("IOTPIPE_CLUSTER_PROCESSES", &["cluster", "processes"]),
    integer("IOTPIPE_CLUSTER_PROCESS", &["cluster", "process"]),
    text("IOTPIPE_CLUSTER_HOSTFILE", &["cluster", "hostfile"]),
    text("IOTPIPE_METRICS_LISTEN", &["metrics", "listen"]),
    text("IOTPIPE_INFLUX_URL", &["influx", "url"]),
    text("IOTPIPE_INFLUX_PASSWORD", &["influx", "password"]),
    text("IOTPIPE_INFLUX_TOKEN", &["influx", "token"]),
    text("IOTPIPE_STORE_URL", &["store", "url"]),
];

impl RunConfig {
    /// Reads `path`, applies the environment overrides `env` finds, and validates.
    pub fn load(path: &Path, env: impl Fn(&str) -> Option<String>) -> Result<Self, RunConfigError> {
        let config: RunConfig = load_toml_with_overrides(path, &OVERRIDES, env)?;
        config.validate()?;
        Ok(config)
    }

    /// Parses TOML text (see [`load`](Self::load)).
    pub fn parse(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<Self, RunConfigError> {
        let config: RunConfig = parse_toml_with_overrides(Path::new(""), text, &OVERRIDES, env)?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), RunConfigError> {
        let invalid = |field, message: String| Err(RunConfigError::Invalid { field, message });
        if self.kafka.brokers.trim().is_empty() {
            return invalid(
                "kafka.brokers",
                "is empty: set host:port of a broker (or IOTPIPE_KAFKA_BROKERS)".into(),
            );
        }
        if self.pipeline.window.length_ms == 0 {
            return invalid("pipeline.window.length_ms", "must be at least 1".into());
        }
        let event_time = self.pipeline.event_time;
        if let Err(e) = event_time.validate() {
            return invalid(
                match e.field {
                    "clock_quorum" => "pipeline.event_time.clock_quorum",
                    _ => "pipeline.event_time",
                },
                e.problem,
            );
        }
        if self.pipeline.ingest.max_message_bytes == 0 {
            return invalid(
                "pipeline.ingest.max_message_bytes",
                "must be at least 1 (default 65536)".into(),
            );
        }
        let needed = self
            .pipeline
            .window
            .length_ms
            .saturating_add(event_time.allowed_lateness_ms)
            .saturating_add(event_time.max_clock_skew_ms);
        if self.source.rewind_ms < needed {
            return invalid(
                "source.rewind_ms",
                format!(
                    "is {} but must be at least window + allowed lateness + clock skew ({needed}), \
                     or a restart rebuilds windows from part of their readings",
                    self.source.rewind_ms
                ),
            );
        }
        if self.source.max_batch_messages == 0 {
            return invalid("source.max_batch_messages", "must be at least 1".into());
        }
        if let Some(influx) = &self.influx {
            influx.validate()?;
        }
        if let Some(store) = &self.store {
            if store.url.trim().is_empty() {
                return invalid(
                    "store.url",
                    "is empty: set postgresql://USER@HOST:PORT/DBNAME (or IOTPIPE_STORE_URL)"
                        .into(),
                );
            }
            if store.max_connections == 0 {
                return invalid(
                    "store.max_connections",
                    "must be at least 1 (default 4)".into(),
                );
            }
        }
        Ok(())
    }

    /// The schemas to decode with.
    pub fn schemas(&self) -> Result<SchemaSet, RunConfigError> {
        match &self.schemas {
            None => Ok(SchemaSet::embedded()),
            Some(dir) => crate::io::support::schema_files::load_schema_dir(dir).map_err(|e| {
                RunConfigError::Invalid {
                    field: "schemas",
                    message: e.to_string(),
                }
            }),
        }
    }

    /// Resolves the alert rules' metric names against `schemas`.
    pub fn resolve(&mut self, schemas: &SchemaSet) -> Result<(), RunConfigError> {
        self.pipeline
            .alerts
            .resolve(schemas.catalog())
            .map_err(|e| RunConfigError::Invalid {
                field: "pipeline.alerts",
                message: e.to_string(),
            })
    }
}

/// The config loader on text no one wrote: never a panic.
#[cfg(test)]
mod poison {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn arbitrary_text_is_a_config_or_an_error(text in "\\PC{0,400}") {
            let _ = RunConfig::parse(&text, |_| None);
        }

        #[test]
        fn any_number_in_any_field_is_a_config_or_an_error(
            field in prop::sample::select(vec![
                "[source]\nrewind_ms", "[source]\nidle_timeout_ms", "[source]\nmax_batch_messages",
                "[source]\nmax_lead_ms",
                "[pipeline.window]\nlength_ms", "[pipeline.window]\nclose_spread_ms",
                "[pipeline.event_time]\nallowed_lateness_ms = 1\nmax_clock_skew_ms",
                "[pipeline.event_time]\nallowed_lateness_ms = 1\nmax_clock_skew_ms = 1\nclock_quorum",
                "[pipeline.ingest]\nmax_message_bytes", "[cluster]\nworkers", "drain_timeout_ms",
            ]),
            value in prop_oneof![
                any::<i64>().prop_map(|v| v.to_string()),
                any::<f64>().prop_map(|v| format!("{v:?}")),
                Just("nan".to_owned()), Just("inf".to_owned()), Just("-inf".to_owned()),
            ],
        ) {
            let text = format!("[kafka]\nbrokers = \"127.0.0.1:9092\"\n{field} = {value}\n");
            let _ = RunConfig::parse(&text, |_| None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "[kafka]\nbrokers = \"127.0.0.1:9092\"\n";

    #[test]
    fn a_minimal_file_takes_defaults_and_the_environment_overrides_fields() {
        let config = RunConfig::parse(MINIMAL, |_| None).unwrap();
        assert_eq!(config.kafka.topics.telemetry, "iotpipe.telemetry");
        assert_eq!(config.cluster.workers, 1);
        let env = |name: &str| match name {
            "IOTPIPE_KAFKA_BROKERS" => Some("kafka-0:9092".to_owned()),
            "IOTPIPE_CLUSTER_PROCESS" => Some("3".to_owned()),
            _ => None,
        };
        let config = RunConfig::parse(
            &format!("{MINIMAL}[cluster]\nprocesses = 4\nhostfile = \"h\"\n"),
            env,
        )
        .unwrap();
        assert_eq!(config.kafka.brokers, "kafka-0:9092");
        assert_eq!((config.cluster.process, config.cluster.processes), (3, 4));
    }

    #[test]
    fn clock_and_size_settings_that_cannot_work_name_their_field() {
        let error = |extra: &str| {
            RunConfig::parse(&format!("{MINIMAL}{extra}"), |_| None)
                .unwrap_err()
                .to_string()
        };
        let quorum = error(
            "[pipeline.event_time]\nallowed_lateness_ms = 30000\nmax_clock_skew_ms = 600000\nclock_quorum = 0\n",
        );
        assert!(
            quorum.contains("pipeline.event_time.clock_quorum"),
            "{quorum}"
        );
        let size = error("[pipeline.ingest]\nmax_message_bytes = 0\n");
        assert!(size.contains("pipeline.ingest.max_message_bytes"), "{size}");
        // Sums that would overflow are an error, not a panic (TOML integers stop at i64).
        let huge = error(&format!(
            "[pipeline.event_time]\nallowed_lateness_ms = {0}\nmax_clock_skew_ms = {0}\n",
            i64::MAX
        ));
        assert!(huge.contains("source.rewind_ms"), "{huge}");
    }

    #[test]
    fn the_documented_example_parses_to_the_defaults() {
        let text = include_str!("../../../datasets/iotpipe.example.toml");
        let example = RunConfig::parse(text, |_| None).unwrap();
        let minimal = RunConfig::parse(MINIMAL, |_| None).unwrap();
        assert_eq!(example.source, minimal.source);
        assert_eq!(example.kafka.topics, minimal.kafka.topics);
        assert_eq!(example.cluster, minimal.cluster);
        assert_eq!(example.pipeline.event_time, minimal.pipeline.event_time);
        assert_eq!(example.pipeline.window, minimal.pipeline.window);
        assert_eq!(example.influx, None);
        // The commented [influx] section documents the defaults.
        let influx: String = text
            .lines()
            .skip_while(|l| *l != "# [influx]")
            .map(|l| l.strip_prefix("# ").unwrap_or(l))
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect();
        let example = RunConfig::parse(&format!("{MINIMAL}{influx}"), |_| None).unwrap();
        let url = "http://127.0.0.1:8086";
        assert_eq!(example.influx, Some(InfluxConfig::for_url(url)));
    }

    #[test]
    fn errors_name_the_field() {
        let unknown = RunConfig::parse(&format!("{MINIMAL}[source]\nidle_timeout = 5\n"), |_| None)
            .unwrap_err()
            .to_string();
        assert!(unknown.contains("idle_timeout"), "{unknown}");
        let short = RunConfig::parse(&format!("{MINIMAL}[source]\nrewind_ms = 1000\n"), |_| None)
            .unwrap_err()
            .to_string();
        assert!(short.starts_with("source.rewind_ms"), "{short}");
        let env = RunConfig::parse(MINIMAL, |n| {
            (n == "IOTPIPE_CLUSTER_WORKERS").then(|| "two".to_owned())
        })
        .unwrap_err()
        .to_string();
        assert!(env.starts_with("IOTPIPE_CLUSTER_WORKERS"), "{env}");
        let missing = RunConfig::parse("", |_| None).unwrap_err().to_string();
        assert!(missing.contains("kafka"), "{missing}");
    }
}
