//! Adapters between the world and the pure dataflow, in folders named by role. Imports run
//! downwards only: `support` and `connect` know no adapter; `sources` and `sinks` know
//! `support` and `connect`; `serve` may read what sinks keep; commands ([`crate::commands`])
//! wire them all. `tests/layers.rs` checks the rule.
//!
//! - [`support`]: config loading, backoff, the failure policy, cluster shape, metrics.
//! - [`connect`]: client settings shared by several adapters: HTTP, Kafka, MQTT, InfluxDB,
//!   TLS, secrets.
//! - [`sources`]: what feeds the dataflow: Kafka partitions, files, the simulated fleet.
//! - [`sinks`]: where outputs go: Kafka, InfluxDB, files, notification channels, the live view.
//! - [`serve`]: what iotpipe serves over HTTP: `/metrics` and the dashboard.

pub mod connect;
pub mod serve;
pub mod sinks;
pub mod sources;
pub mod support;
