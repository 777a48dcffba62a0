//! What a running pipeline looks like now: the statistics the terminal and the dashboard show
//! ([`LiveStats`]), fed from the dataflow by [`deliver_to_view`] (in `feed.rs`), drawn in a
//! terminal by [`LiveStats::line`] and [`LiveStats::screen`] (in `terminal.rs`).

mod feed;
mod terminal;

pub use feed::{ViewedStreams, deliver_to_view};

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Instant;

use crate::dataflow::alert::{AlertEvent, AlertEventKind};
use crate::dataflow::anomaly::AnomalyScore;
use crate::dataflow::model::{
    DeadLetter, DeviceId, IngestCounts, LateReading, MetricId, SiteRollup, WindowAggregate,
};
use crate::io::support::summary::RunSummary;

/// What the view shows, accumulated from the pipeline's outputs.
#[derive(Debug)]
pub struct LiveStats {
    started: Instant,
    /// Totals since the start.
    pub totals: RunSummary,
    /// (wall second, messages ingested) for the throughput over the last seconds.
    recent: VecDeque<(u64, u64)>,
    /// Readings per site in the latest closed window.
    busiest: BTreeMap<String, u64>,
    busiest_window_ms: u64,
    /// Open alerts by alert id: the latest event of each.
    open_alerts: BTreeMap<String, AlertEvent>,
    /// Recent windows of each device and metric, for the dashboard's charts when no
    /// InfluxDB holds them (none: InfluxDB does).
    device_windows: Option<HashMap<(DeviceId, MetricId), VecDeque<WindowPoint>>>,
    /// Recent windows of each site and metric.
    site_windows: HashMap<(String, MetricId), VecDeque<WindowPoint>>,
    /// The devices heard at each site, with the metrics each has (bit `m` for metric `m`).
    site_devices: BTreeMap<String, BTreeMap<DeviceId, u64>>,
    /// The latest closed window and how many devices it heard from.
    latest_window: Option<(u64, usize)>,
}

/// Windows kept per series for the dashboard.
pub const RECENT_WINDOWS: usize = 60;

/// One closed window of a chart.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct WindowPoint {
    /// Window start, epoch ms.
    pub t: u64,
    /// Readings.
    pub count: u64,
    /// Least reading (site windows: none).
    pub min: Option<f64>,
    /// Greatest reading (site windows: none).
    pub max: Option<f64>,
    /// Mean reading.
    pub mean: f64,
}

fn push_recent(series: &mut VecDeque<WindowPoint>, point: WindowPoint) {
    series.push_back(point);
    if series.len() > RECENT_WINDOWS {
        series.pop_front();
    }
}

impl Default for LiveStats {
    fn default() -> Self {
        Self::new()
    }
}

