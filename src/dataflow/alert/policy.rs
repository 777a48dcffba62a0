//! Who hears of an alert, and when: silences, acknowledgements, reminders and escalation.
//!
//! [`EvaluateAlerts`](super::EvaluateAlerts) and [`CorrelateSites`](super::CorrelateSites) say
//! what is wrong; this stage says who is told. It passes every lifecycle event on (the alert
//! state the API lists, silenced alerts included) and marks the ones nobody is to hear of with
//! the silence that keeps them quiet (`silenced_by`); channels skip those. Its own events:
//!
//! - `opened` again when a silence ends over an alert nobody was told of;
//! - `acknowledged` when someone takes an open alert on;
//! - `repeated` every `repeat_after_ms` (per severity) while an alert someone was told of
//!   stays open and unacknowledged;
//! - `overdue` once an alert stays unacknowledged `escalate_after_ms` after it opened: it and
//!   every later event of the alert carry `overdue`, which escalation channels wait for.
//!
//! Everything is decided at event times from the events, the silences and acknowledgements
//! (data with their own event times) and the ticks every worker sees, so a replay with the same
//! silences and acknowledgements notifies the same, for any number of workers.

use std::collections::BTreeMap;
use std::sync::Arc;

use differential_dataflow::Hashable;
use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::Operator;

use super::control::{Acknowledgement, AlertControl, RulesInForce, Silence};
use super::rules::AlertConfig;
use super::{AlertEvent, AlertEventKind, Severity};
use crate::dataflow::EventStream;
use crate::dataflow::gather::GatherByTime;
use crate::dataflow::model::TimeMs;

/// How long silences and acknowledgements are kept after they stop mattering (an
/// acknowledgement may arrive before its alert's events reach this worker).
const KEEP_CONTROLS_MS: TimeMs = 24 * 3_600_000;

/// A duration per severity (ms; 0: never).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BySeverity {
    /// For warnings.
    pub warning: u64,
    /// For minor alerts.
    pub minor: u64,
    /// For major alerts.
    pub major: u64,
    /// For critical alerts.
    pub critical: u64,
}

impl BySeverity {
    /// The duration for `severity`.
    pub fn of(&self, severity: Severity) -> u64 {
        match severity {
            Severity::Warning => self.warning,
            Severity::Minor => self.minor,
            Severity::Major => self.major,
            Severity::Critical => self.critical,
        }
    }
}

/// When people hear of an alert again.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotificationPolicy {
    /// An open alert nobody acknowledged is notified again (`repeated`) this long after it
    /// was last notified, per severity (0: never).
    pub repeat_after_ms: BySeverity,
    /// An open alert nobody acknowledged this long after it opened becomes `overdue`, per
    /// severity (0: never): channels with `overdue_only` (the next person to call) hear of it
    /// from then on.
    pub escalate_after_ms: BySeverity,
}

impl Default for NotificationPolicy {
    /// Alertmanager's habit for repeats (hours, not minutes), PagerDuty's for escalation.
    fn default() -> Self {
        Self {
            repeat_after_ms: BySeverity {
                major: 4 * 3_600_000,
                critical: 3_600_000,
                ..BySeverity::default()
            },
            escalate_after_ms: BySeverity {
                major: 2 * 3_600_000,
                critical: 1_800_000,
                ..BySeverity::default()
            },
        }
    }
}

