//! What iotpipe serves over HTTP: a small server ([`http`]), `/metrics` ([`metrics`]), the
//! dashboard ([`dashboard`]) and the registry API ([`registry_api`]).

pub mod dashboard;
pub mod http;
pub mod metrics;
pub mod registry_api;
