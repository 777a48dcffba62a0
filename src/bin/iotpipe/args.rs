//! Command-line arguments.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{ArgAction, Args, Parser, Subcommand};

use iotpipe::dataflow::alert::AlertConfig;
use iotpipe::dataflow::anomaly::AnomalyConfig;
use iotpipe::dataflow::{EventTimeConfig, PipelineConfig, WindowConfig};
use iotpipe::io::connect::influx::config::InfluxConfig;
use iotpipe::io::support::cluster::ClusterConfig;

/// A flag set on SIGINT, SIGTERM or SIGHUP (ctrlc's `termination` feature): every command
/// stops on it the way it documents (finishing what it read, draining what it sent).
pub fn stop_on_signal() -> Result<Arc<AtomicBool>, String> {
    let stop = Arc::new(AtomicBool::new(false));
    let handler_stop = Arc::clone(&stop);
    ctrlc::set_handler(move || handler_stop.store(true, Ordering::SeqCst))
        .map_err(|e| format!("signal handler: {e}"))?;
    Ok(stop)
}

/// A setup error of `replay` or `demo` in the words of the flag that fed it.
pub fn setup_error(
    error: iotpipe::commands::setup::SetupError,
    pipeline: &PipelineArgs,
    notify: &NotifyArgs,
) -> String {
    use iotpipe::commands::setup::SetupError;
    match (error, &notify.notify) {
        (SetupError::Schemas(e), _) => format!("--schemas: {e}"),
        (SetupError::Alerts(e), _) => match &pipeline.alert_rules {
            Some(path) => format!("--alert-rules {}: {e}", path.display()),
            // The built-in rules name only built-in metrics: --schemas dropped one.
            None => format!("--schemas: the built-in alert rules need {e}"),
        },
        (SetupError::Notify(e), Some(path)) => format!("--notify {}: {e}", path.display()),
        (other, _) => other.to_string(),
    }
}

/// What each notification channel did, a line each.
pub fn print_channels(channels: &[iotpipe::io::sinks::notify::ChannelReport]) {
    for report in channels {
        println!(
            "notify {:<11} delivered {} (already {}), rejected {}, retries {}, undelivered {}",
            report.name,
            report.delivered,
            report.already_delivered,
            report.rejected,
            report.retries,
            report.undelivered
        );
    }
}

/// iotpipe: IoT telemetry on timely and differential dataflow.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the whole dataflow over a recorded file as fast as it goes.
    #[command(disable_help_flag = true)]
    Replay(ReplayArgs),
    /// Run a simulated fleet through the dataflow in real time, with a live view.
    #[command(disable_help_flag = true)]
    Demo(DemoArgs),
    /// Run the pipeline as a service: Kafka in, Kafka out, on a timely cluster.
    #[command(disable_help_flag = true)]
    Run(RunArgs),
    /// Move device messages from an MQTT broker into Kafka, acknowledging only what Kafka has.
    Bridge(BridgeArgs),
    /// Send a simulated fleet's messages to MQTT, Kafka or a file, at a set rate.
    Loadgen(LoadgenArgs),
    /// Print `user:password` lines for a simulated fleet (input for `mosquitto_passwd -U`).
    FleetPasswords(FleetPasswordsArgs),
    /// Move the device registry between its JSON Lines form and the metadata store.
    #[command(subcommand)]
    Registry(RegistryCommand),
    /// Deliver the alert events `run` writes to Kafka to the notification channels.
    Alerts(AlertsArgs),
    /// Roll the time-series store up into the Parquet warehouse (once, or `--every` period).
    Etl(EtlArgs),
}

/// `iotpipe etl`.
#[derive(Debug, Args)]
pub struct EtlArgs {
    /// The configuration file, TOML: `warehouse`, `[influx]`, and `[store]` or `registry`.
    #[arg(long)]
    pub config: PathBuf,
    /// First day to roll up, YYYY-MM-DD (default: the horizon before today).
    #[arg(long)]
    pub from: Option<String>,
    /// The day after the last, YYYY-MM-DD (default: through today; needs --from).
    #[arg(long)]
    pub to: Option<String>,
    /// Run as a service: a pass every period (30s, 15m, 1h, 1d) until SIGTERM.
    #[arg(long)]
    pub every: Option<String>,
    /// Roll every day in range up again, whatever the fingerprints say.
    #[arg(long)]
    pub force: bool,
    /// Days rolled up at once (overrides the file's workers).
    #[arg(short = 'w', long = "workers")]
    pub workers: Option<usize>,
    /// Write what the run did as JSON to this file.
    #[arg(long)]
    pub report: Option<PathBuf>,
}