/// Applies silences, acknowledgements, reminders and escalation to alert events.
pub trait ApplyNotificationPolicy<'scope> {
    /// Passes lifecycle events on, marking those a silence keeps quiet, and adds the policy's
    /// own events (see the [module](self)). `controls` are silences and acknowledgements (any
    /// partitioning: every worker gets them all); `ticks` are times every worker sees (window
    /// close times).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    ///
    /// use iotpipe::dataflow::alert::control::{AlertControl, Silence, SilenceMatch};
    /// use iotpipe::dataflow::alert::{
    ///     AlertConfig, AlertEvent, AlertEventKind, ApplyNotificationPolicy, Cause, Severity,
    /// };
    /// use timely::dataflow::operators::capture::Extract;
    /// use timely::dataflow::operators::vec::Map;
    /// use timely::dataflow::operators::{Capture, Input, ToStream};
    ///
    /// // Site B is under a silence from 0 to 10 minutes; a device alert opens there at 1 min.
    /// let opened = AlertEvent {
    ///     id: "dev-1/silence/60000/opened/60000".into(),
    ///     alert_id: "dev-1/silence/60000".into(),
    ///     event: AlertEventKind::Opened,
    ///     device_id: Some("dev-1".into()),
    ///     site: "site-b".into(),
    ///     org: "acme".into(),
    ///     building: "hall-1".into(),
    ///     metric: None,
    ///     rule: "device-silent".into(),
    ///     severity: Severity::Major,
    ///     cause: Cause::Silence,
    ///     ts_ms: 60_000,
    ///     score: None,
    ///     value: None,
    ///     silenced_by: None,
    ///     overdue: false,
    ///     acknowledged_by: None,
    /// };
    /// let silence = AlertControl::Silence(Box::new(Silence {
    ///     id: "works".into(),
    ///     version: 1,
    ///     matchers: SilenceMatch { sites: vec!["site-b".into()], ..SilenceMatch::default() },
    ///     starts_ms: 0,
    ///     ends_ms: 600_000,
    ///     created_by: "ops".into(),
    ///     comment: "rewiring".into(),
    /// }));
    /// let captured = timely::example(move |scope| {
    ///     let (mut ticks_input, ticks) = scope.new_input::<Vec<u64>>();
    ///     let controls = vec![silence].to_stream(scope);
    ///     let events = vec![opened].to_stream(scope);
    ///     // The window that closes at 11 minutes: the silence is over, the alert still open.
    ///     ticks_input.advance_to(660_000);
    ///     ticks_input.send(660_000);
    ///     events
    ///         .apply_notification_policy(controls, ticks, Arc::new(AlertConfig::default()))
    ///         .map(|e| (e.event.code(), e.ts_ms, e.silenced_by))
    ///         .capture()
    /// });
    /// let events: Vec<_> = captured.extract().into_iter().flat_map(|(_, e)| e).collect();
    /// assert_eq!(
    ///     events,
    ///     vec![
    ///         // Kept (the API lists it), marked: channels skip it.
    ///         ("opened", 60_000, Some("works".to_string())),
    ///         // Announced when the silence ended.
    ///         ("opened", 600_000, None),
    ///     ]
    /// );
    /// ```
    fn apply_notification_policy(
        self,
        controls: EventStream<'scope, AlertControl>,
        ticks: EventStream<'scope, TimeMs>,
        config: Arc<AlertConfig>,
    ) -> EventStream<'scope, AlertEvent>;
}

impl<'scope> ApplyNotificationPolicy<'scope> for EventStream<'scope, AlertEvent> {
    fn apply_notification_policy(
        self,
        controls: EventStream<'scope, AlertControl>,
        ticks: EventStream<'scope, TimeMs>,
        config: Arc<AlertConfig>,
    ) -> EventStream<'scope, AlertEvent> {
        let controls_and_ticks = super::controls_and_ticks(controls, ticks);
        let by_alert = Exchange::new(|e: &AlertEvent| e.alert_id.hashed());
        self.binary_frontier(
            controls_and_ticks,
            by_alert,
            Pipeline,
            "ApplyNotificationPolicy",
            move |_cap, _info| {
                let mut book = PolicyBook::new(config);
                let mut pending: GatherByTime<
                    Capability<TimeMs>,
                    Vec<AlertEvent>,
                    Vec<Option<AlertControl>>,
                > = GatherByTime::default();
                let mut out = Vec::new();
                move |(events, frontier), (controls, controls_frontier), output| {
                    events.for_each(|cap, data| {
                        let Some(&time) = cap.least() else { return };
                        pending.at(time, || cap.delayed(&time, 0)).0.append(data);
                    });
                    controls.for_each(|cap, data| {
                        let Some(&time) = cap.least() else { return };
                        pending.at(time, || cap.delayed(&time, 0)).1.append(data);
                    });
                    while let Some((time, cap, mut events, controls)) =
                        pending.next_ready(&[frontier, controls_frontier])
                    {
                        let tick = controls.iter().any(Option::is_none);
                        for control in controls.into_iter().flatten() {
                            book.control(control);
                        }
                        book.rules_at(time);
                        events.sort_by(|a, b| {
                            (a.ts_ms, a.event, &a.id).cmp(&(b.ts_ms, b.event, &b.id))
                        });
                        for event in events {
                            book.event(event, &mut out);
                        }
                        if tick {
                            book.tick(time, &mut out);
                        }
                        output.session(&cap).give_container(&mut out);
                    }
                }
            },
        )
    }
}

