//! `iotpipe alerts`: reads the configuration, runs the dispatcher until SIGTERM, reports.

use std::sync::Arc;

use iotpipe::commands::alerts::{AlertsConfig, run_alerts};
use iotpipe::io::support::metrics::Metrics;

use crate::args::{AlertsArgs, print_channels};

/// Runs until SIGTERM or Ctrl-C, or until a channel gives up.
pub fn run(args: AlertsArgs) -> Result<(), String> {
    let config = AlertsConfig::load(&args.config).map_err(|e| e.to_string())?;
    let stop = crate::args::stop_on_signal()?;
    let metrics = Arc::new(Metrics::default());
    let report = run_alerts(&config, &stop, &metrics).map_err(|e| e.to_string())?;
    print_channels(&report.channels);
    println!(
        "alert events      {} read, {} skipped (not alert events)",
        report.events, report.skipped
    );
    Ok(())
}