/// `iotpipe alerts`.
#[derive(Debug, Args)]
pub struct AlertsArgs {
    /// The configuration file, TOML: `[kafka]` as `run`'s, and `[notify]` with its channels.
    #[arg(long)]
    pub config: PathBuf,
}

/// `iotpipe registry`.
#[derive(Debug, Subcommand)]
pub enum RegistryCommand {
    /// Serve the registry API (places, models, devices, history, change log) over the store.
    Serve(RegistryServeArgs),
    /// Check every line of a registry changelog, then apply them all to the store, in order.
    Import(RegistryImportArgs),
    /// Write every device change in the store as registry lines, in the order committed.
    Export(RegistryExportArgs),
}

/// The metadata store.
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// The database: postgresql://USER@HOST:PORT/DBNAME (or host=... user=... dbname=...).
    #[arg(long)]
    pub database_url: String,
    /// The environment variable holding the database password (none: the server trusts you).
    #[arg(long)]
    pub password_env: Option<String>,
}

/// `iotpipe registry import`.
#[derive(Debug, Args)]
pub struct RegistryImportArgs {
    /// The registry changelog, JSON Lines (the file `replay --registry` reads).
    pub file: PathBuf,
    /// The store.
    #[command(flatten)]
    pub store: StoreArgs,
    /// Directory of schema files whose metric catalog thresholds are checked against
    /// (default: the schemas built into iotpipe).
    #[arg(long)]
    pub schemas: Option<PathBuf>,
}

/// `iotpipe registry serve`.
#[derive(Debug, Args)]
pub struct RegistryServeArgs {
    /// host:port to listen on.
    #[arg(long, default_value = "127.0.0.1:8470")]
    pub listen: std::net::SocketAddr,
    /// The store.
    #[command(flatten)]
    pub store: StoreArgs,
    /// An environment variable holding a read-only bearer token (repeatable).
    #[arg(long)]
    pub read_token_env: Vec<String>,
    /// An environment variable holding a read-write bearer token (repeatable).
    #[arg(long)]
    pub write_token_env: Vec<String>,
    /// Directory of schema files whose metric catalog thresholds are checked against
    /// (default: the schemas built into iotpipe).
    #[arg(long)]
    pub schemas: Option<PathBuf>,
}

/// `iotpipe registry export`.
#[derive(Debug, Args)]
pub struct RegistryExportArgs {
    /// The store.
    #[command(flatten)]
    pub store: StoreArgs,
    /// Write the lines here instead of to standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// `iotpipe bridge`.
#[derive(Debug, Args)]
pub struct BridgeArgs {
    /// The configuration file, TOML (see `datasets/bridge.example.toml`); `IOTPIPE_*`
    /// variables override fields.
    #[arg(long)]
    pub config: PathBuf,
}

/// `iotpipe run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The configuration file, TOML (see the README); `IOTPIPE_*` variables override fields.
    #[arg(long)]
    pub config: PathBuf,
    /// Worker threads in this process (overrides cluster.workers).
    #[arg(short = 'w', long = "workers")]
    pub workers: Option<usize>,
    /// Number of processes in the cluster (overrides cluster.processes).
    #[arg(short = 'n', long = "processes")]
    pub processes: Option<usize>,
    /// This process's index in the cluster (overrides cluster.process).
    #[arg(short = 'p', long = "process")]
    pub process: Option<usize>,
    /// File listing one host:port per process (overrides cluster.hostfile).
    #[arg(short = 'h', long = "hostfile")]
    pub hostfile: Option<PathBuf>,
    /// On a clean stop, write what this process did (messages read, dead letters by reason,
    /// records written by sink) as JSON to this file.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Print help.
    #[arg(long, action = ArgAction::Help)]
    pub help: Option<bool>,
}

