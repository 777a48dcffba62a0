//! `/metrics`: a process's metrics in the Prometheus text format, from a thread of its own.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;

use crate::io::support::metrics::Exposed;

/// Serves `metrics` at `http://listen/metrics` from a thread of its own, for the life of the
/// process; returns the address it listens on.
pub fn serve<M: Exposed>(listen: SocketAddr, metrics: Arc<M>) -> std::io::Result<SocketAddr> {
    super::http::serve("metrics", listen, Arc::new(MetricsEndpoint(metrics)))
}

struct MetricsEndpoint<M>(Arc<M>);

impl<M: Exposed> super::http::Handler for MetricsEndpoint<M> {
    async fn get(&self, path: &str, _query: &str) -> Response<Full<Bytes>> {
        let content_type = "text/plain; version=0.0.4";
        if path == "/metrics" {
            super::http::response(200, content_type, self.0.render())
        } else {
            super::http::response(404, content_type, "not found: try /metrics\n")
        }
    }
}
