//! Kafka as a source: telemetry partitions ([`telemetry`]) and how far ahead they are fetched
//! ([`prefetch`]) and past records too large for a response ([`oversized`]), the resume points committed beside them ([`checkpoint`]) and the registry
//! changelog ([`registry`]).

pub mod checkpoint;
pub mod oversized;
pub mod prefetch;
pub mod registry;
pub mod telemetry;
