//! `iotpipe run`: reads the configuration, installs the signal handler, runs the service.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use iotpipe::commands::run::config::RunConfig;
use iotpipe::commands::run::{ServiceJob, run_service};

use crate::args::RunArgs;

/// Runs until SIGTERM or Ctrl-C.
pub fn run(args: RunArgs) -> Result<(), String> {
    let mut config = RunConfig::load(&args.config, |name| std::env::var(name).ok())
        .map_err(|e| e.to_string())?;
    let cluster = &mut config.cluster;
    cluster.workers = args.workers.unwrap_or(cluster.workers);
    cluster.processes = args.processes.unwrap_or(cluster.processes);
    cluster.process = args.process.unwrap_or(cluster.process);
    if args.hostfile.is_some() {
        cluster.hostfile = args.hostfile.clone();
    }
    let schemas = config.schemas().map_err(|e| e.to_string())?;
    config.resolve(&schemas).map_err(|e| e.to_string())?;
    let stop = Arc::new(AtomicBool::new(false));
    let handler_stop = Arc::clone(&stop);
    // SIGINT, SIGTERM and SIGHUP (ctrlc's `termination` feature).
    ctrlc::set_handler(move || handler_stop.store(true, Ordering::SeqCst))
        .map_err(|e| format!("signal handler: {e}"))?;
    let job = ServiceJob {
        kafka: config.kafka.clone(),
        source: config.source.clone(),
        schemas,
        pipeline: config.pipeline.clone(),
        metrics_listen: config.metrics.listen,
        dashboard_listen: config.dashboard.listen,
        drain_timeout_ms: config.drain_timeout_ms,
        stop,
        influx: config.influx.clone(),
    };
    run_service(job, &config.cluster).map_err(|e| e.to_string())
}
