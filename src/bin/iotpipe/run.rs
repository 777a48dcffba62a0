//! `iotpipe run`: reads the configuration, installs the signal handler, runs the service.

use iotpipe::commands::run::config::RunConfig;
use iotpipe::commands::run::run_service;

use crate::args::RunArgs;

/// Runs until SIGTERM or Ctrl-C, then writes the report if `--report` asks for it.
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
    // SIGINT, SIGTERM and SIGHUP (ctrlc's `termination` feature).
    let stop = crate::args::stop_on_signal()?;
    let report = run_service(config, stop).map_err(|e| e.to_string())?;
    if let Some(path) = &args.report {
        let json = serde_json::to_string_pretty(&report).expect("a report serialises");
        std::fs::write(path, json + "\n")
            .map_err(|e| format!("--report {}: {e}", path.display()))?;
    }
    Ok(())
}
