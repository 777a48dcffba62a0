//! Kafka as a source: telemetry partitions ([`telemetry`]), the resume points committed beside
//! them ([`checkpoint`]) and the registry changelog ([`registry`]).

pub mod checkpoint;
pub mod registry;
pub mod telemetry;
