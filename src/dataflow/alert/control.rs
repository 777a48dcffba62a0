//! What people say about alerts: silences, acknowledgements, and the rules themselves. They are
//! data with event times, like registry changes: the metadata store keeps them, and they flow
//! into the dataflow, so a replay of the same input with the same controls alerts and notifies
//! the same.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{AlertConfig, AlertEvent, Cause, Severity};
use crate::dataflow::model::{MetricId, TimeMs};
use crate::dataflow::schema::MetricCatalog;

/// A silence or an acknowledgement, as the dataflow takes it. (Externally tagged: controls
/// cross processes in bincode. A JSON line names its kind in a `kind` field instead, see
/// [`ControlLine`].)
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum AlertControl {
    /// A silence (a new one, or a new version of one: an edit or its expiry).
    Silence(Box<Silence>),
    /// Someone took an alert on.
    Acknowledgement(Acknowledgement),
    /// New alert rules, from an event time on.
    Rules(Box<RulesChange>),
}

/// A control as a JSON line (the store's control log, `replay --alert-controls`): its kind
/// in a `kind` field beside its own.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ControlLine {
    /// A silence.
    Silence(Box<Silence>),
    /// An acknowledgement.
    Acknowledgement(Acknowledgement),
    /// New alert rules.
    Rules(Box<RulesChange>),
}

impl From<ControlLine> for AlertControl {
    fn from(line: ControlLine) -> Self {
        match line {
            ControlLine::Silence(s) => Self::Silence(s),
            ControlLine::Acknowledgement(a) => Self::Acknowledgement(a),
            ControlLine::Rules(r) => Self::Rules(r),
        }
    }
}

/// Alert rules (the whole `alert_rules.toml`: rules, lifecycle, outages, maintenance,
/// notification) in force from `effective_ms` on, without a restart.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesChange {
    /// Its version: of two changes with one effective time, the later version holds.
    pub version: u64,
    /// Event time from which the rules hold (ms since the epoch).
    pub effective_ms: TimeMs,
    /// The rules.
    pub rules: AlertConfig,
}

/// The rules in force as event time passes: the initial ones, then each change from its
/// effective time. Every alert stage keeps one, and switches at the same timely time, so the
/// switch is the same for any number of workers and for a replay.
#[derive(Debug)]
pub struct RulesInForce {
    current: Arc<AlertConfig>,
    pending: BTreeMap<(TimeMs, u64), Arc<AlertConfig>>,
}

impl RulesInForce {
    /// The initial rules.
    pub fn new(initial: Arc<AlertConfig>) -> Self {
        Self {
            current: initial,
            pending: BTreeMap::new(),
        }
    }

    /// Takes a rules change (any other control is ignored).
    pub fn offer(&mut self, control: &AlertControl) {
        if let AlertControl::Rules(change) = control {
            self.pending.insert(
                (change.effective_ms, change.version),
                Arc::new(change.rules.clone()),
            );
        }
    }

    /// The rules in force at `time`, if they changed since the last call.
    pub fn advance(&mut self, time: TimeMs) -> Option<Arc<AlertConfig>> {
        let mut changed = None;
        while let Some(entry) = self.pending.first_entry() {
            if entry.key().0 > time {
                break;
            }
            self.current = entry.remove();
            changed = Some(Arc::clone(&self.current));
        }
        changed
    }

    /// The rules in force.
    pub fn current(&self) -> &Arc<AlertConfig> {
        &self.current
    }
}

/// Alerts matching `matchers` notify nobody from `starts_ms` until `ends_ms` (event time).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Silence {
    /// The silence's id.
    pub id: String,
    /// Its version: a later version of the same id replaces the earlier (an expiry is a
    /// version whose end is the time it was expired).
    pub version: u64,
    /// Which alerts.
    pub matchers: SilenceMatch,
    /// From (event time, ms since the epoch).
    pub starts_ms: TimeMs,
    /// Until (exclusive).
    pub ends_ms: TimeMs,
    /// Who made it.
    #[serde(default)]
    pub created_by: String,
    /// Why.
    #[serde(default)]
    pub comment: String,
}

