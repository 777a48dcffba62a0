//! `iotpipe replay`: flags and the files they name into a [`ReplayConfig`], and the report.

use iotpipe::commands::replay::{ReplayConfig, ReplayError, run_replay};
use iotpipe::io::sinks::files::replay::ReplayFiles;

use crate::args::{ReplayArgs, print_channels, setup_error};

/// Runs the replay and prints its summary.
pub fn run(args: ReplayArgs) -> Result<(), String> {
    let mut pipeline = args.pipeline.config()?;
    pipeline.anomaly.emit_all_scores |= args.all_scores;
    let config = ReplayConfig {
        events: args.events.clone(),
        registry: args.registry.clone(),
        alert_controls: args.alert_controls.clone(),
        out: args.out.clone(),
        schemas: args.pipeline.schemas.clone(),
        pipeline,
        chunk_bytes: args.chunk_bytes,
        notify: args.notify.config()?,
        influx: args.influx.config()?,
        cluster: args.cluster.config(),
    };
    // Ctrl-C or SIGTERM: finish the chunks read, emit their outputs, stop.
    let stop = crate::args::stop_on_signal()?;
    let report = match run_replay(config, stop) {
        Ok(report) => report,
        Err(ReplayError::ChannelStop(stop)) => {
            print_channels(&stop.channels);
            return Err(stop.failure.to_string());
        }
        Err(ReplayError::Setup(e)) => return Err(setup_error(e, &args.pipeline, &args.notify)),
        Err(ReplayError::Registry(e)) => return Err(format!("--registry {e}")),
        Err(ReplayError::AlertControls(e)) => return Err(format!("--alert-controls {e}")),
        // The fields checked are the flags' namesakes (`chunk_bytes`: `--chunk-bytes`).
        Err(ReplayError::Config { field, message }) => {
            return Err(format!("--{} {message}", field.replace('_', "-")));
        }
        Err(e) => return Err(e.to_string()),
    };
    print_channels(&report.channels);
    if let Some(summary) = report.summary {
        println!("{summary}");
        println!(
            "outputs           {} ({})",
            args.out.display(),
            ReplayFiles::names().join(", ")
        );
    }
    Ok(())
}
