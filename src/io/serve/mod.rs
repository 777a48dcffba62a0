//! What iotpipe serves over HTTP: a small server ([`http`]), `/metrics` ([`metrics`]) and the
//! dashboard ([`dashboard`]).

pub mod dashboard;
pub mod http;
pub mod metrics;
