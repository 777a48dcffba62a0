//! `iotpipe demo`: flags and the files they name into a [`DemoConfig`], and the final report.

use std::io::IsTerminal;
use std::net::SocketAddr;

use iotpipe::commands::demo::{DemoConfig, DemoError, Terminal, run_demo};
use iotpipe::io::connect::store::StoreConfig;
use iotpipe::io::support::metrics::Histogram;

use crate::args::{DemoArgs, print_channels, setup_error};

/// A quantile's bucket bound, for the final report; beyond the last bucket, the backlog grew
/// for the whole run.
fn bound_of(histogram: &Histogram, q: f64) -> String {
    match histogram.quantile_bound_s(q) {
        Some(s) => format!("<= {s} s"),
        None => "> 60 s".to_owned(),
    }
}

/// The flag behind a field of [`DemoConfig`].
fn flag_of(field: &str) -> &str {
    match field {
        "rate_per_device" => "--rate",
        "fault_share" => "--fault-share",
        "duration_s" => "--duration",
        "devices" => "--devices",
        other => other,
    }
}

/// Runs the demo until Ctrl-C or `--duration`.
pub fn run(args: DemoArgs) -> Result<(), String> {
    let pipeline = args.pipeline.config()?;
    let dashboard: Option<SocketAddr> = if args.no_dashboard {
        None
    } else {
        Some(args.listen.parse().map_err(|e| {
            format!(
                "--listen {:?}: {e} (use host:port, e.g. 127.0.0.1:8080)",
                args.listen
            )
        })?)
    };
    let plain = args.plain || !std::io::stdout().is_terminal();
    let config = DemoConfig {
        devices: args.devices,
        rate_per_device: args.rate,
        seed: args.seed,
        fault_share: args.fault_share,
        fault_start_s: args.fault_start_s,
        fault_spread_s: args.fault_spread_s,
        duration_s: args.duration,
        history_s: args.history_s,
        schemas: args.pipeline.schemas.clone(),
        pipeline,
        dashboard,
        terminal: Some(if plain {
            Terminal::Plain
        } else {
            Terminal::Screen
        }),
        notify: args.notify.config()?,
        influx: args.influx.config()?,
        store: args.database_url.as_ref().map(|url| StoreConfig {
            password_env: args.database_password_env.clone(),
            ..StoreConfig::url(url.clone())
        }),
        action_token_env: args.action_token_env.clone(),
        cluster: args.cluster.config(),
    };
    let stop = crate::args::stop_on_signal()?;
    let report = match run_demo(config, stop) {
        Ok(report) => report,
        Err(DemoError::ChannelStop(stop)) => {
            print_channels(&stop.channels);
            return Err(stop.failure.to_string());
        }
        Err(e) => return Err(flag_error(&args, e)),
    };
    print_channels(&report.channels);
    if let Some(totals) = report.summary {
        println!("\nfinal\n{totals}");
        let latency = &report.metrics.influx_latency;
        if latency.count() > 0 {
            println!(
                "influx latency    p50 {}, p99 {}, mean {:.3} s ({} messages, this process)",
                bound_of(latency, 0.5),
                bound_of(latency, 0.99),
                latency.mean_s().unwrap_or_default(),
                latency.count()
            );
            let request = &report.metrics.influx_request;
            println!(
                "influx batches    {}, p50 {}, p99 {}, mean {:.3} s",
                request.count(),
                bound_of(request, 0.5),
                bound_of(request, 0.99),
                request.mean_s().unwrap_or_default()
            );
        }
    }
    Ok(())
}

/// A demo error in the words of the flags that fed the field.
fn flag_error(args: &DemoArgs, error: DemoError) -> String {
    match error {
        DemoError::Config { field, message } => format!("{} {message}", flag_of(field)),
        DemoError::Setup(e) => setup_error(e, &args.pipeline, &args.notify),
        DemoError::Dashboard { listen, source } => format!("--listen {listen}: {source}"),
        // The store's settings are flags here: name them as such.
        DemoError::Store(e) => e
            .to_string()
            .replace("store.url", "--database-url")
            .replace("store.password_env", "--database-password-env"),
        other => other.to_string(),
    }
}
