//! Kafka as a source: telemetry partitions ([`telemetry`]) and how far ahead they are fetched
//! ([`prefetch`]), the resume points committed beside them ([`checkpoint`]) and the registry
//! changelog ([`registry`]).

pub mod checkpoint;
pub mod prefetch;
pub mod registry;
pub mod telemetry;
