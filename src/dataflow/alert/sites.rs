//! Outage alerts: when many of a building's or a site's devices are silent at once, the place
//! is the problem (power, network), and one alert for it replaces its devices' silence alerts.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use differential_dataflow::Hashable;
use rustc_hash::FxHashMap;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::{Broadcast, Map};
use timely::dataflow::operators::{Capability, Concat, Exchange as _};

use super::book::alert_id;
use super::control::{AlertControl, RulesInForce};
use super::rules::{AlertConfig, Cause, OutageRule};
use super::{AlertEvent, AlertEventKind};
use crate::dataflow::EventStream;
use crate::dataflow::anomaly::DeviceActivity;
use crate::dataflow::gather::GatherByTime;
use crate::dataflow::model::{DeviceId, TimeMs};

/// A place outages are found at: a site, or a building of one (building names repeat across
/// sites). Sites order before their buildings.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct PlaceKey {
    site: String,
    building: Option<String>,
}

impl PlaceKey {
    /// The places a device is in: its site, and its building if it has one.
    fn of(site: &str, building: &str) -> impl Iterator<Item = PlaceKey> {
        let site_key = PlaceKey {
            site: site.to_owned(),
            building: None,
        };
        let building_key = (!building.is_empty()).then(|| PlaceKey {
            site: site.to_owned(),
            building: Some(building.to_owned()),
        });
        std::iter::once(site_key).chain(building_key)
    }

    /// The subject of its alert ids.
    fn subject(&self) -> String {
        match &self.building {
            None => self.site.clone(),
            Some(b) => format!("{}/{b}", self.site),
        }
    }
}

/// One place's state.
#[derive(Default)]
struct Place {
    /// Devices heard lately: their last reading and how long they are remembered.
    known: FxHashMap<DeviceId, (TimeMs, u64)>,
    /// Devices with an open silence alert.
    silent: BTreeSet<DeviceId>,
    /// The open outage alert: its id, and whether its site's alert mutes it (a building that
    /// went dark with its site was not announced, nor is its end).
    alert: Option<(String, bool)>,
    /// (Sites only.) Devices whose silence alerts an outage alert replaced (their resolutions
    /// are dropped too).
    replaced: BTreeSet<DeviceId>,
    /// The place's organisation, as its devices say.
    org: String,
}

impl Place {
    fn silent_share(&self) -> f64 {
        self.silent.len() as f64 / self.known.len().max(1) as f64
    }
}

/// Correlates device alerts per building and site.
pub trait CorrelateSites<'scope> {
    /// Passes device alert events through, except that when at least the configured share of a
    /// building's or a site's devices (seen in their forget time) are silent at once
    /// (`[building]`, `[site]` of the rules), it opens one alert for the place and drops those
    /// devices' silence events (and later ones there) while it is open. An outage alert
    /// resolves when fewer than half that share are still silent. A site's outage explains its
    /// buildings': a building alert that opens while its site's is open is not announced.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    ///
    /// use iotpipe::dataflow::alert::{
    ///     AlertConfig, AlertControl, AlertEvent, AlertEventKind, Cause, CorrelateSites, Severity,
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
    ///     let no_controls = Vec::<AlertControl>::new().to_stream(scope);
    ///     events
    ///         .correlate_sites(activity, no_controls, Arc::new(AlertConfig::default()))
    ///         .map(|e| (e.event.code(), e.cause.code(), e.device_id.map(|d| d.to_string())))
    ///         .capture()
    /// });
    /// let events: Vec<_> = captured.extract().into_iter().flat_map(|(_, e)| e).collect();
    /// assert_eq!(events, vec![("opened", "site", None)]);
    /// ```
    fn correlate_sites(
        self,
        activity: EventStream<'scope, DeviceActivity>,
        controls: EventStream<'scope, AlertControl>,
        config: Arc<AlertConfig>,
    ) -> EventStream<'scope, AlertEvent>;
}

/// What the correlation's second input brings: activity (by site) or a control (to all).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
enum Heard {
    Activity(DeviceActivity),
    Control(AlertControl),
}

