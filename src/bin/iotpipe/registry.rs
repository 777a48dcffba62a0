//! `iotpipe registry import` and `export`: flags into configs, and the report.

use iotpipe::commands::registry::{
    ExportConfig, ImportConfig, ServeConfig, run_export, run_import, run_serve,
};
use iotpipe::io::connect::store::StoreConfig;
use iotpipe::io::serve::registry_api::auth::{Role, TokenConfig};

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
        RegistryCommand::Serve(args) => {
            let tokens = (args.read_token_env.iter().map(|v| (Role::Read, v)))
                .chain(args.write_token_env.iter().map(|v| (Role::Write, v)))
                .map(|(role, token_env)| TokenConfig {
                    role,
                    token_env: token_env.clone(),
                })
                .collect();
            let config = ServeConfig {
                listen: args.listen,
                store: store_config(&args.store),
                tokens,
                schemas: args.schemas,
            };
            let stop = crate::args::stop_on_signal()?;
            let shutdown = async move {
                while !stop.load(std::sync::atomic::Ordering::Acquire) {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            };
            let worded_tokens = |e: String| {
                worded(e).replace(
                    "tokens: none given",
                    "--read-token-env/--write-token-env: none given",
                )
            };
            runtime
                .block_on(run_serve(
                    &config,
                    |name| std::env::var(name).ok(),
                    |local| eprintln!("registry API listening on http://{local}"),
                    shutdown,
                ))
                .map_err(|e| worded_tokens(e.to_string()))?;
        }
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
