//! `iotpipe loadgen` and `iotpipe fleet-passwords`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use iotpipe::commands::loadgen::credentials::password_lines;
use iotpipe::commands::loadgen::{
    LoadError, LoadgenConfig, LoadgenConfigError, LoadgenMqttConfig, Progress, run_loadgen,
};

use crate::args::{FleetPasswordsArgs, LoadgenArgs};

/// The flag that sets each field of [`LoadgenConfig`], longest field first.
const FLAGS: [(&str, &str); 11] = [
    ("mqtt.device_secret_env", "--device-secret-env"),
    ("mqtt.password_env", "--password-env"),
    ("drain_timeout_s", "--drain-timeout"),
    ("mqtt.username", "--username"),
    ("mqtt.ca_file", "--ca-file"),
    ("mqtt.clients", "--clients"),
    ("duration_s", "--duration"),
    ("rate_per_s", "--rate"),
    ("mqtt.qos", "--qos"),
    ("devices", "--devices"),
    ("`to`", "--to"),
];

/// The configuration the flags describe.
fn config_of(args: &LoadgenArgs) -> LoadgenConfig {
    LoadgenConfig {
        to: args.to.clone(),
        devices: args.devices,
        rate_per_s: args.rate,
        duration_s: args.duration,
        seed: args.seed,
        start_ms: args.start_ms,
        paced: !args.unpaced,
        drain_timeout_s: args.drain_timeout,
        mqtt: LoadgenMqttConfig {
            qos: args.qos,
            clients: args.clients,
            username: args.username.clone(),
            password_env: args.password_env.clone(),
            device_secret_env: args.device_secret_env.clone(),
            ca_file: args.ca_file.clone(),
        },
    }
}

/// A configuration error in the words of the flags.
fn flag_error(error: &LoadgenConfigError) -> String {
    let mut message = error.message.clone();
    for (field, flag) in FLAGS {
        message = message.replace(field, flag);
    }
    let field = if error.field == "to" {
        "`to`"
    } else {
        error.field
    };
    let flag = FLAGS
        .iter()
        .find(|(name, _)| *name == field)
        .map_or(field, |(_, flag)| flag);
    format!("{flag}: {message}")
}

/// Sends the fleet, showing progress, and prints the final report.
pub fn run(args: LoadgenArgs) -> Result<(), String> {
    let config = config_of(&args);
    let stop = crate::args::stop_on_signal()?;
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
        let report = run_loadgen(&config, Arc::clone(&progress), stop).await;
        watcher.abort();
        report
    });
    bar.finish_and_clear();
    let report = report.map_err(|e| match e {
        LoadError::Config(e) => flag_error(&e),
        other => other.to_string(),
    })?;
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