/// What the policy knows of one open alert.
#[derive(Clone, Debug)]
struct Tracked {
    /// Its latest lifecycle event (what reminders repeat).
    latest: AlertEvent,
    opened_ms: TimeMs,
    /// Someone was told of it.
    notified: bool,
    last_notified_ms: TimeMs,
    /// The silence that kept it quiet, while nobody was told of it.
    muted_by: Option<String>,
    overdue: bool,
    acknowledged: bool,
}

/// One worker's policy state: its open alerts, and every silence and acknowledgement.
pub struct PolicyBook {
    config: Arc<AlertConfig>,
    rules: RulesInForce,
    open: BTreeMap<String, Tracked>,
    silences: BTreeMap<String, Silence>,
    acks: BTreeMap<String, Acknowledgement>,
}

impl PolicyBook {
    /// An empty book.
    pub fn new(config: Arc<AlertConfig>) -> Self {
        Self {
            rules: RulesInForce::new(Arc::clone(&config)),
            config,
            open: BTreeMap::new(),
            silences: BTreeMap::new(),
            acks: BTreeMap::new(),
        }
    }

    /// Takes a silence (the latest version of an id wins) or an acknowledgement (the earliest
    /// of an alert wins).
    pub fn control(&mut self, control: AlertControl) {
        match control {
            AlertControl::Silence(s) => {
                if self
                    .silences
                    .get(&s.id)
                    .is_none_or(|old| old.version <= s.version)
                {
                    self.silences.insert(s.id.clone(), *s);
                }
            }
            AlertControl::Acknowledgement(a) => {
                if self
                    .acks
                    .get(&a.alert_id)
                    .is_none_or(|old| old.at_ms > a.at_ms)
                {
                    self.acks.insert(a.alert_id.clone(), a);
                }
            }
            rules @ AlertControl::Rules(_) => self.rules.offer(&rules),
        }
    }

    /// Takes the rules in force at `time` (their `notification` policy).
    pub fn rules_at(&mut self, time: TimeMs) {
        if let Some(config) = self.rules.advance(time) {
            self.config = config;
        }
    }

    /// Passes a lifecycle event on.
    pub fn event(&mut self, mut event: AlertEvent, out: &mut Vec<AlertEvent>) {
        let muted = silenced(&self.silences, &event, event.ts_ms);
        match event.event {
            AlertEventKind::Opened => {
                self.open.insert(
                    event.alert_id.clone(),
                    Tracked {
                        latest: event.clone(),
                        opened_ms: event.ts_ms,
                        notified: muted.is_none(),
                        last_notified_ms: event.ts_ms,
                        muted_by: muted.clone(),
                        overdue: false,
                        acknowledged: false,
                    },
                );
                event.silenced_by = muted;
            }
            AlertEventKind::Escalated => {
                if let Some(t) = self.open.get_mut(&event.alert_id) {
                    if muted.is_none() {
                        t.notified = true;
                        t.muted_by = None;
                        t.last_notified_ms = event.ts_ms;
                    } else if !t.notified {
                        t.muted_by.clone_from(&muted);
                    }
                    t.latest = event.clone();
                    event.overdue = t.overdue;
                }
                event.silenced_by = muted;
            }
            AlertEventKind::Resolved => {
                // People who were told it opened are told it resolved, silence or not.
                if let Some(t) = self.open.remove(&event.alert_id) {
                    event.overdue = t.overdue;
                    if !t.notified {
                        event.silenced_by = t.muted_by.or(muted);
                    }
                }
                self.acks.remove(&event.alert_id);
            }
            _ => {}
        }
        out.push(event);
    }

