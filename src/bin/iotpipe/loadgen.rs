//! `iotpipe loadgen` and `iotpipe fleet-passwords`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use indicatif::{ProgressBar, ProgressStyle};
use iotpipe::commands::loadgen::credentials::password_lines;
use iotpipe::commands::loadgen::{Connections, LoadPlan, Progress, Target, run_load};
use iotpipe::io::connect::secret::Secret;
use iotpipe::io::sources::fleet::FleetConfig;
use rumqttc::v5::mqttbytes::QoS;

use crate::args::{FleetPasswordsArgs, LoadgenArgs, check_number};

/// Sends the fleet, showing progress, and prints the final report.
pub fn run(args: LoadgenArgs) -> Result<(), String> {
    if args.devices == 0 {
        return Err("--devices must be at least 1".into());
    }
    if !(args.rate.is_finite() && args.rate > 0.0) {
        return Err("--rate must be above 0 (messages per second, whole fleet)".into());
    }
    if !(args.duration.is_finite() && args.duration > 0.0) {
        return Err("--duration must be above 0 (seconds)".into());
    }
    let env = |name: &str| -> Result<Secret, String> {
        std::env::var(name)
            .map(Secret)
            .map_err(|_| format!("${name} is not set"))
    };
    let connections = match args.clients {
        Some(0) => return Err("--clients must be at least 1".into()),
        Some(clients) => Connections::Shared {
            clients,
            username: args.username.clone(),
            password: args
                .password_env
                .as_deref()
                .map(env)
                .transpose()
                .map_err(|e| format!("--password-env: {e}"))?,
        },
        None => {
            if args.username.is_some() || args.password_env.is_some() {
                return Err(
                    "--username/--password-env are for shared connections: add --clients N, \
                     or use --device-secret-env for one connection per device"
                        .into(),
                );
            }
            Connections::PerDevice {
                secret: args
                    .device_secret_env
                    .as_deref()
                    .map(env)
                    .transpose()
                    .map_err(|e| format!("--device-secret-env: {e}"))?,
            }
        }
    };
    let mut target =
        Target::parse(&args.to, connections, args.ca_file.clone()).map_err(|e| e.to_string())?;
    if let Target::Mqtt(mqtt) = &mut target {
        mqtt.qos = match args.qos {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            other => return Err(format!("--qos {other}: use 0 or 1")),
        };
    }
    let start_ms = args.start_ms.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_millis() as u64
    });
    check_number("--rate", args.rate, false, "1000")?;
    check_number("--duration", args.duration, true, "60")?;
    check_number("--drain-timeout", args.drain_timeout, true, "30")?;
    let plan = LoadPlan {
        fleet: FleetConfig {
            devices: args.devices,
            rate_per_device: args.rate / args.devices as f64,
            seed: args.seed,
            start_ms,
            ..FleetConfig::default()
        },
        span_ms: (args.duration * 1000.0) as u64,
        paced: !args.unpaced,
        drain_timeout: Duration::from_secs_f64(args.drain_timeout),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let handler_stop = Arc::clone(&stop);
    ctrlc::set_handler(move || handler_stop.store(true, Ordering::SeqCst))
        .map_err(|e| format!("signal handler: {e}"))?;
    let progress = Arc::new(Progress::default());
    let expected = (args.rate * args.duration) as u64;
    let bar = ProgressBar::new(expected);
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} sent, {per_sec} {msg}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let report = runtime.block_on(async {
        let watcher = {
            let progress = Arc::clone(&progress);
            let bar = bar.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    bar.set_position(progress.sent.load(Ordering::Relaxed));
                    bar.set_message(format!(
                        "acked {}, errors {}",
                        progress.acknowledged.load(Ordering::Relaxed),
                        progress.errors.load(Ordering::Relaxed)
                    ));
                }
            })
        };
        let report = run_load(&plan, target, &args.to, Arc::clone(&progress), stop).await;
        watcher.abort();
        report
    });
    bar.finish_and_clear();
    let report = report.map_err(|e| e.to_string())?;
    eprintln!(
        "loadgen {}: sent {} ({:.0}/s over {:.1} s), acknowledged {} (no subscriber {}), \
         errors {}",
        report.target,
        report.sent,
        report.sent_per_s,
        report.elapsed_s,
        report.acknowledged,
        report.unrouted,
        report.errors
    );
    if let Some(path) = &args.report {
        let json = serde_json::to_string_pretty(&report).expect("a report serialises");
        std::fs::write(path, json + "\n")
            .map_err(|e| format!("--report {}: {e}", path.display()))?;
    }
    if report.acknowledged < report.sent {
        return Err(format!(
            "{} of {} messages were not acknowledged",
            report.sent - report.acknowledged,
            report.sent
        ));
    }
    Ok(())
}

/// Prints `user:password` for every device.
pub fn fleet_passwords(args: FleetPasswordsArgs) -> Result<(), String> {
    let secret = std::env::var(&args.secret_env)
        .map_err(|_| format!("--secret-env: ${} is not set", args.secret_env))?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for line in password_lines(&secret, args.devices) {
        use std::io::Write;
        writeln!(out, "{line}").map_err(|e| format!("stdout: {e}"))?;
    }
    Ok(())
}
