//! Alerting: rules over the dataflow's signals open, escalate and resolve alerts, and sites
//! with many silent devices get one alert instead of many.
//!
//! Signals are anomaly scores and findings, closed windows over registry thresholds, and device
//! activity (which ends silences). [`EvaluateAlerts`] runs where the signals are (partitioned
//! by device) and keeps one [`book::AlertBook`] per worker; [`CorrelateSites`] runs
//! partitioned by site. Both work in event-time order, driven by the frontier, so alert events
//! and their ids are the same for any number of workers and for a replay of the same input:
//! a sink that remembers ids never delivers one twice.

pub mod book;
pub mod control;
pub mod policy;
pub mod rules;
mod sites;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::Operator;

pub use control::AlertControl;
pub use policy::{ApplyNotificationPolicy, BySeverity, NotificationPolicy, PolicyBook};
pub use rules::{AlertConfig, AlertConfigError, Cause, Severity};
pub use sites::CorrelateSites;

use crate::dataflow::EventStream;
use crate::dataflow::anomaly::{AnomalyKind, AnomalyScore, DeviceActivity};
use crate::dataflow::gather::GatherByTime;
use crate::dataflow::model::{ClockFault, DeviceId, MetricId, ThresholdBreach, TimeMs};
use crate::dataflow::window::WindowConfig;
use book::AlertBook;

/// What happened to an alert.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertEventKind {
    /// The alert opened.
    Opened,
    /// A rule of higher severity fired while it was open.
    Escalated,
    /// A reminder: still open, nobody acknowledged it (see [`NotificationPolicy`]).
    Repeated,
    /// Still unacknowledged at its escalation time: escalation channels hear of it from now.
    Overdue,
    /// Someone took it on.
    Acknowledged,
    /// Its condition cleared.
    Resolved,
}

impl AlertEventKind {
    /// The event's code.
    pub fn code(self) -> &'static str {
        match self {
            Self::Opened => "opened",
            Self::Escalated => "escalated",
            Self::Repeated => "repeated",
            Self::Overdue => "overdue",
            Self::Acknowledged => "acknowledged",
            Self::Resolved => "resolved",
        }
    }
}

/// One alert event, as notification channels send it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlertEvent {
    /// The event's id: the alert's id, the event and its time. A replay gives the same ids.
    pub id: String,
    /// The alert's id: its subject, cause and the time it opened.
    pub alert_id: String,
    /// What happened.
    pub event: AlertEventKind,
    /// The device (none for a site alert).
    pub device_id: Option<DeviceId>,
    /// The site (of the device, or the site alerted).
    pub site: String,
    /// The organisation (of the device, or of the site alerted).
    #[serde(default)]
    pub org: String,
    /// The device's building (empty for a site alert).
    #[serde(default)]
    pub building: String,
    /// The metric, where one applies.
    pub metric: Option<MetricId>,
    /// The rule that fired (the highest-severity one so far).
    pub rule: String,
    /// Its severity.
    pub severity: Severity,
    /// What the alert is about.
    pub cause: Cause,
    /// Event time at which it happened.
    pub ts_ms: TimeMs,
    /// The anomaly score behind it, if any.
    pub score: Option<f64>,
    /// The value behind it, if any (the reading, the extreme of a breaching window, the share
    /// of a site's devices silent).
    pub value: Option<f64>,
    // No `skip_serializing_if` here: events cross processes in bincode, which needs every
    // field; the JSON line (`alerts.jsonl`) leaves the empty ones out.
    /// The silence that keeps this event from people (none: channels send it).
    #[serde(default)]
    pub silenced_by: Option<String>,
    /// The alert stayed unacknowledged past its escalation time (see [`NotificationPolicy`]).
    #[serde(default)]
    pub overdue: bool,
    /// Who acknowledged it, and their note (`acknowledged` events).
    #[serde(default)]
    pub acknowledged_by: Option<String>,
}

/// A signal alert rules look at.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Signal {
    /// An anomaly score, a stuck or level-shift finding, or a silence.
    Anomaly(AnomalyScore),
    /// A closed window with readings outside the registry thresholds.
    Breach(ThresholdBreach),
    /// A device was heard in a closed window (ends its silence alert).
    Heard(DeviceActivity),
    /// A device's message was stamped far off the fleet time.
    Clock(ClockFault),
}

impl Signal {
    /// The order signals of one timely time are applied in: by event time, then subject.
    fn order_key(&self) -> (TimeMs, &str, u8, Option<MetricId>, AnomalyKind) {
        match self {
            Self::Anomaly(a) => (a.ts_ms, &a.device_id, 0, a.metric, a.kind),
            Self::Breach(b) => (
                b.window.window_start_ms,
                &b.window.device_id,
                1,
                Some(b.window.metric),
                AnomalyKind::None,
            ),
            Self::Heard(h) => (h.window_start_ms, &h.device_id, 2, None, AnomalyKind::None),
            Self::Clock(c) => (c.at_ms, &c.device_id, 3, None, AnomalyKind::None),
        }
    }
}