impl Silence {
    /// The JSON form people and the store see: metric names, not the catalog's ids.
    pub fn to_json(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).expect("silences serialise");
        if let Some(matchers) = value["matchers"].as_object_mut() {
            matchers.remove("metric_ids");
        }
        value
    }

    /// Whether it mutes `event` at `ts_ms`.
    pub fn mutes(&self, event: &AlertEvent, ts_ms: TimeMs) -> bool {
        (self.starts_ms..self.ends_ms).contains(&ts_ms) && self.matchers.matches(event)
    }
}

/// Which alerts a silence applies to: every list that is given must hold the alert's value;
/// a list left empty matches everything. A site alert has no device, metric or building: a
/// silence naming devices, metrics or buildings does not match it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SilenceMatch {
    /// Device ids.
    pub devices: Vec<String>,
    /// Sites.
    pub sites: Vec<String>,
    /// Buildings.
    pub buildings: Vec<String>,
    /// Metric names.
    pub metrics: Vec<String>,
    /// Rule names.
    pub rules: Vec<String>,
    /// Severities.
    pub severities: Vec<Severity>,
    /// Causes.
    pub causes: Vec<Cause>,
    /// `metrics` resolved against the catalog (see [`SilenceMatch::resolve`]). Serialised, as
    /// silences cross processes in bincode; the JSON forms leave it out (see
    /// [`Silence::to_json`]) and resolve the names again.
    #[serde(default)]
    pub metric_ids: Vec<MetricId>,
}

impl SilenceMatch {
    /// Resolves metric names; the first unknown one is the error.
    pub fn resolve(&mut self, catalog: &MetricCatalog) -> Result<(), String> {
        self.metric_ids = catalog.ids(&self.metrics)?;
        Ok(())
    }

    /// Whether no list is given (it would silence everything).
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
            && self.sites.is_empty()
            && self.buildings.is_empty()
            && self.metrics.is_empty()
            && self.rules.is_empty()
            && self.severities.is_empty()
            && self.causes.is_empty()
    }

    /// Whether the alert of `event` is selected.
    pub fn matches(&self, event: &AlertEvent) -> bool {
        fn any(list: &[String], value: Option<&str>) -> bool {
            list.is_empty() || value.is_some_and(|v| list.iter().any(|l| l == v))
        }
        let building = (!event.building.is_empty()).then_some(event.building.as_str());
        any(&self.devices, event.device_id.as_deref())
            && any(&self.sites, Some(&event.site))
            && any(&self.buildings, building)
            && any(&self.rules, Some(&event.rule))
            && (self.metric_ids.is_empty()
                || event.metric.is_some_and(|m| self.metric_ids.contains(&m)))
            && (self.severities.is_empty() || self.severities.contains(&event.severity))
            && (self.causes.is_empty() || self.causes.contains(&event.cause))
    }
}

/// Someone took an alert on: it is not notified again as a reminder, and it does not become
/// overdue.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Acknowledgement {
    /// The alert.
    pub alert_id: String,
    /// Who.
    pub by: String,
    /// Their note.
    #[serde(default)]
    pub note: String,
    /// When (event time, ms since the epoch).
    pub at_ms: TimeMs,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(version: u64, effective_ms: TimeMs, clear_after_ms: u64) -> AlertControl {
        let mut rules = AlertConfig::default();
        rules.lifecycle.clear_after_ms = clear_after_ms;
        AlertControl::Rules(Box::new(RulesChange {
            version,
            effective_ms,
            rules,
        }))
    }

    #[test]
    fn rules_hold_from_their_effective_time_and_the_later_version_wins_a_tie() {
        let mut rules = RulesInForce::new(Arc::new(AlertConfig::default()));
        // Offered in any order.
        rules.offer(&change(3, 200, 3));
        rules.offer(&change(1, 100, 1));
        rules.offer(&change(2, 200, 2));
        assert!(rules.advance(99).is_none());
        assert_eq!(rules.advance(100).unwrap().lifecycle.clear_after_ms, 1);
        assert!(rules.advance(150).is_none());
        assert_eq!(rules.advance(250).unwrap().lifecycle.clear_after_ms, 3);
        assert_eq!(rules.current().lifecycle.clear_after_ms, 3);
    }
}
