//! Events a channel could not deliver before a run ended, kept for the next run.

use std::collections::VecDeque;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::Ordering;

use tokio::sync::mpsc;

use super::{Channel, ChannelCounts, Notification};

/// Reads and removes a spool file (none: nothing pending).
pub fn take(path: &Path) -> std::io::Result<VecDeque<Notification>> {
    if !path.exists() {
        return Ok(VecDeque::new());
    }
    let text = std::fs::read_to_string(path)?;
    let pending = text
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).map_err(std::io::Error::other))
        .collect::<Result<VecDeque<Notification>, _>>()?;
    std::fs::remove_file(path)?;
    Ok(pending)
}

/// Keeps what a channel still holds: the pending events and whatever is queued. Written to the
/// spool file when there is one, else logged by id; counted as undelivered either way.
pub fn keep<C: Channel>(
    channel: &C,
    counts: &ChannelCounts,
    mut pending: VecDeque<Notification>,
    mut queue: mpsc::UnboundedReceiver<Notification>,
    path: Option<&Path>,
) {
    while let Ok(n) = queue.try_recv() {
        pending.push_back(n);
    }
    counts
        .undelivered
        .fetch_add(pending.len() as u64, Ordering::Relaxed);
    let written = path.map(|path| -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        for n in &pending {
            writeln!(
                file,
                "{}",
                serde_json::to_string(n).map_err(std::io::Error::other)?
            )?;
        }
        file.sync_all()
    });
    match written {
        Some(Ok(())) => tracing::warn!(
            channel = %channel.name(),
            events = pending.len(),
            spool = %path.expect("written").display(),
            "undelivered alert events kept for the next run"
        ),
        Some(Err(e)) => {
            tracing::error!(channel = %channel.name(), error = %e, events = pending.len(), "could not keep undelivered alert events")
        }
        None => {
            for n in &pending {
                tracing::error!(channel = %channel.name(), id = %n.id, "alert event undelivered (no ledger_dir to keep it)");
            }
        }
    }
}
