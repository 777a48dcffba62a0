//! Kafka as a source: telemetry partitions ([`telemetry`]), how far ahead they are fetched
//! ([`prefetch`]) and how past a record too large for a response ([`oversized`]), the resume
//! points committed beside them ([`checkpoint`]) and the registry changelog ([`registry`]).

pub mod checkpoint;
pub mod oversized;
pub mod prefetch;
pub mod registry;
pub mod telemetry;
