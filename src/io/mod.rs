//! Adapters between the world and the pure dataflow: files, the simulated fleet, the terminal.

pub mod backoff;
pub mod bridge;
pub mod cluster;
pub mod config;
pub mod dashboard;
pub mod deliver;
pub mod detection;
pub mod failure;
pub mod fleet;
pub mod http;
pub mod influx;
pub mod jsonl;
pub mod kafka;
pub mod latency;
pub mod live;
pub mod loadgen;
pub mod metrics;
pub mod mqtt;
pub mod notify;
pub mod replay;
pub mod schemas;
pub mod service;
pub mod source;
pub mod summary;
