//! What every adapter leans on: config loading, backoff, the failure policy, the cluster's
//! shape, metrics, run summaries and latency accounting.

pub mod backoff;
pub mod cluster;
pub mod config;
pub mod failure;
pub mod latency;
pub mod metrics;
pub mod schema_files;
pub mod summary;