impl LiveStats {
    /// Empty statistics.
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            totals: RunSummary::default(),
            recent: VecDeque::new(),
            busiest: BTreeMap::new(),
            busiest_window_ms: 0,
            open_alerts: BTreeMap::new(),
            device_windows: Some(HashMap::new()),
            site_windows: HashMap::new(),
            site_devices: BTreeMap::new(),
            latest_window: None,
        }
    }

    /// Whether to keep device windows; not when the dashboard reads them from InfluxDB.
    pub fn with_device_windows(mut self, keep: bool) -> Self {
        if !keep {
            self.device_windows = None;
        }
        self
    }

    /// Adds ingest counts, as of now.
    pub fn counts(&mut self, counts: Vec<IngestCounts>) {
        let second = self.started.elapsed().as_secs();
        let messages: u64 = counts.iter().map(|c| c.messages).sum();
        for c in &counts {
            self.totals.ingest.merge(c);
        }
        match self.recent.back_mut() {
            Some((s, n)) if *s == second => *n += messages,
            _ => self.recent.push_back((second, messages)),
        }
        while self.recent.len() > 11 {
            self.recent.pop_front();
        }
    }

    /// Adds closed windows.
    pub fn aggregates(&mut self, aggregates: Vec<WindowAggregate>) {
        let mut heard: BTreeMap<u64, BTreeSet<&DeviceId>> = BTreeMap::new();
        for a in &aggregates {
            self.totals.windows += 1;
            self.totals.aggregated_readings += a.count;
            self.totals.threshold_breaches += a.threshold_breaches;
            heard
                .entry(a.window_start_ms)
                .or_default()
                .insert(&a.device_id);
            let bit = 1u64.checked_shl(a.metric.0 as u32).unwrap_or(0);
            match self
                .site_devices
                .get_mut(&a.site)
                .and_then(|d| d.get_mut(&a.device_id))
            {
                Some(metrics) => *metrics |= bit,
                None => {
                    self.site_devices
                        .entry(a.site.clone())
                        .or_default()
                        .insert(a.device_id.clone(), bit);
                }
            }
            if let Some(windows) = &mut self.device_windows {
                let point = WindowPoint {
                    t: a.window_start_ms,
                    count: a.count,
                    min: Some(a.min),
                    max: Some(a.max),
                    mean: a.mean(),
                };
                push_recent(
                    windows.entry((a.device_id.clone(), a.metric)).or_default(),
                    point,
                );
            }
        }
        if let Some((window_ms, devices)) = heard.last_key_value()
            && self
                .latest_window
                .is_none_or(|(latest, _)| *window_ms >= latest)
        {
            self.latest_window = Some((*window_ms, devices.len()));
        }
    }

    /// The latest closed window's start and the devices it heard from.
    pub fn latest_window(&self) -> Option<(u64, usize)> {
        self.latest_window
    }

    /// Sites and their devices, with the metrics of each (bit `m` for metric `m`).
    pub fn site_devices(&self) -> &BTreeMap<String, BTreeMap<DeviceId, u64>> {
        &self.site_devices
    }

    /// The recent windows of a device's metric (none: they are not kept here).
    pub fn device_windows(&self, device: &str, metric: MetricId) -> Option<Vec<WindowPoint>> {
        let windows = self.device_windows.as_ref()?;
        Some(
            windows
                .get(&(DeviceId::from(device), metric))
                .map(|w| w.iter().copied().collect())
                .unwrap_or_default(),
        )
    }

    /// The recent windows of a site's metric.
    pub fn site_windows(&self, site: &str, metric: MetricId) -> Vec<WindowPoint> {
        self.site_windows
            .get(&(site.to_owned(), metric))
            .map(|w| w.iter().copied().collect())
            .unwrap_or_default()
    }

    /// The metrics a site's windows have.
    pub fn site_metrics(&self, site: &str) -> Vec<MetricId> {
        let mut metrics: Vec<MetricId> = self
            .site_windows
            .keys()
            .filter(|(s, _)| s == site)
            .map(|(_, m)| *m)
            .collect();
        metrics.sort();
        metrics
    }

    /// Adds closed site rollups.
    pub fn site_rollups(&mut self, rollups: Vec<SiteRollup>) {
        for r in rollups {
            self.totals.site_rollups += 1;
            let point = WindowPoint {
                t: r.window_start_ms,
                count: r.count,
                min: None,
                max: None,
                mean: r.mean(),
            };
            push_recent(
                self.site_windows
                    .entry((r.site.clone(), r.metric))
                    .or_default(),
                point,
            );
            if r.window_start_ms > self.busiest_window_ms {
                self.busiest_window_ms = r.window_start_ms;
                self.busiest.clear();
            }
            if r.window_start_ms == self.busiest_window_ms {
                *self.busiest.entry(r.site).or_default() += r.count;
            }
        }
    }

    /// Adds dead letters.
    pub fn dead_letters(&mut self, dead: Vec<DeadLetter>) {
        for d in &dead {
            *self.totals.dead_letters.entry(d.reason).or_default() += 1;
        }
    }

    /// Adds late readings.
    pub fn late(&mut self, late: Vec<LateReading>) {
        self.totals.late += late.len() as u64;
    }

    /// Messages per second over the last complete seconds.
    pub fn messages_per_s(&self) -> f64 {
        let complete: Vec<u64> = self.recent.iter().rev().skip(1).map(|(_, n)| *n).collect();
        if complete.is_empty() {
            0.0
        } else {
            complete.iter().sum::<u64>() as f64 / complete.len() as f64
        }
    }

    /// Counts anomalies.
    pub fn anomalies(&mut self, scores: Vec<AnomalyScore>) {
        self.totals.count_anomalies(&scores);
    }

    /// Follows alert events: opened and escalated alerts are open until resolved.
    pub fn alerts(&mut self, events: Vec<AlertEvent>) {
        self.totals.count_alert_events(&events);
        for e in events {
            match e.event {
                AlertEventKind::Resolved => {
                    self.open_alerts.remove(&e.alert_id);
                }
                _ => {
                    self.open_alerts.insert(e.alert_id.clone(), e);
                }
            }
        }
    }

    /// Open alerts, most severe and most recent first.
    pub fn open_alerts(&self) -> Vec<&AlertEvent> {
        let mut open: Vec<&AlertEvent> = self.open_alerts.values().collect();
        open.sort_by(|a, b| b.severity.cmp(&a.severity).then(b.ts_ms.cmp(&a.ts_ms)));
        open
    }
}