/// Evaluates alert rules.
pub trait EvaluateAlerts<'scope> {
    /// Applies each time's signals in event-time order once the frontier has passed it, and
    /// at each tick (a window close time, seen by every worker) resolves alerts whose condition
    /// has cleared. The signals must be partitioned by device. A rules change among `controls`
    /// holds from the first time at or after its effective time (see
    /// [`control::RulesInForce`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    ///
    /// use iotpipe::dataflow::WindowConfig;
    /// use iotpipe::dataflow::alert::{AlertConfig, AlertControl, EvaluateAlerts, Signal};
    /// use iotpipe::dataflow::anomaly::{AnomalyKind, AnomalyScore};
    /// use iotpipe::dataflow::model::DeviceInfo;
    /// use timely::dataflow::operators::capture::Extract;
    /// use timely::dataflow::operators::vec::Map;
    /// use timely::dataflow::operators::{Capture, Input, ToStream};
    ///
    /// // A device fell silent at 130 s: the shipped rules open a silence alert for it.
    /// let silence = Signal::Anomaly(AnomalyScore {
    ///     device_id: "dev-1".into(),
    ///     device: Arc::new(DeviceInfo { site: "site-a".into(), ..DeviceInfo::default() }),
    ///     metric: None,
    ///     ts_ms: 130_000,
    ///     value: None,
    ///     score: 1.0,
    ///     kind: AnomalyKind::Silence,
    /// });
    /// let captured = timely::example(move |scope| {
    ///     let (_ticks_input, ticks) = scope.new_input::<Vec<u64>>();
    ///     let no_controls = Vec::<AlertControl>::new().to_stream(scope);
    ///     let events = vec![silence].to_stream(scope).evaluate_alerts(
    ///         no_controls,
    ///         ticks,
    ///         Arc::new(AlertConfig::default()),
    ///         WindowConfig::default(),
    ///     );
    ///     events
    ///         .map(|e| (e.event.code(), e.cause.code(), e.site, e.ts_ms))
    ///         .capture()
    /// });
    /// let events: Vec<_> = captured.extract().into_iter().flat_map(|(_, e)| e).collect();
    /// assert_eq!(events, vec![("opened", "silence", "site-a".to_string(), 130_000)]);
    /// ```
    fn evaluate_alerts(
        self,
        controls: EventStream<'scope, AlertControl>,
        ticks: EventStream<'scope, TimeMs>,
        config: Arc<AlertConfig>,
        window: WindowConfig,
    ) -> EventStream<'scope, AlertEvent>;
}

impl<'scope> EvaluateAlerts<'scope> for EventStream<'scope, Signal> {
    fn evaluate_alerts(
        self,
        controls: EventStream<'scope, AlertControl>,
        ticks: EventStream<'scope, TimeMs>,
        config: Arc<AlertConfig>,
        window: WindowConfig,
    ) -> EventStream<'scope, AlertEvent> {
        let controls_and_ticks = controls_and_ticks(controls, ticks);
        self.binary_frontier(
            controls_and_ticks,
            Pipeline,
            Pipeline,
            "EvaluateAlerts",
            move |_cap, _info| {
                let mut rules = control::RulesInForce::new(Arc::clone(&config));
                let mut book = AlertBook::new(config, window.length_ms);
                // Per time: its signals, and its controls (none: a tick).
                let mut pending: GatherByTime<
                    Capability<TimeMs>,
                    Vec<Signal>,
                    Vec<Option<AlertControl>>,
                > = GatherByTime::default();
                let mut events = Vec::new();
                move |(input, frontier), (controls, controls_frontier), output| {
                    input.for_each(|cap, data| {
                        let Some(&time) = cap.least() else { return };
                        pending.at(time, || cap.delayed(&time, 0)).0.append(data);
                    });
                    controls.for_each(|cap, data| {
                        let Some(&time) = cap.least() else { return };
                        pending.at(time, || cap.delayed(&time, 0)).1.append(data);
                    });
                    while let Some((time, cap, mut signals, controls)) =
                        pending.next_ready(&[frontier, controls_frontier])
                    {
                        let tick = controls.iter().any(Option::is_none);
                        for control in controls.iter().flatten() {
                            rules.offer(control);
                        }
                        if let Some(config) = rules.advance(time) {
                            book.set_config(config);
                        }
                        if tick {
                            book.tick(time, &mut events);
                        }
                        signals.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
                        for signal in &signals {
                            book.apply(signal, &mut events);
                        }
                        output.session(&cap).give_container(&mut events);
                    }
                }
            },
        )
    }
}

/// Controls from every worker to every worker (`Some`), with the ticks (`None`): the second
/// input of the alert stages, which take both in timely-time order.
pub(crate) fn controls_and_ticks<'scope>(
    controls: EventStream<'scope, AlertControl>,
    ticks: EventStream<'scope, TimeMs>,
) -> EventStream<'scope, Option<AlertControl>> {
    use timely::dataflow::operators::Concat;
    use timely::dataflow::operators::vec::{Broadcast, Map};
    controls.broadcast().map(Some).concat(ticks.map(|_| None))
}
