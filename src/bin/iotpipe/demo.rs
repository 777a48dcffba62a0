//! `iotpipe demo`: flags into a [`DemoJob`], the channels and servers it uses, and the final
//! report.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use iotpipe::commands::demo::{DemoJob, Terminal, run_demo};
use iotpipe::io::serve::dashboard::Dashboard;
use iotpipe::io::sinks::live_view::LiveStats;
use iotpipe::io::sources::fleet::FleetConfig;
use iotpipe::io::support::metrics::{Histogram, Metrics};

use crate::args::{DemoArgs, check_number};

/// A quantile's bucket bound, for the final report; beyond the last bucket, the backlog grew
/// for the whole run.
fn bound_of(histogram: &Histogram, q: f64) -> String {
    match histogram.quantile_bound_s(q) {
        Some(s) => format!("<= {s} s"),
        None => "> 60 s".to_owned(),
    }
}

/// Runs the demo until Ctrl-C or `--duration`.
pub fn run(args: DemoArgs) -> Result<(), String> {
    let schemas = args.pipeline.schemas()?;
    let pipeline_config = args.pipeline.config(&schemas)?;
    if args.devices == 0 {
        return Err("--devices must be at least 1 (default 2000)".into());
    }
    if !(args.rate > 0.0 && args.rate <= 1000.0) {
        return Err(
            "--rate must be above 0 and at most 1000 messages/s per device (default 1)".into(),
        );
    }
    let cluster = args.cluster.config();
    // A wrong cluster shape is said before any server starts.
    cluster.to_timely().map_err(|e| e.to_string())?;
    let listen: Option<SocketAddr> = if args.no_dashboard || !cluster.is_leader() {
        None
    } else {
        Some(args.listen.parse().map_err(|e| {
            format!(
                "--listen {:?}: {e} (use host:port, e.g. 127.0.0.1:8080)",
                args.listen
            )
        })?)
    };
    let metrics = Arc::new(Metrics::default());
    let influx = args.influx.start(&metrics)?;
    let stats = Arc::new(Mutex::new(
        LiveStats::new().with_device_windows(influx.is_none()),
    ));
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64;
    if !(0.0..=1.0).contains(&args.fault_share) {
        return Err("--fault-share must be between 0 and 1 (default 0.01)".into());
    }
    check_number("--rate", args.rate, false, "1")?;
    if let Some(duration) = args.duration {
        check_number("--duration", duration, true, "until Ctrl-C")?;
    }
    let fault_start_ms = args.fault_start_s * 1000;
    let fleet_config = FleetConfig {
        devices: args.devices,
        rate_per_device: args.rate,
        seed: args.seed,
        start_ms: now_ms,
        fault_share: args.fault_share,
        fault_start_ms: (fault_start_ms, fault_start_ms + args.fault_spread_s * 1000),
        ..FleetConfig::default()
    };
    let stop = Arc::new(AtomicBool::new(false));
    let handler_stop = Arc::clone(&stop);
    ctrlc::set_handler(move || handler_stop.store(true, Ordering::SeqCst))
        .map_err(|e| format!("Ctrl-C handler: {e}"))?;
    let duration = args.duration.map(Duration::from_secs_f64);
    let plain = args.plain || !std::io::stdout().is_terminal();
    let devices = args.devices;
    // Process 0 receives every alert event, so only it notifies.
    let notify = if cluster.is_leader() {
        args.notify.start(&metrics)?
    } else {
        None
    };
    let notifier = notify.as_ref().map(|n| n.handle());
    tracing::info!(
        devices,
        rate = args.rate,
        workers = cluster.workers,
        "demo starting"
    );
    if let Some(listen) = listen {
        let dashboard = Dashboard::new(
            Arc::clone(&stats),
            Arc::clone(&metrics),
            Arc::clone(schemas.catalog()),
            influx.as_ref(),
            pipeline_config.window.length_ms,
        );
        let local = dashboard
            .serve(listen)
            .map_err(|e| format!("--listen {listen}: {e}"))?;
        // Printed before the live view takes the screen, and for scripts that wait for it.
        println!("dashboard at http://{local}/");
    }
    let job = DemoJob {
        fleet: fleet_config,
        schemas,
        pipeline: pipeline_config,
        duration,
        stop,
        terminal: Some(if plain {
            Terminal::Plain
        } else {
            Terminal::Screen
        }),
        stats,
        metrics: Arc::clone(&metrics),
        influx: influx.clone(),
        notifier,
    };
    let result = run_demo(job, &cluster);
    if let Some(influx) = influx {
        influx.finish();
    }
    if let Some(notify) = notify {
        let mut channel_failure = None;
        for report in notify.finish() {
            println!(
                "notify {:<11} delivered {}, rejected {}, retries {}, undelivered {}",
                report.name, report.delivered, report.rejected, report.retries, report.undelivered
            );
            channel_failure = channel_failure.or(report.failure);
        }
        if let Some(failure) = channel_failure {
            return Err(failure.to_string());
        }
    }
    if let Some(mut totals) = result.map_err(|e| e.to_string())? {
        totals.influx_points = metrics.influx_points.get();
        println!("\nfinal\n{totals}");
        let latency = &metrics.influx_latency;
        if latency.count() > 0 {
            println!(
                "influx latency    p50 {}, p99 {}, mean {:.3} s ({} messages, this process)",
                bound_of(latency, 0.5),
                bound_of(latency, 0.99),
                latency.mean_s().unwrap_or_default(),
                latency.count()
            );
            let request = &metrics.influx_request;
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
