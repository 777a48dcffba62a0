//! Alert rules: data, not code. `datasets/alert_rules.toml` holds the defaults.

use serde::{Deserialize, Serialize};

use crate::dataflow::anomaly::AnomalyKind;
use crate::dataflow::model::{DeviceInfo, MetricId, TimeMs};
use crate::dataflow::schema::MetricCatalog;

/// How bad an alert is. Ordered: a rule of higher severity escalates an open alert.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Worth a look.
    #[default]
    Warning,
    /// Degraded.
    Minor,
    /// Broken.
    Major,
    /// Broken and urgent.
    Critical,
}

impl Severity {
    /// The severity's code.
    pub fn code(self) -> &'static str {
        match self {
            Self::Warning => "warning",
            Self::Minor => "minor",
            Self::Major => "major",
            Self::Critical => "critical",
        }
    }
}

/// What an alert is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// Anomaly scores.
    Anomaly,
    /// Registry thresholds.
    Threshold,
    /// A silent device.
    Silence,
    /// Most of a site's devices silent at once.
    Site,
    /// Most of a building's devices silent at once.
    Building,
    /// A device whose clock is far off: its stamps keep landing more than the allowed skew
    /// ahead of the fleet time (dead letters) or behind it (late readings).
    Clock,
}

impl Cause {
    /// The cause's code.
    pub fn code(self) -> &'static str {
        match self {
            Self::Anomaly => "anomaly",
            Self::Threshold => "threshold",
            Self::Silence => "silence",
            Self::Site => "site",
            Self::Building => "building",
            Self::Clock => "clock",
        }
    }
}

/// Which devices and metrics a rule (or a maintenance window) applies to. Every list that is
/// given must contain the device's value; an empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Selector {
    /// Device types (`thermostat`, ...).
    pub device_types: Vec<String>,
    /// Sites.
    pub sites: Vec<String>,
    /// Metric names (from the metric catalog).
    pub metrics: Vec<String>,
    /// Device ids.
    pub devices: Vec<String>,
    /// `metrics` resolved against the catalog (see [`AlertConfig::resolve`]). Serialised, as
    /// rules cross processes in bincode; [`AlertConfig::resolve`] sets it from the names.
    #[serde(default)]
    pub metric_ids: Vec<MetricId>,
}

impl Selector {
    /// Whether a device (and metric, where one applies) is selected.
    pub fn matches(&self, device_id: &str, device: &DeviceInfo, metric: Option<MetricId>) -> bool {
        let any = |list: &[String], value: &str| list.is_empty() || list.iter().any(|v| v == value);
        any(&self.device_types, &device.device_type)
            && any(&self.sites, &device.site)
            && any(&self.devices, device_id)
            && (self.metric_ids.is_empty() || metric.is_some_and(|m| self.metric_ids.contains(&m)))
    }

    /// The metric ids of the names; the first unknown name is the error.
    fn resolve(&mut self, catalog: &MetricCatalog) -> Result<(), String> {
        self.metric_ids = catalog.ids(&self.metrics)?;
        Ok(())
    }
}

/// Alert rules that cannot be used: where (`rules.NAME`, `maintenance[I]`) and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{at}: {message}")]
pub struct AlertConfigError {
    /// The rule or maintenance window.
    pub at: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// When a rule fires.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Condition {
    /// A reading's anomaly score (or a stuck or level-shift finding) at or above `min_score`.
    Anomaly {
        /// Smallest score that fires.
        min_score: f64,
        /// Kinds that fire (empty: spike, level shift and stuck).
        #[serde(default)]
        kinds: Vec<AnomalyKind>,
    },
    /// Registry thresholds breached by at least `min_breaches` readings in each of
    /// `for_windows` consecutive windows of a metric.
    Threshold {
        /// Breaching readings a window needs.
        #[serde(default = "one")]
        min_breaches: u64,
        /// Consecutive windows needed.
        #[serde(default = "one_u32")]
        for_windows: u32,
    },
    /// The device went silent (its type's silence timeout, see the anomaly parameters).
    Silence {},
    /// At least `min_faults` of the device's messages within `within_ms` of event time were
    /// stamped more than the allowed clock skew off the fleet time (or their arrival).
    Clock {
        /// Faults needed.
        #[serde(default = "ten")]
        min_faults: u32,
        /// Within this much event time.
        #[serde(default = "ten_minutes")]
        within_ms: u64,
    },
}

fn ten() -> u32 {
    10
}

fn ten_minutes() -> u64 {
    600_000
}

fn one() -> u64 {
    1
}

fn one_u32() -> u32 {
    1
}

impl Condition {
    /// The cause of alerts the condition opens.
    pub fn cause(&self) -> Cause {
        match self {
            Self::Anomaly { .. } => Cause::Anomaly,
            Self::Threshold { .. } => Cause::Threshold,
            Self::Silence {} => Cause::Silence,
            Self::Clock { .. } => Cause::Clock,
        }
    }
}

/// One rule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// The rule's name; alert events carry it.
    pub name: String,
    /// Severity of the alerts it opens or escalates to.
    pub severity: Severity,
    /// Which devices and metrics it applies to.
    #[serde(default, rename = "match")]
    pub selector: Selector,
    /// When it fires.
    pub when: Condition,
}

