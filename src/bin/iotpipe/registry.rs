//! `iotpipe registry import` and `export`: flags into configs, and the report.

use iotpipe::commands::registry::{ExportConfig, ImportConfig, run_export, run_import};
use iotpipe::io::connect::store::StoreConfig;

use crate::args::{RegistryCommand, StoreArgs};

fn store_config(args: &StoreArgs) -> StoreConfig {
    StoreConfig {
        password_env: args.password_env.clone(),
        ..StoreConfig::url(args.database_url.clone())
    }
}

/// Runs `registry import` or `registry export`.
pub fn run(command: RegistryCommand) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    // The store's settings are flags here: name them as such.
    let worded = |e: String| {
        e.replace("store.url", "--database-url")
            .replace("store.password_env", "--password-env")
    };
    match command {
        RegistryCommand::Import(args) => {
            let config = ImportConfig {
                file: args.file,
                store: store_config(&args.store),
                schemas: args.schemas,
            };
            let report = runtime
                .block_on(run_import(&config))
                .map_err(|e| worded(e.to_string()))?;
            eprintln!(
                "registry import: {} lines applied, {} changes logged",
                report.lines, report.changes
            );
        }
        RegistryCommand::Export(args) => {
            let config = ExportConfig {
                store: store_config(&args.store),
                out: args.out,
            };
            let lines = runtime
                .block_on(run_export(&config))
                .map_err(|e| worded(e.to_string()))?;
            eprintln!("registry export: {lines} lines");
        }
    }
    Ok(())
}
