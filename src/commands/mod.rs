//! The commands: each a job (what it needs, its servers and channels started) and a function
//! that runs it. `src/bin/iotpipe` only turns flags and files into these jobs and prints reports.
//!
//! - [`replay`]: the whole dataflow over a recorded file, as fast as it goes.
//! - [`demo`]: a simulated fleet in real time, with a live view.
//! - [`run`]: the service: Kafka partitions in, Kafka topics and InfluxDB out, clustered.
//! - [`bridge`]: MQTT to Kafka, acknowledging devices once Kafka has the message.
//! - [`loadgen`]: a simulated fleet publishing to MQTT or Kafka.

pub mod bridge;
pub mod demo;
pub mod loadgen;
pub mod replay;
pub mod run;
