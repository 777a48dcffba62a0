//! Site alerts: when many of a site's devices are silent at once, the site is the problem.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use differential_dataflow::Hashable;
use rustc_hash::FxHashMap;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::Operator;

use super::book::alert_id;
use super::rules::{AlertConfig, Cause};
use super::{AlertEvent, AlertEventKind};
use crate::dataflow::EventStream;
use crate::dataflow::anomaly::DeviceActivity;
use crate::dataflow::gather::GatherByTime;
use crate::dataflow::model::{DeviceId, TimeMs};

/// One site's state.
#[derive(Default)]
struct Site {
    /// Devices heard lately: their last reading and how long they are remembered.
    known: FxHashMap<DeviceId, (TimeMs, u64)>,
    /// Devices with an open silence alert.
    silent: BTreeSet<DeviceId>,
    /// The open site alert: its id.
    alert: Option<String>,
    /// Devices whose silence alerts the site alert replaced (their resolutions are dropped too).
    replaced: BTreeSet<DeviceId>,
    /// The site's organisation, as its devices say.
    org: String,
}

impl Site {
    fn silent_share(&self) -> f64 {
        self.silent.len() as f64 / self.known.len().max(1) as f64
    }
}

/// Correlates device alerts per site.
pub trait CorrelateSites<'scope> {
    /// Passes device alert events through, except that when at least the configured share of a
    /// site's devices (seen in their forget time) are silent at once, it opens one site alert
    /// and drops those devices' silence events (and later ones of the site) while it is open.
    /// The site alert resolves when fewer than half that share are still silent.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    ///
    /// use iotpipe::dataflow::alert::{
    ///     AlertConfig, AlertEvent, AlertEventKind, Cause, CorrelateSites, Severity,
    /// };
    /// use iotpipe::dataflow::anomaly::DeviceActivity;
    /// use iotpipe::dataflow::model::DeviceInfo;
    /// use timely::dataflow::operators::capture::Extract;
    /// use timely::dataflow::operators::vec::Map;
    /// use timely::dataflow::operators::{Capture, ToStream};
    ///
    /// // Four devices of site-a were heard; three of them go silent at once. One site alert
    /// // replaces their three silence alerts (the shipped rule: half the site, 3 devices).
    /// let device = Arc::new(DeviceInfo { site: "site-a".into(), ..DeviceInfo::default() });
    /// let heard = move |n: u32| DeviceActivity {
    ///     device_id: format!("dev-{n}").into(),
    ///     device: Arc::clone(&device),
    ///     window_start_ms: 0,
    ///     first_ts_ms: 1_000,
    ///     last_ts_ms: 50_000,
    ///     slots: 1,
    ///     silence_timeout_ms: 120_000,
    ///     forget_after_ms: 3_600_000,
    /// };
    /// let silent = |n: u32| AlertEvent {
    ///     id: format!("dev-{n}/silence/opened"),
    ///     alert_id: format!("dev-{n}/silence"),
    ///     event: AlertEventKind::Opened,
    ///     device_id: Some(format!("dev-{n}").into()),
    ///     site: "site-a".into(),
    ///     org: "acme".into(),
    ///     building: "hall-1".into(),
    ///     metric: None,
    ///     rule: "device-silent".into(),
    ///     severity: Severity::Major,
    ///     cause: Cause::Silence,
    ///     ts_ms: 170_000,
    ///     score: Some(1.0),
    ///     value: None,
    ///     silenced_by: None,
    ///     overdue: false,
    ///     acknowledged_by: None,
    /// };
    /// let captured = timely::example(move |scope| {
    ///     let activity = (1..=4).map(heard).collect::<Vec<_>>().to_stream(scope);
    ///     let events = (1..=3).map(silent).collect::<Vec<_>>().to_stream(scope);
    ///     events
    ///         .correlate_sites(activity, Arc::new(AlertConfig::default()))
    ///         .map(|e| (e.event.code(), e.cause.code(), e.device_id.map(|d| d.to_string())))
    ///         .capture()
    /// });
    /// let events: Vec<_> = captured.extract().into_iter().flat_map(|(_, e)| e).collect();
    /// assert_eq!(events, vec![("opened", "site", None)]);
    /// ```
    fn correlate_sites(
        self,
        activity: EventStream<'scope, DeviceActivity>,
        config: Arc<AlertConfig>,
    ) -> EventStream<'scope, AlertEvent>;
}