/// How alerts live.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Lifecycle {
    /// An anomaly or threshold alert resolves once no rule has fired for it for this long
    /// (event time): the hysteresis that keeps an intermittent fault one alert.
    pub clear_after_ms: u64,
    /// Opens of one alert key counted for flapping over this much event time.
    pub flap_window_ms: u64,
    /// An alert key opened this many times within the flap window is flapping: further opens
    /// are muted until it calms down.
    pub flap_max_opens: usize,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self {
            clear_after_ms: 180_000,
            flap_window_ms: 3_600_000,
            flap_max_opens: 4,
        }
    }
}

/// Outage alerts of one level of the hierarchy (`[site]`, `[building]`): many devices of one
/// place silent at once is the place's problem (power, network), and one alert for it replaces
/// their per-device silence alerts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutageRule {
    /// Share of the place's devices that must be silent at once.
    pub silent_share: f64,
    /// And at least this many devices (0: no outage alerts at this level).
    pub min_devices: usize,
    /// Severity of its alerts.
    pub severity: Severity,
}

impl OutageRule {
    /// The shipped rule of a level: half the place's devices, and at least 3.
    fn half_of_at_least_three(severity: Severity) -> Self {
        Self {
            silent_share: 0.5,
            min_devices: 3,
            severity,
        }
    }

    /// The site level's default.
    pub fn site() -> Self {
        Self::half_of_at_least_three(Severity::Critical)
    }

    /// The building level's default.
    pub fn building() -> Self {
        Self::half_of_at_least_three(Severity::Major)
    }
}

impl Default for OutageRule {
    fn default() -> Self {
        Self::site()
    }
}

/// A maintenance window: alert events of matching devices in it are muted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Maintenance {
    /// Which devices.
    #[serde(default, rename = "match")]
    pub selector: Selector,
    /// Start, event time (epoch ms).
    pub from_ms: TimeMs,
    /// End, exclusive.
    pub to_ms: TimeMs,
    /// Why (for people).
    #[serde(default)]
    pub reason: String,
}

/// The alerting configuration. (Its `Default` is the shipped rules file; a file that leaves a
/// section out gets that section's own default, and no rules if it has none.)
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertConfig {
    /// The rules, in any order.
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// Alert lifecycle.
    #[serde(default)]
    pub lifecycle: Lifecycle,
    /// Site outage alerts.
    #[serde(default = "OutageRule::site")]
    pub site: OutageRule,
    /// Building outage alerts (a site's own outage explains its buildings').
    #[serde(default = "OutageRule::building")]
    pub building: OutageRule,
    /// Maintenance windows.
    #[serde(default)]
    pub maintenance: Vec<Maintenance>,
    /// Reminders and escalation.
    #[serde(default)]
    pub notification: super::NotificationPolicy,
}

/// The rules shipped with iotpipe.
pub const DEFAULT_RULES: &str = include_str!("../../../datasets/alert_rules.toml");

impl Default for AlertConfig {
    fn default() -> Self {
        let mut config: AlertConfig =
            toml::from_str(DEFAULT_RULES).expect("the shipped alert rules parse");
        config
            .resolve(crate::dataflow::schema::SchemaSet::embedded().catalog())
            .expect("the shipped alert rules name known metrics");
        config
    }
}

impl AlertConfig {
    /// Resolves metric names against the catalog; an unknown one is an error naming the rule.
    pub fn resolve(&mut self, catalog: &MetricCatalog) -> Result<(), AlertConfigError> {
        let error = |at: String, message: String| AlertConfigError { at, message };
        for rule in &mut self.rules {
            let at = || format!("rules.{}", rule.name);
            rule.selector.resolve(catalog).map_err(|name| {
                error(
                    at(),
                    format!("unknown metric `{name}` (see the metric catalog)"),
                )
            })?;
            if let Condition::Anomaly { min_score, .. } = rule.when
                && !(0.0..=1.0).contains(&min_score)
            {
                return Err(error(
                    at(),
                    format!("min_score must be within 0..=1, not {min_score}"),
                ));
            }
            if let Condition::Clock { min_faults: 0, .. } = rule.when {
                return Err(error(at(), "clock.min_faults must be at least 1".into()));
            }
        }
        for (i, m) in self.maintenance.iter_mut().enumerate() {
            m.selector.resolve(catalog).map_err(|name| {
                error(
                    format!("maintenance[{i}]"),
                    format!("unknown metric `{name}` (see the metric catalog)"),
                )
            })?;
        }
        Ok(())
    }

    /// Whether an event at `ts_ms` of this device falls in a maintenance window; if so, when
    /// the window ends.
    pub fn maintenance_until(
        &self,
        device_id: &str,
        device: &DeviceInfo,
        metric: Option<MetricId>,
        ts_ms: TimeMs,
    ) -> Option<TimeMs> {
        self.maintenance
            .iter()
            .filter(|m| (m.from_ms..m.to_ms).contains(&ts_ms))
            .filter(|m| m.selector.matches(device_id, device, metric))
            .map(|m| m.to_ms)
            .max()
    }
}