/// Timely's cluster flags (`-h` is the host file, as in timely; help is `--help`).
#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// Worker threads in this process.
    #[arg(short = 'w', long = "workers", default_value_t = 1)]
    pub workers: usize,
    /// Number of processes in the cluster.
    #[arg(short = 'n', long = "processes", default_value_t = 1)]
    pub processes: usize,
    /// This process's index in the cluster.
    #[arg(short = 'p', long = "process", default_value_t = 0)]
    pub process: usize,
    /// File listing one host:port per process.
    #[arg(short = 'h', long = "hostfile")]
    pub hostfile: Option<PathBuf>,
    /// Print help.
    #[arg(long, action = ArgAction::Help)]
    pub help: Option<bool>,
}

impl ClusterArgs {
    /// The cluster configuration these flags describe.
    pub fn config(&self) -> ClusterConfig {
        ClusterConfig {
            workers: self.workers,
            processes: self.processes,
            process: self.process,
            hostfile: self.hostfile.clone(),
        }
    }
}

/// Pipeline semantics flags.
#[derive(Debug, Args)]
pub struct PipelineArgs {
    /// Window length in milliseconds.
    #[arg(long, default_value_t = 60_000)]
    pub window_ms: u64,
    /// Event time over which a window's close is spread, its devices closed in slices of
    /// 100 ms, so that readings do not wait behind one burst of closing (0: all at once; cut
    /// to a quarter of the window).
    #[arg(long, default_value_t = 10_000)]
    pub close_spread_ms: u64,
    /// Allowed lateness behind the largest valid event time, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    pub lateness_ms: u64,
    /// Largest allowed clock skew ahead of the fleet time (or of a message's arrival), in
    /// milliseconds.
    #[arg(long, default_value_t = 600_000)]
    pub max_skew_ms: u64,
    /// Distinct devices that must reach a time before it is the fleet time (1 to 8).
    #[arg(long, default_value_t = 3)]
    pub clock_quorum: u8,
    /// How far beyond the fleet time the watermark may run, in milliseconds.
    #[arg(long, default_value_t = 5_000)]
    pub max_lead_ms: u64,
    /// Messages larger than this many bytes are `too_large` dead letters.
    #[arg(long, default_value_t = iotpipe::dataflow::schema::DEFAULT_MAX_MESSAGE_BYTES)]
    pub max_message_bytes: usize,
    /// Directory of schema files (default: the schemas built into iotpipe).
    #[arg(long)]
    pub schemas: Option<PathBuf>,
    /// Anomaly scorer parameters, TOML: `[defaults]` and `[by_device_type.<type>]` tables
    /// (default: the built-in parameters).
    #[arg(long)]
    pub anomaly_config: Option<PathBuf>,
    /// Alert rules, TOML in the shape of `datasets/alert_rules.toml` (default: that file,
    /// built into iotpipe).
    #[arg(long)]
    pub alert_rules: Option<PathBuf>,
}

impl PipelineArgs {
    /// The pipeline configuration, or an error naming the flag. Its alert rules are resolved
    /// against the schemas by the command (see [`setup_error`]).
    pub fn config(&self) -> Result<PipelineConfig, String> {
        if self.window_ms == 0 {
            return Err("--window-ms must be at least 1 (default 60000)".into());
        }
        let event_time = EventTimeConfig {
            allowed_lateness_ms: self.lateness_ms,
            max_clock_skew_ms: self.max_skew_ms,
            clock_quorum: self.clock_quorum,
            max_lead_ms: self.max_lead_ms,
        };
        event_time
            .validate()
            .map_err(|e| format!("--clock-quorum: {}", e.problem))?;
        if self.max_message_bytes == 0 {
            return Err("--max-message-bytes must be at least 1 (default 65536)".into());
        }
        Ok(PipelineConfig {
            ingest: iotpipe::dataflow::ingest::IngestConfig {
                max_message_bytes: self.max_message_bytes,
            },
            event_time,
            window: WindowConfig {
                length_ms: self.window_ms,
                close_spread_ms: self.close_spread_ms,
            },
            anomaly: match &self.anomaly_config {
                None => AnomalyConfig::default(),
                Some(path) => iotpipe::io::support::config::load_toml(path)
                    .map_err(|e| format!("--anomaly-config {e}"))?,
            },
            alerts: match &self.alert_rules {
                None => AlertConfig::default(),
                Some(path) => iotpipe::io::support::config::load_toml(path)
                    .map_err(|e| format!("--alert-rules {e}"))?,
            },
        })
    }
}

