//! The commands, each a configuration and a function that runs it; `src/bin/iotpipe` only turns
//! flags and the files they name into these and prints the reports:
//! [`replay::ReplayConfig`] → [`replay::run_replay`], [`demo::DemoConfig`] → [`demo::run_demo`],
//! [`bridge::config::BridgeConfig`] → [`bridge::run_bridge`],
//! [`run::config::RunConfig`] → [`run::run_service`] and [`loadgen::LoadgenConfig`] →
//! [`loadgen::run_loadgen`]. Each returns a report of what it did, or one error naming the
//! field (or server) it is about.
//!
//! - [`replay`]: the whole dataflow over a recorded file, as fast as it goes.
//! - [`demo`]: a simulated fleet in real time, with a live view.
//! - [`run`]: the service: Kafka partitions in, Kafka topics and InfluxDB out, clustered.
//! - [`bridge`]: MQTT to Kafka, acknowledging devices once Kafka has the message.
//! - [`loadgen`]: a simulated fleet publishing to MQTT or Kafka.
//! - [`registry`]: the JSON Lines registry into the metadata store and back out.

pub mod alerts;
pub mod bridge;
pub mod demo;
pub mod etl;
pub mod loadgen;
pub mod registry;
pub mod replay;
pub mod run;
pub mod setup;
