//! `iotpipe demo`: the simulated fleet through the dataflow in real time, with a live view.

use std::cell::RefCell;
use std::io::{IsTerminal, Write};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use iotpipe::dataflow::ingest::Ingestor;
use iotpipe::dataflow::registry::{RegistryChange, RegistryHistory, parse_registry};
use iotpipe::io::deliver::{DeliverInOrder, to_shared};
use iotpipe::io::fleet::{Fleet, FleetConfig};
use iotpipe::io::live::LiveStats;
use iotpipe::io::notify::Notification;
use iotpipe::io::source::PipelineSources;

use crate::args::DemoArgs;

/// How often each worker moves the fleet's clock forward.
const TICK: Duration = Duration::from_millis(100);

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
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64;
    let fleet_config = FleetConfig {
        devices: args.devices,
        rate_per_device: args.rate,
        seed: args.seed,
        start_ms: now_ms,
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
        args.notify.start()?
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

    let guards = timely::execute(timely_config, move |worker| {
        let index = worker.index();
        let peers = worker.peers();
        let mut fleet = Fleet::share(fleet_config.clone(), index, peers);
        let mut ingestor = Ingestor::new(
            schemas.clone(),
            Arc::clone(&history),
            pipeline_config.event_time,
        );
        let stats = Rc::new(RefCell::new(LiveStats::new()));
        let view = Some(Rc::clone(&stats));
        let started = Instant::now();
        let mut sources = PipelineSources::new();
        worker.dataflow::<u64, _, _>(|scope| {
            let (outputs, counts) = sources.build(scope, &pipeline_config);
            counts.deliver_in_order("ViewCounts", to_shared(&view, LiveStats::counts));
            outputs
                .aggregates
                .deliver_in_order("ViewAggregates", to_shared(&view, LiveStats::aggregates));
            outputs
                .site_rollups
                .deliver_in_order("ViewRollups", to_shared(&view, LiveStats::site_rollups));
            outputs
                .dead_letters
                .deliver_in_order("ViewDeadLetters", to_shared(&view, LiveStats::dead_letters));
            outputs
                .late
                .deliver_in_order("ViewLate", to_shared(&view, LiveStats::late));
            outputs
                .anomalies
                .deliver_in_order("ViewAnomalies", to_shared(&view, LiveStats::anomalies));
            let alert_view = view.clone();
            let notifier = notifier.clone();
            let catalog = schemas.catalog().clone();
            outputs
                .alerts
                .deliver_in_order("ViewAlerts", move |_, events| {
                    if let Some(notifier) = &notifier {
                        notifier.send(&Notification::for_events(&events, &catalog));
                    }
                    if let Some(view) = &alert_view {
                        view.borrow_mut().alerts(events);
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
        while !stop.load(Ordering::SeqCst) && duration.is_none_or(|d| started.elapsed() < d) {
            if let Some(source) = source.as_mut() {
                let event_now = now_ms + started.elapsed().as_millis() as u64;
                lines.clear();
                fleet.advance_to(event_now, &mut lines);
                let mut batch = ingestor.start_batch();
                for (_, line) in &lines {
                    ingestor.ingest(line.as_bytes(), &mut batch);
                }
                source.send(&mut batch);
                source.advance_to(ingestor.watermarker().watermark_ms());
                source.flush();
            }
            let tick_end = Instant::now() + TICK;
            while Instant::now() < tick_end {
                worker.step_or_park(Some(tick_end.saturating_duration_since(Instant::now())));
            }
            if index == 0 && Instant::now() >= next_render {
                next_render += Duration::from_secs(1);
                let stats = stats.borrow();
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
            worker.step_or_park(None);
        }
        (index == 0).then(|| {
            let mut totals = stats.borrow().totals.clone();
            totals.elapsed_s = started.elapsed().as_secs_f64();
            totals
        })
    })
    .map_err(|e| format!("timely: {e}"))?;
    let results = guards.join();
    if let Some(notify) = notify {
        for report in notify.finish() {
            println!(
                "notify {:<11} delivered {}, rejected {}, retries {}, undelivered {}",
                report.name, report.delivered, report.rejected, report.retries, report.undelivered
            );
        }
    }
    for result in results {
        match result {
            Ok(Some(totals)) => println!("\nfinal\n{totals}"),
            Ok(None) => {}
            Err(e) => return Err(format!("worker failed: {e}")),
        }
    }
    Ok(())
}