/// Notification channels.
#[derive(Debug, Args)]
pub struct NotifyArgs {
    /// Notification channels for alert events, TOML: `[[webhook]]`, `[[mqtt]]`, `[[file]]`
    /// tables and a `ledger_dir` (see the README).
    #[arg(long)]
    pub notify: Option<PathBuf>,
}

impl NotifyArgs {
    /// The channels `--notify` names (none without it).
    pub fn config(&self) -> Result<Option<iotpipe::io::sinks::notify::NotifyConfig>, String> {
        let Some(path) = &self.notify else {
            return Ok(None);
        };
        iotpipe::io::support::config::load_toml(path)
            .map(Some)
            .map_err(|e| format!("--notify {e}"))
    }
}

/// InfluxDB output.
#[derive(Debug, Args)]
pub struct InfluxArgs {
    /// Also write readings, aggregates, site rollups, anomalies and alert events to the
    /// InfluxDB at this URL (`http://HOST:PORT`; 1.x, 2.x or 3.x, asked by `/ping`).
    #[arg(long)]
    pub influx_url: Option<String>,
    /// InfluxDB settings, TOML: the fields of `iotpipe run`'s `[influx]` section (see the
    /// README); `--influx-url` overrides its `url`.
    #[arg(long)]
    pub influx_config: Option<PathBuf>,
    /// The 1.x database, 2.x bucket or 3.x database (default `iotpipe`).
    #[arg(long)]
    pub influx_database: Option<String>,
    /// The environment variable holding the 2.x/3.x API token.
    #[arg(long)]
    pub influx_token_env: Option<String>,
}

impl InfluxArgs {
    /// The InfluxDB configuration these flags describe (none: no InfluxDB output).
    pub fn config(&self) -> Result<Option<InfluxConfig>, String> {
        let mut config = match (&self.influx_config, &self.influx_url) {
            (None, None) => {
                if self.influx_database.is_some() || self.influx_token_env.is_some() {
                    return Err(
                        "--influx-database and --influx-token-env need --influx-url or \
                         --influx-config"
                            .into(),
                    );
                }
                return Ok(None);
            }
            (Some(path), _) => iotpipe::io::support::config::load_toml::<InfluxConfig>(path)
                .map_err(|e| format!("--influx-config {e}"))?,
            (None, Some(url)) => InfluxConfig::for_url(url),
        };
        if let Some(url) = &self.influx_url {
            config.url = url.clone();
        }
        if let Some(database) = &self.influx_database {
            config.database = database.clone();
        }
        if let Some(var) = &self.influx_token_env {
            let token = std::env::var(var)
                .map_err(|_| format!("--influx-token-env {var}: the variable is not set"))?;
            config.token = Some(iotpipe::io::connect::secret::Secret(token));
        }
        config
            .validate()
            .map_err(|e| format!("{e} (from --influx-url or --influx-config)"))?;
        Ok(Some(config))
    }
}

