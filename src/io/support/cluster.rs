//! The shape of the timely cluster: workers per process, processes, and their addresses.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// How many workers run, and where (timely's own `-w`, `-n`, `-p`, `-h`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Worker threads in this process.
    pub workers: usize,
    /// Number of processes in the cluster.
    pub processes: usize,
    /// This process's index, `0..processes`.
    pub process: usize,
    /// A file with one `host:port` a line, one line per process (needed when `processes > 1`).
    pub hostfile: Option<PathBuf>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            workers: 1,
            processes: 1,
            process: 0,
            hostfile: None,
        }
    }
}

/// A cluster shape that cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A field has a value that cannot work.
    #[error("cluster.{field}: {message}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The host file could not be read.
    #[error("cluster.hostfile {path}: {source}")]
    Hostfile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Makes a lost cluster peer end this process with one clear error instead of a cascade of
/// panics and backtraces.
///
/// Timely's network thread panics when a peer's socket closes, and the workers then panic on
/// the poisoned queues. Nothing can go on without the peer (the frontier waits for it), and
/// nothing is lost by stopping: outputs are committed only up to what the sinks have written,
/// so the restarted cluster resumes from its checkpoints. Call it once, before the cluster
/// starts, in a process of a cluster of several.
pub fn end_on_lost_peer() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let message = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or_default();
            if is_lost_peer(message) {
                tracing::error!(cause = message, "cluster peer lost");
                eprintln!(
                    "iotpipe: cluster peer lost ({message}): this process stops; restart every \
                     process of the cluster, and they resume from their checkpoints"
                );
                std::process::exit(1);
            }
            default(info);
        }));
    });
}

/// Whether a panic message is timely's report of a peer gone (or its consequence).
fn is_lost_peer(message: &str) -> bool {
    message.starts_with("timely communication error") || message == "MergeQueue poisoned."
}

impl ClusterConfig {
    /// Whether this process is the one that writes cluster-wide outputs (process 0).
    pub fn is_leader(&self) -> bool {
        self.process == 0
    }

    /// The timely configuration for this shape.
    pub fn to_timely(&self) -> Result<timely::Config, ClusterError> {
        let invalid = |field, message: String| ClusterError::Invalid { field, message };
        if self.workers == 0 {
            return Err(invalid("workers", "must be at least 1 (-w 1)".into()));
        }
        if self.processes == 0 {
            return Err(invalid("processes", "must be at least 1 (-n 1)".into()));
        }
        if self.process >= self.processes {
            return Err(invalid(
                "process",
                format!(
                    "is {} but must be below processes ({})",
                    self.process, self.processes
                ),
            ));
        }
        let communication = if self.processes > 1 {
            let path = self.hostfile.clone().ok_or_else(|| {
                invalid(
                    "hostfile",
                    "is required with more than one process (-h hosts.txt)".into(),
                )
            })?;
            let text = std::fs::read_to_string(&path).map_err(|source| ClusterError::Hostfile {
                path: path.clone(),
                source,
            })?;
            let addresses: Vec<String> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .take(self.processes)
                .map(String::from)
                .collect();
            if addresses.len() < self.processes {
                return Err(invalid(
                    "hostfile",
                    format!(
                        "{} lists {} addresses but processes is {}",
                        path.display(),
                        addresses.len(),
                        self.processes
                    ),
                ));
            }
            timely::CommunicationConfig::Cluster {
                threads: self.workers,
                process: self.process,
                addresses,
                report: false,
                zerocopy: false,
            }
        } else if self.workers > 1 {
            timely::CommunicationConfig::Process(self.workers)
        } else {
            timely::CommunicationConfig::Thread
        };
        Ok(timely::Config {
            communication,
            worker: timely::WorkerConfig::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timely_reports_of_a_lost_peer_are_recognised() {
        assert!(is_lost_peer(
            "timely communication error: reading data: socket closed"
        ));
        assert!(is_lost_peer("MergeQueue poisoned."));
        assert!(!is_lost_peer("index out of bounds"));
    }
}