impl<'scope> CorrelateSites<'scope> for EventStream<'scope, AlertEvent> {
    fn correlate_sites(
        self,
        activity: EventStream<'scope, DeviceActivity>,
        config: Arc<AlertConfig>,
    ) -> EventStream<'scope, AlertEvent> {
        let events_by_site = Exchange::new(|e: &AlertEvent| e.site.hashed());
        let activity_by_site = Exchange::new(|a: &DeviceActivity| a.device.site.hashed());
        self.binary_frontier(
            activity,
            events_by_site,
            activity_by_site,
            "CorrelateSites",
            move |_cap, _info| {
                let mut sites: FxHashMap<String, Site> = FxHashMap::default();
                let mut pending: GatherByTime<
                    Capability<TimeMs>,
                    Vec<AlertEvent>,
                    Vec<DeviceActivity>,
                > = GatherByTime::default();
                move |(events, frontier), (activity, activity_frontier), output| {
                    events.for_each(|cap, data| {
                        let Some(&time) = cap.least() else { return };
                        pending.at(time, || cap.delayed(&time, 0)).0.append(data);
                    });
                    activity.for_each(|cap, data| {
                        let Some(&time) = cap.least() else { return };
                        pending.at(time, || cap.delayed(&time, 0)).1.append(data);
                    });
                    while let Some((_, cap, mut events, heard)) =
                        pending.next_ready(&[frontier, activity_frontier])
                    {
                        events.sort_by(|a, b| a.id.cmp(&b.id));
                        // Sites whose silent set changed, with the latest event time that did it.
                        let mut touched: BTreeMap<String, TimeMs> = BTreeMap::new();
                        for a in heard {
                            let site = sites.entry(a.device.site.clone()).or_default();
                            if site.org != a.device.org {
                                site.org.clone_from(&a.device.org);
                            }
                            let last = site.known.entry(a.device_id.clone()).or_insert((0, 0));
                            *last = (last.0.max(a.last_ts_ms), a.forget_after_ms);
                            let latest = last.0;
                            site.known.retain(|_, (t, forget)| *t + *forget > latest);
                        }
                        for e in &events {
                            if e.cause != Cause::Silence {
                                continue;
                            }
                            let (Some(device_id), site) =
                                (&e.device_id, sites.entry(e.site.clone()).or_default())
                            else {
                                continue;
                            };
                            match e.event {
                                AlertEventKind::Opened => {
                                    site.silent.insert(device_id.clone());
                                    site.known
                                        .entry(device_id.clone())
                                        .or_insert((e.ts_ms, u64::MAX / 2));
                                }
                                AlertEventKind::Resolved => {
                                    site.silent.remove(device_id);
                                }
                                _ => {}
                            }
                            let at = touched.entry(e.site.clone()).or_insert(e.ts_ms);
                            *at = (*at).max(e.ts_ms);
                        }
                        let rule = &config.site;
                        let mut site_events = Vec::new();
                        for (name, ts_ms) in &touched {
                            let site = sites.get_mut(name).expect("touched");
                            let share = site.silent_share();
                            match &site.alert {
                                None if site.silent.len() >= rule.min_devices
                                    && share >= rule.silent_share =>
                                {
                                    let id = alert_id(name, None, Cause::Site, *ts_ms);
                                    site_events.push(site_event(
                                        &id,
                                        name,
                                        &site.org,
                                        AlertEventKind::Opened,
                                        *ts_ms,
                                        share,
                                        &config,
                                    ));
                                    site.alert = Some(id);
                                }
                                Some(id) if share < rule.silent_share / 2.0 => {
                                    site_events.push(site_event(
                                        id,
                                        name,
                                        &site.org,
                                        AlertEventKind::Resolved,
                                        *ts_ms,
                                        share,
                                        &config,
                                    ));
                                    site.alert = None;
                                }
                                _ => {}
                            }
                        }
                        let mut session = output.session(&cap);
                        for e in events {
                            if e.cause == Cause::Silence
                                && let Some(device_id) = &e.device_id
                                && let Some(site) = sites.get_mut(&e.site)
                            {
                                if site.alert.is_some() && e.event == AlertEventKind::Opened {
                                    site.replaced.insert(device_id.clone());
                                    continue;
                                }
                                if e.event == AlertEventKind::Resolved
                                    && site.replaced.remove(device_id)
                                {
                                    continue;
                                }
                            }
                            session.give(e);
                        }
                        session.give_iterator(site_events.into_iter());
                    }
                }
            },
        )
    }
}

fn site_event(
    alert_id: &str,
    site: &str,
    org: &str,
    event: AlertEventKind,
    ts_ms: TimeMs,
    share: f64,
    config: &AlertConfig,
) -> AlertEvent {
    AlertEvent {
        id: format!("{alert_id}/{}/{ts_ms}", event.code()),
        alert_id: alert_id.to_string(),
        event,
        device_id: None,
        site: site.to_string(),
        org: org.to_string(),
        building: String::new(),
        metric: None,
        rule: "site-silent".to_string(),
        severity: config.site.severity,
        cause: Cause::Site,
        ts_ms,
        score: None,
        value: Some(share),
        silenced_by: None,
        overdue: false,
        acknowledged_by: None,
    }
}
