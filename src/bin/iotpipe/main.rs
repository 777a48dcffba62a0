//! `iotpipe`: the command-line entry point. Parses arguments and wires them to `io` and
//! `dataflow`; no pipeline logic lives here.

/// glibc malloc spends a quarter of the pipeline's time on its arenas and consolidation;
/// mimalloc's thread-local free lists do not (docs/benchmarks.md). Without the `mimalloc` feature
/// the system allocator serves, for heap profilers that see only malloc.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod alerts;
mod args;
mod bridge;
mod demo;
mod etl;
mod loadgen;
mod registry;
mod replay;
mod run;

use std::process::ExitCode;

use clap::Parser;

use args::{Cli, Command};

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("IOTPIPE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Replay(args) => replay::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Run(args) => run::run(args),
        Command::Bridge(args) => bridge::run(args),
        Command::Loadgen(args) => loadgen::run(args),
        Command::FleetPasswords(args) => loadgen::fleet_passwords(args),
        Command::Registry(command) => registry::run(command),
        Command::Alerts(args) => alerts::run(args),
        Command::Etl(args) => etl::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("iotpipe: {e}");
            ExitCode::FAILURE
        }
    }
}