    /// Event time has reached `clock_ms` everywhere: acknowledgements, announcements after a
    /// silence, escalations and reminders that are due.
    pub fn tick(&mut self, clock_ms: TimeMs, out: &mut Vec<AlertEvent>) {
        let policy = &self.config.notification;
        for (alert_id, t) in &mut self.open {
            let acked_by = |at_ms: TimeMs| self.acks.get(alert_id).filter(|a| a.at_ms <= at_ms);
            let derived = |t: &Tracked, kind: AlertEventKind, ts_ms: TimeMs| {
                let mut e = t.latest.clone();
                e.event = kind;
                e.ts_ms = ts_ms;
                e.id = format!("{}/{}/{ts_ms}", e.alert_id, kind.code());
                e.overdue = t.overdue;
                e.silenced_by = if t.notified { None } else { t.muted_by.clone() };
                e
            };
            if let Some(ack) = acked_by(clock_ms)
                && !t.acknowledged
            {
                t.acknowledged = true;
                let mut e = derived(t, AlertEventKind::Acknowledged, ack.at_ms.max(t.opened_ms));
                e.acknowledged_by = Some(if ack.note.is_empty() {
                    ack.by.clone()
                } else {
                    format!("{}: {}", ack.by, ack.note)
                });
                out.push(e);
            }
            // A tick may be behind the latest event's own time (events are stamped at the
            // watermark): the alert is quiet as long as a silence covers either.
            let now_ms = clock_ms.max(t.latest.ts_ms);
            let quiet_now = silenced(&self.silences, &t.latest, now_ms);
            if !t.notified && !t.acknowledged && quiet_now.is_none() {
                let ended_ms = t
                    .muted_by
                    .as_ref()
                    .and_then(|id| self.silences.get(id))
                    .map_or(now_ms, |s| s.ends_ms.min(now_ms));
                let at = ended_ms.max(t.latest.ts_ms);
                t.notified = true;
                t.muted_by = None;
                t.last_notified_ms = at;
                out.push(derived(t, AlertEventKind::Opened, at));
            }
            if !t.notified || t.acknowledged {
                continue;
            }
            let severity = t.latest.severity;
            let escalate_ms = policy.escalate_after_ms.of(severity);
            if !t.overdue && escalate_ms > 0 && t.opened_ms + escalate_ms <= clock_ms {
                let due = t.opened_ms + escalate_ms;
                let at = if silenced(&self.silences, &t.latest, due).is_none() {
                    Some(due)
                } else {
                    quiet_now.is_none().then_some(clock_ms)
                };
                if let Some(at) = at
                    && acked_by(at).is_none()
                {
                    t.overdue = true;
                    t.last_notified_ms = at;
                    out.push(derived(t, AlertEventKind::Overdue, at));
                }
            }
            let every_ms = policy.repeat_after_ms.of(severity);
            if every_ms > 0 && t.last_notified_ms + every_ms <= clock_ms {
                // The latest reminder due: one however long the ticks were apart.
                let due =
                    t.last_notified_ms + every_ms * ((clock_ms - t.last_notified_ms) / every_ms);
                t.last_notified_ms = due;
                if acked_by(due).is_none() && silenced(&self.silences, &t.latest, due).is_none() {
                    out.push(derived(t, AlertEventKind::Repeated, due));
                }
            }
        }
        let open = &self.open;
        self.acks
            .retain(|id, a| open.contains_key(id) || a.at_ms + KEEP_CONTROLS_MS > clock_ms);
        self.silences
            .retain(|_, s| s.ends_ms.saturating_add(KEEP_CONTROLS_MS) > clock_ms);
    }

    /// Open alerts.
    pub fn open_count(&self) -> usize {
        self.open.len()
    }
}

