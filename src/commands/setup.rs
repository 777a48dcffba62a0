//! What `replay` and `demo` set up the same way: the schemas and pipeline a configuration
//! names, and the outputs besides their own (InfluxDB writers, notification channels), started
//! before the dataflow and finished after it.

use std::path::Path;
use std::sync::Arc;

use crate::dataflow::PipelineConfig;
use crate::dataflow::alert::AlertConfigError;
use crate::dataflow::schema::SchemaSet;
use crate::io::connect::influx::config::{InfluxConfig, InfluxConfigError};
use crate::io::sinks::influx::pool::{InfluxPool, InfluxUnwritten};
use crate::io::sinks::notify::{
    ChannelFailure, ChannelReport, Notifier, NotifyConfig, NotifyError,
};
use crate::io::support::metrics::Metrics;
use crate::io::support::schema_files::{LoadError, load_schema_dir};
use crate::io::support::summary::RunSummary;

/// Something a command could not set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The schema directory could not be loaded.
    #[error("schemas: {0}")]
    Schemas(LoadError),
    /// An alert rule names what the catalog does not have.
    #[error("pipeline.alerts: {0}")]
    Alerts(#[from] AlertConfigError),
    /// The notification channels could not start.
    #[error(transparent)]
    Notify(#[from] NotifyError),
    /// The InfluxDB writers could not start.
    #[error(transparent)]
    Influx(#[from] InfluxConfigError),
}

/// A notification channel gave up: the command stops with it, having finished the rest.
#[derive(Debug, thiserror::Error)]
#[error("{failure}")]
pub struct ChannelStop {
    /// Why.
    pub failure: ChannelFailure,
    /// What each channel did.
    pub channels: Vec<ChannelReport>,
}

/// The schemas in `dir` (none: the built-in ones) and `pipeline` with its alert rules resolved
/// against their catalog.
pub fn schemas_and_pipeline(
    dir: Option<&Path>,
    pipeline: &PipelineConfig,
) -> Result<(SchemaSet, PipelineConfig), SetupError> {
    let schemas = match dir {
        None => SchemaSet::embedded(),
        Some(dir) => load_schema_dir(dir).map_err(SetupError::Schemas)?,
    };
    let mut pipeline = pipeline.clone();
    pipeline.alerts.resolve(schemas.catalog())?;
    Ok((schemas, pipeline))
}

/// The InfluxDB writers and notification channels a command writes to besides its own outputs.
pub struct SideOutputs {
    /// The process's metrics, which they count into.
    pub metrics: Arc<Metrics>,
    /// The writers, when the configuration names an InfluxDB (every process writes its share).
    pub influx: Option<InfluxPool>,
    /// The channels, on process 0 (which receives every alert event).
    pub notifier: Option<Notifier>,
}

impl SideOutputs {
    /// Starts what `influx` and `notify` name; `leader` says whether this is process 0.
    pub fn start(
        influx: Option<&InfluxConfig>,
        notify: Option<&NotifyConfig>,
        leader: bool,
    ) -> Result<Self, SetupError> {
        let metrics = Arc::new(Metrics::default());
        let notifier = match (notify, leader) {
            (Some(notify), true) => Some(Notifier::start(notify, &metrics)?),
            _ => None,
        };
        let influx = match influx {
            Some(influx) => Some(InfluxPool::start(influx, Arc::clone(&metrics))?),
            None => None,
        };
        Ok(Self {
            metrics,
            influx,
            notifier,
        })
    }

    /// Finishes the writers and the channels after the dataflow ended with `result`, whatever
    /// it was; the summary gets InfluxDB's points. The dataflow's error comes first, then
    /// points InfluxDB did not take, then a channel that gave up, with what every channel did.
    pub fn finish<E: From<ChannelStop> + From<InfluxUnwritten>>(
        self,
        result: Result<Option<RunSummary>, E>,
    ) -> Result<(Option<RunSummary>, Vec<ChannelReport>), E> {
        let unwritten = self.influx.map(InfluxPool::finish).transpose();
        let channels = self.notifier.map(Notifier::finish).unwrap_or_default();
        let mut summary = result?;
        unwritten?;
        if let Some(failure) = channels.iter().find_map(|c| c.failure.clone()) {
            return Err(ChannelStop { failure, channels }.into());
        }
        if let Some(summary) = summary.as_mut() {
            summary.influx_points = self.metrics.influx_points.get();
        }
        Ok((summary, channels))
    }
}
