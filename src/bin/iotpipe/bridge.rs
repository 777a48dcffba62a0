//! `iotpipe bridge`: reads the configuration, serves metrics, runs the bridge until SIGTERM.

use std::sync::Arc;

use iotpipe::commands::bridge::{BridgeConfig, BridgeMetrics, run_bridge};

use crate::args::BridgeArgs;

/// Runs until SIGTERM or Ctrl-C, then drains and prints what it forwarded.
pub fn run(args: BridgeArgs) -> Result<(), String> {
    let env = |name: &str| std::env::var(name).ok();
    let config = BridgeConfig::load(&args.config, env).map_err(|e| e.to_string())?;
    let password = config
        .mqtt
        .resolve_password("mqtt", env)
        .map_err(|e| e.to_string())?;
    config
        .mqtt
        .options("mqtt", password.as_ref())
        .map_err(|e| e.to_string())?;
    let metrics = Arc::new(BridgeMetrics::default());
    if let Some(listen) = config.metrics.listen {
        let address = iotpipe::io::serve::metrics::serve(listen, Arc::clone(&metrics))
            .map_err(|e| format!("metrics.listen {listen}: {e}"))?;
        tracing::info!(%address, "serving /metrics");
    }
    let stop = crate::args::stop_on_signal()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let report = runtime
        .block_on(run_bridge(&config, password, metrics, stop))
        .map_err(|e| e.to_string())?;
    eprintln!(
        "bridge: received {} (redelivered {}), forwarded {}, left for redelivery {}, \
         reconnects {}",
        report.received,
        report.redelivered,
        report.forwarded,
        report.left_for_redelivery,
        report.reconnects
    );
    Ok(())
}
