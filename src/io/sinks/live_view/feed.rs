//! Feeding the live view from a running dataflow.

use std::sync::{Arc, Mutex};

use super::LiveStats;
use crate::dataflow::alert::AlertEvent;
use crate::dataflow::model::{DeadLetter, IngestCounts};
use crate::dataflow::{EventStream, PipelineOutputs};
use crate::io::sinks::deliver::{DeliverInOrder, to_shared};

/// The streams the live view and the dashboard follow.
pub struct ViewedStreams<'scope> {
    /// Ingest counts.
    pub counts: EventStream<'scope, IngestCounts>,
    /// Every dead letter (the pipeline's and the sinks').
    pub dead_letters: EventStream<'scope, DeadLetter>,
}

/// Delivers what [`LiveStats`] shows into `view`: every worker builds it, worker 0 (the one
/// that records go to) passes the view. Alert events go to the view too; `on_alerts` sees
/// them first (notifications).
pub fn deliver_to_view<'scope, F>(
    outputs: &PipelineOutputs<'scope>,
    streams: ViewedStreams<'scope>,
    view: &Option<Arc<Mutex<LiveStats>>>,
    mut on_alerts: F,
) where
    F: FnMut(&[AlertEvent]) + 'static,
{
    follow(&streams.counts, "ViewCounts", view, LiveStats::counts);
    follow(
        &streams.dead_letters,
        "ViewDeadLetters",
        view,
        LiveStats::dead_letters,
    );
    follow(
        &outputs.aggregates,
        "ViewAggregates",
        view,
        LiveStats::aggregates,
    );
    follow(
        &outputs.site_rollups,
        "ViewRollups",
        view,
        LiveStats::site_rollups,
    );
    follow(&outputs.late, "ViewLate", view, LiveStats::late);
    follow(
        &outputs.anomalies,
        "ViewAnomalies",
        view,
        LiveStats::anomalies,
    );
    let alert_view = view.clone();
    outputs
        .alerts
        .clone()
        .deliver_in_order("ViewAlerts", move |_, events| {
            on_alerts(&events);
            if let Some(view) = &alert_view {
                view.lock().expect("not poisoned").alerts(events);
            }
        });
}

/// Delivers one stream into the view with `apply`.
fn follow<T: timely::ExchangeData + Clone>(
    stream: &EventStream<'_, T>,
    name: &str,
    view: &Option<Arc<Mutex<LiveStats>>>,
    apply: fn(&mut LiveStats, Vec<T>),
) {
    stream
        .clone()
        .deliver_in_order(name, to_shared(view, apply));
}
