//! `/metrics`: a process's metrics in the Prometheus text format, from a thread of its own.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;

use crate::io::support::metrics::{Exposed, OPENMETRICS_CONTENT_TYPE};

/// Serves `metrics` at `http://listen/metrics` from a thread of its own, for the life of the
/// process; returns the address it listens on.
pub fn serve<M: Exposed>(listen: SocketAddr, metrics: Arc<M>) -> std::io::Result<SocketAddr> {
    super::http::serve("metrics", listen, Arc::new(MetricsEndpoint(metrics)))
}

struct MetricsEndpoint<M>(Arc<M>);

impl<M: Exposed> super::http::Handler for MetricsEndpoint<M> {
    async fn get(&self, path: &str, _query: &str, accept: &str) -> Response<Full<Bytes>> {
        if path == "/metrics" {
            metrics_response(self.0.as_ref(), accept)
        } else {
            super::http::response(404, "text/plain", "not found: try /metrics\n")
        }
    }
}

/// `metrics` in the format the client asks for: OpenMetrics for a scraper that accepts it
/// (Prometheus does), else the Prometheus text format 0.0.4 (`curl`, `promtool check metrics`).
pub fn metrics_response<M: Exposed + ?Sized>(metrics: &M, accept: &str) -> Response<Full<Bytes>> {
    let openmetrics = metrics.render();
    if accept.contains("application/openmetrics-text") {
        super::http::response(200, OPENMETRICS_CONTENT_TYPE, openmetrics)
    } else {
        super::http::response(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            to_prometheus_text(&openmetrics),
        )
    }
}

/// OpenMetrics text as the Prometheus text format 0.0.4: a counter family is named after its
/// samples (`x_total`, where OpenMetrics names the family `x`), and the `# UNIT` and `# EOF`
/// lines, which 0.0.4 does not have, are left out. Samples are the same in both.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut text = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let described = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|kind| Some((kind, line.strip_prefix(kind)?)));
        match described {
            Some((kind, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let name = if counters.contains(name) {
                    format!("{name}_total")
                } else {
                    name.to_owned()
                };
                text.push_str(&format!("{kind}{name} {tail}\n"));
            }
            None => {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openmetrics_becomes_the_text_format_promtool_reads() {
        let openmetrics = "# HELP iotpipe_x Things seen.\n# TYPE iotpipe_x counter\n\
                           iotpipe_x_total{sink=\"a\"} 3\n# HELP iotpipe_lag Lag.\n\
                           # TYPE iotpipe_lag gauge\n# UNIT iotpipe_lag seconds\n\
                           iotpipe_lag 1.5\n# EOF\n";
        assert_eq!(
            to_prometheus_text(openmetrics),
            "# HELP iotpipe_x_total Things seen.\n# TYPE iotpipe_x_total counter\n\
             iotpipe_x_total{sink=\"a\"} 3\n# HELP iotpipe_lag Lag.\n\
             # TYPE iotpipe_lag gauge\niotpipe_lag 1.5\n"
        );
    }
}