impl<'scope> CorrelateSites<'scope> for EventStream<'scope, AlertEvent> {
    fn correlate_sites(
        self,
        activity: EventStream<'scope, DeviceActivity>,
        controls: EventStream<'scope, AlertControl>,
        config: Arc<AlertConfig>,
    ) -> EventStream<'scope, AlertEvent> {
        let events_by_site = Exchange::new(|e: &AlertEvent| e.site.hashed());
        let heard = activity
            .exchange(|a: &DeviceActivity| a.device.site.hashed())
            .map(Heard::Activity)
            .concat(controls.broadcast().map(Heard::Control));
        self.binary_frontier(
            heard,
            events_by_site,
            Pipeline,
            "CorrelateSites",
            move |_cap, _info| {
                let mut rules = RulesInForce::new(config);
                let mut places: FxHashMap<PlaceKey, Place> = FxHashMap::default();
                let mut pending: GatherByTime<Capability<TimeMs>, Vec<AlertEvent>, Vec<Heard>> =
                    GatherByTime::default();
                move |(events, frontier), (activity, activity_frontier), output| {
                    events.for_each(|cap, data| {
                        let Some(&time) = cap.least() else { return };
                        pending.at(time, || cap.delayed(&time, 0)).0.append(data);
                    });
                    activity.for_each(|cap, data| {
                        let Some(&time) = cap.least() else { return };
                        pending.at(time, || cap.delayed(&time, 0)).1.append(data);
                    });
                    while let Some((time, cap, mut events, heard)) =
                        pending.next_ready(&[frontier, activity_frontier])
                    {
                        let mut activity = Vec::with_capacity(heard.len());
                        for h in heard {
                            match h {
                                Heard::Activity(a) => activity.push(a),
                                Heard::Control(c) => rules.offer(&c),
                            }
                        }
                        rules.advance(time);
                        let config = Arc::clone(rules.current());
                        events.sort_by(|a, b| a.id.cmp(&b.id));
                        // Places whose silent set changed, with the latest event time that did it.
                        let mut touched: BTreeMap<PlaceKey, TimeMs> = BTreeMap::new();
                        for a in activity {
                            for key in PlaceKey::of(&a.device.site, &a.device.building) {
                                let place = places.entry(key).or_default();
                                if place.org != a.device.org {
                                    place.org.clone_from(&a.device.org);
                                }
                                let last = place.known.entry(a.device_id.clone()).or_insert((0, 0));
                                *last = (last.0.max(a.last_ts_ms), a.forget_after_ms);
                                let latest = last.0;
                                place.known.retain(|_, (t, forget)| *t + *forget > latest);
                            }
                        }
                        for e in &events {
                            let Some(device_id) = &e.device_id else {
                                continue;
                            };
                            if e.cause != Cause::Silence {
                                continue;
                            }
                            for key in PlaceKey::of(&e.site, &e.building) {
                                let place = places.entry(key.clone()).or_default();
                                match e.event {
                                    AlertEventKind::Opened => {
                                        place.silent.insert(device_id.clone());
                                        place
                                            .known
                                            .entry(device_id.clone())
                                            .or_insert((e.ts_ms, u64::MAX / 2));
                                    }
                                    AlertEventKind::Resolved => {
                                        place.silent.remove(device_id);
                                    }
                                    _ => {}
                                }
                                let at = touched.entry(key).or_insert(e.ts_ms);
                                *at = (*at).max(e.ts_ms);
                            }
                        }
                        // Sites first (they order before their buildings): a site that goes dark
                        // with its buildings mutes theirs.
                        let mut place_events = Vec::new();
                        for (key, ts_ms) in &touched {
                            let site_open = key.building.is_some()
                                && places
                                    .get(&PlaceKey {
                                        site: key.site.clone(),
                                        building: None,
                                    })
                                    .is_some_and(|s| s.alert.is_some());
                            let rule = match key.building {
                                None => &config.site,
                                Some(_) => &config.building,
                            };
                            let place = places.get_mut(key).expect("touched");
                            let share = place.silent_share();
                            let outage = Outage {
                                key,
                                org: &place.org,
                                ts_ms: *ts_ms,
                                share,
                                rule,
                            };
                            match &place.alert {
                                None if rule.min_devices > 0
                                    && place.silent.len() >= rule.min_devices
                                    && share >= rule.silent_share =>
                                {
                                    let id = alert_id(&key.subject(), None, outage.cause(), *ts_ms);
                                    if !site_open {
                                        place_events
                                            .push(outage.event(&id, AlertEventKind::Opened));
                                    }
                                    place.alert = Some((id, site_open));
                                }
                                Some((id, muted)) if share < rule.silent_share / 2.0 => {
                                    if !muted {
                                        place_events
                                            .push(outage.event(id, AlertEventKind::Resolved));
                                    }
                                    place.alert = None;
                                }
                                _ => {}
                            }
                        }
                        let mut session = output.session(&cap);
                        for e in events {
                            if e.cause == Cause::Silence
                                && let Some(device_id) = &e.device_id
                            {
                                let explained = PlaceKey::of(&e.site, &e.building)
                                    .any(|k| places.get(&k).is_some_and(|p| p.alert.is_some()));
                                let site = places
                                    .entry(PlaceKey {
                                        site: e.site.clone(),
                                        building: None,
                                    })
                                    .or_default();
                                if explained && e.event == AlertEventKind::Opened {
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
                        session.give_iterator(place_events.into_iter());
                    }
                }
            },
        )
    }
}

/// A place's outage, as its alert events say it.
struct Outage<'a> {
    key: &'a PlaceKey,
    org: &'a str,
    ts_ms: TimeMs,
    share: f64,
    rule: &'a OutageRule,
}

impl Outage<'_> {
    fn cause(&self) -> Cause {
        match self.key.building {
            None => Cause::Site,
            Some(_) => Cause::Building,
        }
    }

    fn event(&self, alert_id: &str, event: AlertEventKind) -> AlertEvent {
        let ts_ms = self.ts_ms;
        AlertEvent {
            id: format!("{alert_id}/{}/{ts_ms}", event.code()),
            alert_id: alert_id.to_string(),
            event,
            device_id: None,
            site: self.key.site.clone(),
            org: self.org.to_string(),
            building: self.key.building.clone().unwrap_or_default(),
            metric: None,
            rule: match self.key.building {
                None => "site-silent",
                Some(_) => "building-silent",
            }
            .to_string(),
            severity: self.rule.severity,
            cause: self.cause(),
            ts_ms,
            score: None,
            value: Some(self.share),
            silenced_by: None,
            overdue: false,
            acknowledged_by: None,
        }
    }
}
