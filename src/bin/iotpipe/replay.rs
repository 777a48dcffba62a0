//! `iotpipe replay`: wiring.

use std::sync::Arc;

use iotpipe::commands::replay::{ReplayJob, replay};
use iotpipe::io::sinks::files::replay::ReplayFiles;
use iotpipe::io::support::metrics::Metrics;
use iotpipe::io::support::schema_files::load_registry;

use crate::args::ReplayArgs;

/// Runs the replay and prints its summary.
pub fn run(args: ReplayArgs) -> Result<(), String> {
    let schemas = args.pipeline.schemas()?;
    let mut pipeline = args.pipeline.config(&schemas)?;
    pipeline.anomaly.emit_all_scores |= args.all_scores;
    if args.chunk_bytes == 0 {
        return Err("--chunk-bytes must be at least 1 (default 4194304)".into());
    }
    let registry =
        load_registry(&args.registry, &schemas).map_err(|e| format!("--registry {e}"))?;
    let cluster = args.cluster.config();
    let metrics = Arc::new(Metrics::default());
    // Process 0 receives every alert event, so only it notifies.
    let notifier = if cluster.is_leader() {
        args.notify.start(&metrics)?
    } else {
        None
    };
    // Every process writes its own share of the points.
    let influx = args.influx.start(&metrics)?;
    let job = ReplayJob {
        influx: influx.clone(),
        notifier: notifier.as_ref().map(|n| n.handle()),
        events: args.events,
        registry: Arc::new(registry),
        out: args.out.clone(),
        schemas,
        pipeline,
        chunk_bytes: args.chunk_bytes,
    };
    let result = replay(job, &cluster).map_err(|e| e.to_string());
    if let Some(influx) = influx {
        influx.finish();
    }
    let mut channel_failure = None;
    if let Some(notifier) = notifier {
        for report in notifier.finish() {
            println!(
                "notify {:<11} delivered {} (already {}), rejected {}, retries {}, undelivered {}",
                report.name,
                report.delivered,
                report.already_delivered,
                report.rejected,
                report.retries,
                report.undelivered
            );
            channel_failure = channel_failure.or(report.failure);
        }
    }
    let summary = result?;
    if let Some(failure) = channel_failure {
        return Err(failure.to_string());
    }
    if let Some(mut summary) = summary {
        summary.influx_points = metrics.influx_points.get();
        println!("{summary}");
        println!(
            "outputs           {} ({})",
            args.out.display(),
            ReplayFiles::names().join(", ")
        );
    }
    Ok(())
}