/// `iotpipe replay`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Recorded messages, JSON Lines in arrival order.
    #[arg(long)]
    pub events: PathBuf,
    /// Device registry changelog, JSON Lines.
    #[arg(long)]
    pub registry: PathBuf,
    /// Silences and acknowledgements, JSON Lines (the registry API's
    /// `GET /v1/alert-controls`), applied at their own event times.
    #[arg(long)]
    pub alert_controls: Option<PathBuf>,
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
    /// Bytes of the events file each worker decodes at a time.
    #[arg(long, default_value_t = 4 << 20)]
    pub chunk_bytes: u64,
    /// Also write every reading's anomaly score to `scores.jsonl` (for evaluation).
    #[arg(long)]
    pub all_scores: bool,
    /// InfluxDB output.
    #[command(flatten)]
    pub influx: InfluxArgs,
    /// Alert notifications.
    #[command(flatten)]
    pub notify: NotifyArgs,
    /// Pipeline semantics.
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    /// Cluster shape.
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// `iotpipe demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Simulated devices.
    #[arg(long, default_value_t = 2_000)]
    pub devices: usize,
    /// Messages per second per device.
    #[arg(long, default_value_t = 1.0)]
    pub rate: f64,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Seconds of simulated history run at full speed first (faults included), so charts,
    /// anomalies and alerts show within seconds; 0 starts at now.
    #[arg(long, default_value_t = 1_800)]
    pub history_s: u64,
    /// Random seed of the fleet.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Share of devices with an injected fault (spike, level shift, stuck value, silence).
    #[arg(long, default_value_t = 0.01)]
    pub fault_share: f64,
    /// Seconds after the start when the first faults begin.
    #[arg(long, default_value_t = 180)]
    pub fault_start_s: u64,
    /// Seconds over which fault starts spread after `--fault-start-s`.
    #[arg(long, default_value_t = 420)]
    pub fault_spread_s: u64,
    /// Print one summary line per second instead of redrawing the screen.
    #[arg(long)]
    pub plain: bool,
    /// Serve the dashboard at this address (`host:port`; port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Do not serve the dashboard.
    #[arg(long)]
    pub no_dashboard: bool,
    /// InfluxDB output.
    #[command(flatten)]
    pub influx: InfluxArgs,
    /// The metadata store (PostgreSQL): the fleet's registry is written into it, enrichment
    /// reads it back, and the dashboard navigates its hierarchy. Without it: the fleet's
    /// embedded registry, no server needed.
    #[arg(long)]
    pub database_url: Option<String>,
    /// The environment variable holding the database password (none: the server trusts you).
    #[arg(long, requires = "database_url")]
    pub database_password_env: Option<String>,
    /// The environment variable holding the token the dashboard's acknowledge and silence
    /// actions need (`Authorization: Bearer`); without it the dashboard only shows.
    #[arg(long, requires = "database_url")]
    pub action_token_env: Option<String>,
    /// Alert notifications.
    #[command(flatten)]
    pub notify: NotifyArgs,
    /// Pipeline semantics.
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    /// Cluster shape.
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// `iotpipe loadgen`.
#[derive(Debug, Args)]
pub struct LoadgenArgs {
    /// Where to send: `mqtt://HOST:PORT`, `mqtts://HOST:PORT`, `kafka://HOST:PORT/TOPIC` or
    /// `file:PATH`.
    #[arg(long)]
    pub to: String,
    /// Simulated devices.
    #[arg(long, default_value_t = 1_000)]
    pub devices: usize,
    /// Messages per second, the whole fleet together.
    #[arg(long, default_value_t = 1_000.0)]
    pub rate: f64,
    /// Seconds of fleet time to send.
    #[arg(long, default_value_t = 60.0)]
    pub duration: f64,
    /// Random seed of the fleet.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Event time of the first message, epoch ms (default: now). With it, runs are repeatable:
    /// the same arguments send the same messages.
    #[arg(long)]
    pub start_ms: Option<u64>,
    /// Send as fast as the target takes messages instead of in real time.
    #[arg(long)]
    pub unpaced: bool,
    /// MQTT: share this many connections between all devices instead of one per device.
    #[arg(long)]
    pub clients: Option<usize>,
    /// MQTT with --clients: the user name of the shared connections.
    #[arg(long)]
    pub username: Option<String>,
    /// MQTT with --clients: the environment variable holding their password.
    #[arg(long)]
    pub password_env: Option<String>,
    /// MQTT, one connection per device: the environment variable holding the fleet secret
    /// from which each device's password is derived (see `iotpipe fleet-passwords`).
    #[arg(long)]
    pub device_secret_env: Option<String>,
    /// MQTT QoS, 0 or 1.
    #[arg(long, default_value_t = 1)]
    pub qos: u8,
    /// mqtts: the CA certificate file (PEM) of the broker.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// Seconds to wait at the end for outstanding acknowledgements.
    #[arg(long, default_value_t = 30.0)]
    pub drain_timeout: f64,
    /// Also write the final report as JSON to this file.
    #[arg(long)]
    pub report: Option<PathBuf>,
}

/// `iotpipe fleet-passwords`.
#[derive(Debug, Args)]
pub struct FleetPasswordsArgs {
    /// Devices (`dev-000000` ...).
    #[arg(long)]
    pub devices: usize,
    /// The environment variable holding the fleet secret.
    #[arg(long)]
    pub secret_env: String,
}
