//! `iotpipe replay`: wiring.

use std::sync::Arc;

use iotpipe::io::replay::{ReplayFiles, ReplayJob, replay};
use iotpipe::io::schemas::load_registry;

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
    let job = ReplayJob {
        events: args.events,
        registry: Arc::new(registry),
        out: args.out.clone(),
        schemas,
        pipeline,
        chunk_bytes: args.chunk_bytes,
    };
    if let Some(summary) = replay(job, &args.cluster.config()).map_err(|e| e.to_string())? {
        println!("{summary}");
        println!(
            "outputs           {} ({})",
            args.out.display(),
            ReplayFiles::names().join(", ")
        );
    }
    Ok(())
}
