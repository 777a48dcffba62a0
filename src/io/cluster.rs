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
