//! `iotpipe etl`: reads the configuration, runs one pass (or one per `--every` period until
//! SIGTERM), prints what it did.

use iotpipe::commands::etl::config::parse_period;
use iotpipe::commands::etl::{EtlConfig, EtlRun, run_etl};

use crate::args::EtlArgs;

/// Runs the ETL as the flags say.
pub fn run(args: EtlArgs) -> Result<(), String> {
    let mut config = EtlConfig::load(&args.config).map_err(|e| e.to_string())?;
    config.workers = args.workers.unwrap_or(config.workers);
    let every_ms = args
        .every
        .as_deref()
        .map(|text| {
            parse_period(text)
                .ok_or_else(|| format!("--every: {text:?} is not a period: use 30s, 15m, 1h or 1d"))
        })
        .transpose()?;
    let run = EtlRun {
        from: args.from,
        to: args.to,
        every_ms,
        force: args.force,
        progress: true,
    };
    let stop = crate::args::stop_on_signal()?;
    let report = run_etl(&config, &run, stop).map_err(|e| e.to_string())?;
    println!(
        "days              {} examined: {} written, {} unchanged, {} without data, {} kept (fewer windows in the store)",
        report.days_examined,
        report.days_written,
        report.days_unchanged,
        report.days_empty,
        report.days_kept
    );
    println!(
        "read              {} device-hours, {} windows of hours a device moved in",
        report.rows_read, report.windows_read
    );
    println!(
        "written           {} rows, {} bytes of Parquet ({} device versions)",
        report.rows_written, report.bytes_written, report.dimension_rows
    );
    println!("seconds           {:.2}", report.seconds);
    if let Some(path) = &args.report {
        let json = serde_json::to_string_pretty(&report).expect("a report serialises");
        std::fs::write(path, json + "\n")
            .map_err(|e| format!("--report {}: {e}", path.display()))?;
    }
    Ok(())
}
