//! Kafka as a source: telemetry partitions ([`telemetry`]), how far ahead they are fetched
//! ([`prefetch`]) and how past a record too large for a response ([`oversized`]), the resume
//! points committed beside them ([`checkpoint`]), the larger responses that catch up with a
//! slow broker ([`catch_up`]) and the registry changelog ([`registry`]).

pub mod catch_up;
pub mod checkpoint;
pub mod oversized;
pub mod prefetch;
pub mod registry;
pub mod telemetry;
