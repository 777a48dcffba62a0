//! The iotpipe dataflow: pure stages from validated messages to windows, rollups and side outputs.
//!
//! ```text
//!  source (per partition, in src/io)             places, models, devices (changes)
//!  decode ─ registered? ─ watermark stamp                         │
//!        │ dead letters          │ TimedMessage @ watermark        ▼
//!        │                       ▼                        ResolveRegistry (join)
//!        │                   SplitLate ──► late readings           │
//!        │                       │ on time                         │
//!        │                       ▼                                 │
//!        │                    Enrich ◄─── as-of lookup ────────────┘
//!        │                       │ ├──► dead letters (unknown device)
//!        │                       ├──► readings
//!        │                       ▼
//!        │               AggregateWindows ──► window aggregates ──► RollupSites ──► site rollups
//!        │                 (and scores)
//!        │                       │ anomaly scores, stuck, level shifts
//!        │                       │ activity ──► DetectSilence ──► silences
//!        │                       ▼
//!        │          anomalies, breaches, activity ──► EvaluateAlerts ──► CorrelateSites
//!        │                                                                   │ lifecycle
//!        │           silences, acknowledgements ──► ApplyNotificationPolicy ◄┘
//!        ▼                                                  └──► alert events
//!   dead letters
//! ```
//!
//! Event time is timely time. A message enters at the watermark of its partition (see
//! [`event_time`]); windows close when the frontier, the least watermark over all partitions,
//! reaches their last millisecond. Decoding lives here ([`schema`]) but runs in the source,
//! because a message's timely time is its watermark, which only its decoded readings can tell.
//!
//! Nothing here opens a socket, a file or reads a clock: `src/io` adapts the world to these
//! streams, `src/commands` wires them into commands, and `src/bin` turns flags into configs.

pub mod alert;
pub mod anomaly;
pub mod enrich;
pub mod event_time;
pub mod gather;
pub mod ingest;
pub mod metadata;
pub mod model;
pub mod registry;
pub mod rollup;
pub mod schema;
pub mod split_late;
pub mod stamp;
pub mod warehouse;
pub mod window;

use differential_dataflow::Hashable;
use serde::{Deserialize, Serialize};
use timely::dataflow::Stream;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::{Concat, Exchange};

pub use enrich::Enrich;
pub use event_time::EventTimeConfig;
pub use metadata::{RegistryUpdate, ResolveRegistry};
pub use rollup::RollupSites;
pub use split_late::SplitLate;
pub use window::{AggregateWindows, WindowConfig};

use alert::{
    AlertConfig, AlertControl, AlertEvent, ApplyNotificationPolicy, CorrelateSites, EvaluateAlerts,
    Signal,
};
use anomaly::{AnomalyConfig, AnomalyKind, AnomalyScore, DetectSilence, FleetProgress};
use model::{
    ClockFault, DeadLetter, EnrichedMessage, LateReading, SiteRollup, TimeMs, TimedMessage,
    WindowAggregate,
};

/// A stream of `D` records whose timely time is event time (ms).
pub type EventStream<'scope, D> = Stream<'scope, TimeMs, Vec<D>>;

/// Semantics of the pipeline, the same for every source.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// What a source accepts before decoding.
    #[serde(default)]
    pub ingest: ingest::IngestConfig,
    /// Watermark lateness and the clock-skew guard.
    #[serde(default)]
    pub event_time: EventTimeConfig,
    /// Window geometry.
    #[serde(default)]
    pub window: WindowConfig,
    /// Anomaly scoring.
    #[serde(default)]
    pub anomaly: AnomalyConfig,
    /// Alert rules and lifecycle.
    #[serde(default)]
    pub alerts: AlertConfig,
}

/// What the pipeline consumes.
pub struct PipelineInputs<'scope> {
    /// Validated messages of registered devices, at their partition's watermark.
    pub messages: EventStream<'scope, TimedMessage>,
    /// Messages the source already rejected.
    pub dead_letters: EventStream<'scope, DeadLetter>,
    /// Messages of registered devices stamped far off the fleet time (see
    /// [`event_time`]): the `clock` alert rule's signal.
    pub clock_faults: EventStream<'scope, ClockFault>,
    /// Changes of the metadata: places, models, devices.
    pub registry: EventStream<'scope, RegistryUpdate>,
    /// Silences and acknowledgements, each with its own event times.
    pub alert_controls: EventStream<'scope, AlertControl>,
}

/// What the pipeline produces.
pub struct PipelineOutputs<'scope> {
    /// Validated readings of registered devices, on time, with their registry entry.
    pub readings: EventStream<'scope, EnrichedMessage>,
    /// Closed windows per device, metric and site.
    pub aggregates: EventStream<'scope, WindowAggregate>,
    /// Closed windows per site and metric.
    pub site_rollups: EventStream<'scope, SiteRollup>,
    /// Anomaly scores at or above the reporting threshold (every score with
    /// [`AnomalyConfig::emit_all_scores`]), stuck values, level shifts and silences.
    pub anomalies: EventStream<'scope, AnomalyScore>,
    /// Alert events: opened, escalated, resolved, and the notification policy's repeated,
    /// overdue and acknowledged; those a silence keeps from people carry `silenced_by`.
    pub alerts: EventStream<'scope, AlertEvent>,
    /// Readings that arrived after their window closed.
    pub late: EventStream<'scope, LateReading>,
    /// Every dead letter: the source's and the pipeline's own.
    pub dead_letters: EventStream<'scope, DeadLetter>,
    /// The resolved registry (its frontier says which changes enrichment sees).
    pub registry: enrich::RegistryArrangement<'scope>,
}

/// Builds the pipeline.
pub fn pipeline<'scope>(
    inputs: PipelineInputs<'scope>,
    config: &PipelineConfig,
) -> PipelineOutputs<'scope> {
    let registry = inputs.registry.resolve_registry();
    let (on_time, late) = inputs.messages.split_late(config.window, config.event_time);
    let (enriched, unknown_devices) = on_time.enrich(&registry, config.window);
    let registry_out = registry.clone();
    let windowed = enriched
        .clone()
        .aggregate_windows(&registry, config.window, &config.anomaly);
    let progress = windowed.activity.clone().fleet_progress();
    let silences = windowed
        .activity
        .clone()
        .detect_silence(progress.clone(), config.window);
    let anomalies = windowed.scores.concat(silences);
    let site_rollups = windowed.aggregates.clone().rollup_sites();

    let alert_config = std::sync::Arc::new(config.alerts.clone());
    let signals = anomalies
        .clone()
        .flat_map(|a| (a.kind != AnomalyKind::None).then_some(Signal::Anomaly(a)))
        .concat(windowed.breaches.map(Signal::Breach))
        .concat(
            inputs
                .clock_faults
                .exchange(|f: &ClockFault| f.device_id.hashed())
                .map(Signal::Clock),
        )
        .concat(windowed.activity.clone().map(Signal::Heard));
    let controls = inputs.alert_controls;
    let alerts = signals
        .evaluate_alerts(
            controls.clone(),
            progress.clone(),
            alert_config.clone(),
            config.window,
        )
        .correlate_sites(windowed.activity, controls.clone(), alert_config.clone())
        .apply_notification_policy(controls, progress, alert_config);
    PipelineOutputs {
        readings: enriched,
        aggregates: windowed.aggregates,
        anomalies,
        alerts,
        site_rollups,
        late,
        dead_letters: inputs.dead_letters.concat(unknown_devices),
        registry: registry_out,
    }
}