/// The silence (the first by id) that mutes `event` at `ts_ms`.
fn silenced(
    silences: &BTreeMap<String, Silence>,
    event: &AlertEvent,
    ts_ms: TimeMs,
) -> Option<String> {
    silences
        .values()
        .find(|s| s.mutes(event, ts_ms))
        .map(|s| s.id.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataflow::alert::Cause;
    use crate::dataflow::alert::control::SilenceMatch;

    const MINUTE: u64 = 60_000;

    fn event(kind: AlertEventKind, severity: Severity, ts_ms: TimeMs) -> AlertEvent {
        AlertEvent {
            id: format!("dev-1/silence/0/{}/{ts_ms}", kind.code()),
            alert_id: "dev-1/silence/0".into(),
            event: kind,
            device_id: Some("dev-1".into()),
            site: "site-1".into(),
            org: "org-1".into(),
            building: "hall-1".into(),
            metric: None,
            rule: "device-silent".into(),
            severity,
            cause: Cause::Silence,
            ts_ms,
            score: None,
            value: None,
            silenced_by: None,
            overdue: false,
            acknowledged_by: None,
        }
    }

    fn silence(version: u64, starts_ms: TimeMs, ends_ms: TimeMs) -> AlertControl {
        AlertControl::Silence(Box::new(Silence {
            id: "s1".into(),
            version,
            matchers: SilenceMatch {
                buildings: vec!["hall-1".into()],
                ..SilenceMatch::default()
            },
            starts_ms,
            ends_ms,
            created_by: "ops".into(),
            comment: String::new(),
        }))
    }

    fn ack(at_ms: TimeMs) -> AlertControl {
        AlertControl::Acknowledgement(Acknowledgement {
            alert_id: "dev-1/silence/0".into(),
            by: "ana".into(),
            note: "on it".into(),
            at_ms,
        })
    }

    /// Repeats every 10 minutes for major alerts, overdue after 25 minutes.
    fn book() -> PolicyBook {
        let config = AlertConfig {
            notification: NotificationPolicy {
                repeat_after_ms: BySeverity {
                    major: 10 * MINUTE,
                    ..BySeverity::default()
                },
                escalate_after_ms: BySeverity {
                    major: 25 * MINUTE,
                    ..BySeverity::default()
                },
            },
            ..AlertConfig::default()
        };
        PolicyBook::new(Arc::new(config))
    }

    /// A book with silence `s1` from 5 to 15 minutes, and the events of an alert it covers
    /// opening at 6 minutes.
    fn opened_in_a_silence() -> (PolicyBook, Vec<AlertEvent>) {
        let mut book = book();
        let mut out = Vec::new();
        book.control(silence(1, 5 * MINUTE, 15 * MINUTE));
        book.event(
            event(AlertEventKind::Opened, Severity::Major, 6 * MINUTE),
            &mut out,
        );
        (book, out)
    }

    /// Ticks every minute from `from` to `to` (inclusive), in minutes.
    fn ticks(book: &mut PolicyBook, from: u64, to: u64, out: &mut Vec<AlertEvent>) {
        for m in from..=to {
            book.tick(m * MINUTE, out);
        }
    }

    fn summary(out: &[AlertEvent]) -> Vec<(&'static str, TimeMs, bool, bool)> {
        out.iter()
            .map(|e| {
                (
                    e.event.code(),
                    e.ts_ms / MINUTE,
                    e.silenced_by.is_some(),
                    e.overdue,
                )
            })
            .collect()
    }

    #[test]
    fn an_open_alert_is_repeated_then_overdue_and_its_later_events_say_so() {
        let mut book = book();
        let mut out = Vec::new();
        book.event(event(AlertEventKind::Opened, Severity::Major, 0), &mut out);
        ticks(&mut book, 1, 31, &mut out);
        book.event(
            event(AlertEventKind::Resolved, Severity::Major, 31 * MINUTE + 5),
            &mut out,
        );
        assert_eq!(
            summary(&out),
            [
                ("opened", 0, false, false),
                ("repeated", 10, false, false),
                ("repeated", 20, false, false),
                ("overdue", 25, false, true),
                // Ten minutes after the last notification, the overdue one.
                ("resolved", 31, false, true),
            ]
        );
        // Every event id is distinct (a receiver keys on them).
        let ids: std::collections::BTreeSet<_> = out.iter().map(|e| &e.id).collect();
        assert_eq!(ids.len(), out.len());
        assert_eq!(book.open_count(), 0);
    }

    #[test]
    fn an_acknowledgement_stops_reminders_and_escalation() {
        let mut book = book();
        let mut out = Vec::new();
        book.event(event(AlertEventKind::Opened, Severity::Major, 0), &mut out);
        book.control(ack(12 * MINUTE));
        ticks(&mut book, 1, 60, &mut out);
        assert_eq!(
            summary(&out),
            [
                ("opened", 0, false, false),
                ("repeated", 10, false, false),
                ("acknowledged", 12, false, false),
            ]
        );
        assert_eq!(out[2].acknowledged_by.as_deref(), Some("ana: on it"));
    }

    #[test]
    fn a_silence_mutes_from_its_start_and_its_alerts_notify_after_its_end() {
        let mut book = book();
        let mut out = Vec::new();
        book.control(silence(1, 5 * MINUTE, 15 * MINUTE));
        // Opened before the silence: people know; the reminder due in it is skipped.
        book.event(event(AlertEventKind::Opened, Severity::Major, 0), &mut out);
        ticks(&mut book, 1, 24, &mut out);
        assert_eq!(
            summary(&out),
            [("opened", 0, false, false), ("repeated", 20, false, false)]
        );

        // Opened in the silence: kept, marked; announced when it ends.
        let (mut book, mut out) = opened_in_a_silence();
        ticks(&mut book, 7, 16, &mut out);
        assert_eq!(
            summary(&out),
            [("opened", 6, true, false), ("opened", 15, false, false)]
        );
        assert_eq!(out[0].silenced_by.as_deref(), Some("s1"));

        // Resolved inside the silence: nobody heard it open, nobody hears it resolve.
        let (mut book, mut out) = opened_in_a_silence();
        ticks(&mut book, 7, 8, &mut out);
        book.event(
            event(AlertEventKind::Resolved, Severity::Major, 9 * MINUTE),
            &mut out,
        );
        ticks(&mut book, 9, 20, &mut out);
        assert_eq!(
            summary(&out),
            [("opened", 6, true, false), ("resolved", 9, true, false)]
        );
    }

    #[test]
    fn a_tick_behind_the_event_time_does_not_end_its_silence() {
        let (mut book, mut out) = opened_in_a_silence();
        // Events are stamped at the watermark: ticks before the event's own time follow.
        ticks(&mut book, 3, 14, &mut out);
        assert_eq!(summary(&out), [("opened", 6, true, false)]);
    }

    #[test]
    fn an_expired_silence_ends_early_and_the_latest_version_wins_in_any_order() {
        for order in [[1, 2], [2, 1]] {
            let mut book = book();
            let mut out = Vec::new();
            for version in order {
                let ends = if version == 1 { 60 } else { 9 };
                book.control(silence(version, 5 * MINUTE, ends * MINUTE));
            }
            book.event(
                event(AlertEventKind::Opened, Severity::Major, 6 * MINUTE),
                &mut out,
            );
            ticks(&mut book, 7, 10, &mut out);
            assert_eq!(
                summary(&out),
                [("opened", 6, true, false), ("opened", 9, false, false)],
                "{order:?}"
            );
        }
    }

    #[test]
    fn a_silence_on_other_severities_lets_an_escalation_through() {
        let mut book = book();
        let mut out = Vec::new();
        let mut only_minor = silence(1, 0, 60 * MINUTE);
        if let AlertControl::Silence(s) = &mut only_minor {
            s.matchers.severities = vec![Severity::Minor];
        }
        book.control(only_minor);
        book.event(
            event(AlertEventKind::Opened, Severity::Minor, MINUTE),
            &mut out,
        );
        book.event(
            event(AlertEventKind::Escalated, Severity::Major, 2 * MINUTE),
            &mut out,
        );
        ticks(&mut book, 3, 3, &mut out);
        assert_eq!(
            summary(&out),
            [("opened", 1, true, false), ("escalated", 2, false, false)]
        );
    }
}
