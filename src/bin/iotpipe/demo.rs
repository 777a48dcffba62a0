//! `iotpipe demo`: the simulated fleet through the dataflow in real time, with a live view.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use timely::dataflow::ProbeHandle;
use timely::dataflow::operators::{Concat, Probe};

use iotpipe::dataflow::ingest::{Ingestor, Provenance};
use iotpipe::dataflow::registry::{RegistryChange, RegistryHistory, parse_registry};
use iotpipe::io::serve::dashboard::Dashboard;
use iotpipe::io::sinks::influx::pool::InfluxPool;
use iotpipe::io::sinks::influx::sink::HeldBack;
use iotpipe::io::sinks::influx::write_outputs;
use iotpipe::io::sinks::live_view::{LiveStats, ViewedStreams, deliver_to_view};
use iotpipe::io::sinks::notify::Notification;
use iotpipe::io::sources::fleet::{Fleet, FleetConfig};
use iotpipe::io::sources::inputs::PipelineSources;
use iotpipe::io::support::latency::ArrivalLatency;
use iotpipe::io::support::metrics::{Histogram, Metrics, count_outputs};

use crate::args::{DemoArgs, check_number};

/// How often each worker moves the fleet's clock forward.
const TICK: Duration = Duration::from_millis(100);

/// The most fleet time a worker sends in one tick when it catches up after InfluxDB held it
/// back, ms.
const CATCH_UP_MS: u64 = 1_000;

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
    let timely_config = cluster.to_timely().map_err(|e| e.to_string())?;
    if cluster.processes > 1 {
        iotpipe::io::support::cluster::end_on_lost_peer();
    }
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
    let registry_text = Fleet::new(fleet_config.clone()).registry_lines().join("\n");
    let registry = parse_registry(&registry_text, schemas.catalog()).map_err(|e| e.to_string())?;
    let history = Arc::new(RegistryHistory::new(&registry));
    let registry = Arc::new(registry);
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
    let worker_influx = influx.clone();
    let worker_metrics = Arc::clone(&metrics);
    let worker_stats = Arc::clone(&stats);

    let guards = timely::execute(timely_config, move |worker| {
        let index = worker.index();
        let peers = worker.peers();
        let mut fleet = Fleet::share(fleet_config.clone(), index, peers);
        let mut ingestor = Ingestor::new(
            schemas.clone(),
            Arc::clone(&history),
            pipeline_config.event_time,
        )
        .with_max_message_bytes(pipeline_config.ingest.max_message_bytes);
        let view = (index == 0).then(|| Arc::clone(&worker_stats));
        let started = Instant::now();
        let mut sources = PipelineSources::new();
        let influx_full = HeldBack::default();
        let progress = ProbeHandle::new();
        let stored = ProbeHandle::new();
        worker.dataflow::<u64, _, _>(|scope| {
            let (outputs, counts) = sources.build(scope, &pipeline_config);
            let counts = counts.probe_with(&progress);
            let mut dead_letters = outputs.dead_letters.clone();
            if let Some(pool) = &worker_influx {
                let written = write_outputs(&outputs, pool, 0, &influx_full, schemas.catalog());
                written.readings.probe_with(&stored);
                dead_letters = dead_letters.concat(written.rejected);
            }
            let (counts, dead_letters) =
                count_outputs(&worker_metrics, counts, dead_letters, &outputs.late);
            let notifier = notifier.clone();
            let catalog = schemas.catalog().clone();
            let streams = ViewedStreams {
                counts,
                dead_letters,
            };
            deliver_to_view(&outputs, streams, &view, move |events| {
                if let Some(notifier) = &notifier {
                    notifier.send(&Notification::for_events(events, &catalog));
                }
            });
        });
        let changes: &[RegistryChange] = if index == 0 { &registry } else { &[] };
        sources.load_registry_and_close(changes);
        // A worker with no devices (more workers than devices) closes its input at once, so
        // it does not hold everyone's frontier back.
        let mut source = (fleet.device_count() > 0).then_some(sources.source);

        let mut lines = Vec::new();
        let mut next_render = started + Duration::from_secs(1);
        let mut stdout = std::io::stdout();
        // The fleet's clock: real time, unless InfluxDB held the worker back, as a broker
        // holds messages for a consumer that is behind.
        let mut fleet_ms = now_ms;
        let mut unstored = ArrivalLatency::default();
        let influx_failed = || {
            worker_influx
                .as_ref()
                .and_then(InfluxPool::failure)
                .is_some()
        };
        // A notification channel that gave up stops the demo (it says why at the end).
        let notify_failed = || notifier.as_ref().is_some_and(|n| n.failure().is_some());
        while !stop.load(Ordering::SeqCst) && duration.is_none_or(|d| started.elapsed() < d) {
            if influx_failed() || notify_failed() {
                break;
            }
            if let Some(source) = source.as_mut() {
                let wall_ms = now_ms + started.elapsed().as_millis() as u64;
                if !influx_full.is_held() && fleet_ms < wall_ms {
                    let until_ms = wall_ms.min(fleet_ms + CATCH_UP_MS);
                    lines.clear();
                    fleet.advance_to(until_ms, &mut lines);
                    let mut batch = ingestor.start_batch();
                    for (arrival_ms, line) in &lines {
                        let provenance = Provenance {
                            arrival_ms: Some(*arrival_ms),
                            offset: None,
                        };
                        ingestor.ingest(line.as_bytes(), provenance, &mut batch);
                    }
                    // The fleet has said all it has for now: a start still held is judged.
                    ingestor.release_held(&mut batch);
                    // Latency counts from when the batch's first messages were due.
                    let due = started + Duration::from_millis(fleet_ms - now_ms);
                    unstored.arrived(batch.time_ms, due, lines.len() as u64);
                    fleet_ms = until_ms;
                    worker_metrics.messages_in.inc_by(lines.len() as u64);
                    source.send(&mut batch);
                    source.advance_to(ingestor.watermarker().watermark_ms());
                    source.flush();
                }
            }
            let tick_end = Instant::now() + TICK;
            while Instant::now() < tick_end {
                worker.step_or_park(Some(tick_end.saturating_duration_since(Instant::now())));
            }
            if worker_influx.is_some() {
                let frontier = stored.with_frontier(|f| f.first().copied());
                unstored.passed(frontier, &worker_metrics.influx_latency);
            }
            if index == 0
                && let Some(frontier) = progress.with_frontier(|f| f.first().copied())
            {
                let wall_ms = now_ms + started.elapsed().as_millis() as u64;
                worker_metrics.set_watermark_lag_ms(wall_ms as i64 - frontier as i64);
            }
            if index == 0 && Instant::now() >= next_render {
                next_render += Duration::from_secs(1);
                let stats = worker_stats.lock().expect("not poisoned");
                let elapsed = started.elapsed().as_secs_f64();
                if plain {
                    println!("{}", stats.line(elapsed));
                } else {
                    // Clear the screen and draw from the top.
                    let _ = write!(stdout, "\x1b[2J\x1b[H{}", stats.screen(elapsed, devices));
                    let _ = stdout.flush();
                }
            }
        }
        // Close the source: the frontier empties and every open window is emitted.
        drop(source);
        while worker.has_dataflows() {
            if influx_failed() {
                // The InfluxDB sinks hold what they could not write: nothing more completes.
                for dataflow in worker.installed_dataflows() {
                    worker.drop_dataflow(dataflow);
                }
                break;
            }
            worker.step_or_park(Some(Duration::from_millis(10)));
            if worker_influx.is_some() {
                let frontier = stored.with_frontier(|f| f.first().copied());
                unstored.passed(frontier, &worker_metrics.influx_latency);
            }
        }
        unstored.passed(None, &worker_metrics.influx_latency);
        (index == 0).then(|| {
            let mut totals = worker_stats.lock().expect("not poisoned").totals.clone();
            totals.elapsed_s = started.elapsed().as_secs_f64();
            totals
        })
    })
    .map_err(|e| format!("timely: {e}"))?;
    let results = guards.join();
    if let Some(failure) = influx.as_ref().and_then(InfluxPool::failure) {
        return Err(failure.to_string());
    }
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
    for result in results {
        match result {
            Ok(Some(mut totals)) => {
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
            Ok(None) => {}
            Err(e) => return Err(format!("worker failed: {e}")),
        }
    }
    Ok(())
}
