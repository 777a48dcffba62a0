//! The built-in dashboard: one page (shipped in the binary, no CDN) and the JSON it reads.
//!
//! | path | what |
//! |---|---|
//! | `/` | the page |
//! | `/api/overview` | messages/s, devices reporting, dead letters, late readings, windows |
//! | `/api/health` | throughput, watermark lag, end-to-end latency, InfluxDB points and retries |
//! | `/api/sites` | sites with their devices and metrics |
//! | `/api/devices?site=S` | a site's devices and their metrics |
//! | `/api/series?device=D&metric=M` or `?site=S&metric=M` | recent 1-minute windows |
//! | `/api/alerts` | open alerts, most severe first; with a store, who acknowledged each and the silence muting it now |
//! | `/api/silences`, `POST /api/...` | with a store: acknowledge, silence, expire (see [`actions`]) |
//! | `/api/hierarchy` or `?place=P` | from the metadata store: the orgs, or a place's child places and devices |
//! | `/api/device?id=D` | from the metadata store: a device's record, model, resolved entry and history |
//! | `/metrics` | the process's metrics, for Prometheus (as `iotpipe run`'s `[metrics]` serves) |
//!
//! With an InfluxDB, series are read back from it with InfluxQL, so the page shows what other
//! dashboards see; without one, from the pipeline's own recent windows. With a metadata store,
//! the page navigates its hierarchy (see [`metadata`]).

pub mod actions;
pub mod metadata;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use percent_encoding::percent_decode_str;
use serde_json::{Value, json};

use crate::dataflow::model::MetricId;
use crate::dataflow::schema::MetricCatalog;
use crate::io::connect::influx::query::{InfluxReader, string_literal};
use crate::io::connect::store::StoreConfig;
use crate::io::serve::http::{Handler, response};
use crate::io::serve::metrics::metrics_response;
use crate::io::sinks::influx::pool::InfluxPool;
use crate::io::sinks::live_view::{LiveStats, RECENT_WINDOWS, WindowPoint};
use crate::io::support::metrics::Metrics;

const PAGE: &str = include_str!("page.html");

/// What the dashboard shows, shared with the pipeline that fills it.
pub struct Dashboard {
    /// Outputs as they close (process 0's worker 0 fills it).
    pub stats: Arc<Mutex<LiveStats>>,
    /// The process's metrics: latency, InfluxDB counts, watermark lag.
    pub metrics: Arc<Metrics>,
    /// Metric names.
    pub catalog: Arc<MetricCatalog>,
    /// Where series are read from, if an InfluxDB holds them.
    pub influx: Option<InfluxReader>,
    /// Window length, ms (for the span of a chart).
    pub window_ms: u64,
    /// The metadata store the hierarchy is read from, if any.
    pub metadata: Option<metadata::MetadataView>,
    /// The tokens the page's actions need (write role); none: the page only shows.
    pub action_tokens: crate::io::serve::registry_api::auth::Tokens,
}

impl Dashboard {
    /// A dashboard over `stats` and `metrics`, whose charts read from the InfluxDB `influx`
    /// writes to, if any.
    pub fn new(
        stats: Arc<Mutex<LiveStats>>,
        metrics: Arc<Metrics>,
        catalog: Arc<MetricCatalog>,
        influx: Option<&InfluxPool>,
        window_ms: u64,
    ) -> Self {
        Self {
            stats,
            metrics,
            catalog,
            influx: influx.map(|pool| {
                InfluxReader::new(pool.endpoint.clone(), &pool.api, pool.config.timeout())
            }),
            window_ms,
            metadata: None,
            action_tokens: Default::default(),
        }
    }

    /// The same dashboard, whose page acknowledges and silences for holders of `tokens`.
    pub fn with_action_tokens(
        mut self,
        tokens: crate::io::serve::registry_api::auth::Tokens,
    ) -> Self {
        self.action_tokens = tokens;
        self
    }

    /// The same dashboard, navigating the hierarchy of the metadata store `store`.
    pub fn with_store(mut self, store: Option<&StoreConfig>) -> Self {
        self.metadata = store.cloned().map(metadata::MetadataView::new);
        self
    }

    /// Serves the dashboard at `listen` from a thread of its own; returns the address.
    pub fn serve(self, listen: std::net::SocketAddr) -> std::io::Result<std::net::SocketAddr> {
        let local = crate::io::serve::http::serve("dashboard", listen, Arc::new(self))?;
        tracing::info!(%local, "dashboard");
        Ok(local)
    }
}

fn json_response(status: u16, value: &Value) -> Response<Full<Bytes>> {
    response(status, "application/json", value.to_string())
}

/// The decoded `key=value` pairs of a query string.
fn parameters(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| {
            let decode = |s: &str| {
                percent_decode_str(&s.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (decode(k), decode(v))
        })
        .collect()
}

impl Dashboard {
    fn stats(&self) -> std::sync::MutexGuard<'_, LiveStats> {
        self.stats.lock().expect("not poisoned")
    }

    fn metric(&self, name: &str) -> Option<MetricId> {
        (0..self.catalog.len())
            .map(|i| MetricId(i as u16))
            .find(|m| self.catalog.name(*m) == name)
    }

    fn overview(&self) -> Value {
        let stats = self.stats();
        let totals = &stats.totals;
        let by_reason: serde_json::Map<String, Value> = totals
            .dead_letters
            .iter()
            .map(|(reason, n)| (reason.code().to_owned(), json!(n)))
            .collect();
        let (latest_window_ms, devices_reporting) = match stats.latest_window() {
            Some((window, devices)) => (json!(window), json!(devices)),
            None => (Value::Null, json!(0)),
        };
        json!({
            "messages_per_s": stats.messages_per_s(),
            "messages": totals.ingest.messages,
            "readings": totals.ingest.readings,
            "devices_reporting": devices_reporting,
            "latest_window_ms": latest_window_ms,
            "dead_letters": totals.dead_letter_total(),
            "dead_letters_by_reason": by_reason,
            "late_readings": totals.late,
            "windows": totals.windows,
            "anomalies": totals.anomaly_total(),
            "open_alerts": stats.open_alerts().len(),
            "series_source": if self.influx.is_some() { "influxdb" } else { "iotpipe" },
            "metadata_store": self.metadata.is_some(),
        })
    }

    fn health(&self) -> Value {
        let m = &self.metrics;
        let latency = &m.influx_latency;
        let latency = (latency.count() > 0).then(|| {
            json!({
                "messages": latency.count(),
                "p50_s": latency.quantile_bound_s(0.5),
                "p99_s": latency.quantile_bound_s(0.99),
                "mean_s": latency.mean_s(),
            })
        });
        json!({
            "messages_per_s": self.stats().messages_per_s(),
            "watermark_lag_s": m.watermark_lag_s(),
            "influx": self.influx.as_ref().map(|_| json!({
                "points": m.influx_points.get(),
                "retries": m.influx_retries.get(),
            })),
            "latency": latency,
        })
    }

    fn sites(&self) -> Value {
        let stats = self.stats();
        let sites: Vec<Value> = stats
            .site_devices()
            .iter()
            .map(|(site, devices)| {
                let metrics: Vec<&str> = stats
                    .site_metrics(site)
                    .into_iter()
                    .map(|m| self.catalog.name(m))
                    .collect();
                json!({"site": site, "devices": devices.len(), "metrics": metrics})
            })
            .collect();
        Value::Array(sites)
    }

    fn devices(&self, site: &str) -> Value {
        let stats = self.stats();
        let devices: Vec<Value> = stats
            .site_devices()
            .get(site)
            .into_iter()
            .flatten()
            .map(|(device, metrics)| {
                let names: Vec<&str> = (0..self.catalog.len().min(64))
                    .filter(|m| metrics & (1 << m) != 0)
                    .map(|m| self.catalog.name(MetricId(m as u16)))
                    .collect();
                json!({"device_id": device.as_str(), "metrics": names})
            })
            .collect();
        Value::Array(devices)
    }

    /// Open alerts, most severe first; with a store, each with who acknowledged it and the
    /// silence that mutes it now (the pipeline's own events follow at the next window).
    async fn alerts(&self) -> Value {
        let open: Vec<crate::dataflow::alert::AlertEvent> =
            self.stats().open_alerts().into_iter().cloned().collect();
        let state = match &self.metadata {
            Some(view) => match actions::alert_state(view, &self.catalog, &open).await {
                Ok(state) => Some(state),
                Err(e) => {
                    tracing::warn!(error = %e, "dashboard: alert state from the store");
                    None
                }
            },
            None => None,
        };
        let alerts: Vec<Value> = open
            .iter()
            .map(|a| {
                let (acked_by, silence) = match &state {
                    Some((silences, acks)) => (
                        acks.get(&a.alert_id).cloned(),
                        actions::silenced_now(silences, a).map(|s| s.id.clone()),
                    ),
                    None => (None, None),
                };
                json!({
                    "alert_id": a.alert_id,
                    "event": a.event.code(),
                    "severity": a.severity.code(),
                    "rule": a.rule,
                    "cause": a.cause.code(),
                    "site": a.site,
                    "building": a.building,
                    "device_id": a.device_id.as_deref(),
                    "metric": a.metric.map(|m| self.catalog.name(m)),
                    "ts_ms": a.ts_ms,
                    "score": a.score,
                    "value": a.value,
                    "overdue": a.overdue,
                    "acknowledged_by": acked_by.or_else(|| a.acknowledged_by.clone()),
                    "silenced_by": silence.or_else(|| a.silenced_by.clone()),
                })
            })
            .collect();
        Value::Array(alerts)
    }

    /// The silences pending or active (404 without a store).
    async fn silences(&self) -> Response<Full<Bytes>> {
        let Some(view) = &self.metadata else {
            return json_response(404, &json!({"error": "no metadata store"}));
        };
        match actions::alert_state(view, &self.catalog, &[]).await {
            Ok((silences, _)) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                let items: Vec<Value> = silences
                    .iter()
                    .map(|s| crate::io::serve::registry_api::alerts::silence_json(s, now))
                    .collect();
                json_response(200, &Value::Array(items))
            }
            Err(e) => json_response(502, &json!({"error": e.to_string()})),
        }
    }

    /// Recent windows of a device or a site, from InfluxDB when it holds them.
    async fn series(&self, query: &HashMap<String, String>) -> Result<Value, (u16, String)> {
        let name = query
            .get("metric")
            .ok_or((400, "give metric=".to_owned()))?;
        let metric = self
            .metric(name)
            .ok_or((404, format!("no metric {name:?}")))?;
        let device = query.get("device");
        let site = query.get("site");
        let (subject_tag, subject, measurement) = match (device, site) {
            (Some(d), _) => ("device_id", d, "iotpipe_aggregate"),
            (None, Some(s)) => ("site", s, "iotpipe_site_rollup"),
            (None, None) => return Err((400, "give device= or site=".to_owned())),
        };
        let Some(reader) = &self.influx else {
            let stats = self.stats();
            let points = match device {
                Some(d) => stats.device_windows(d, metric).unwrap_or_default(),
                None => stats.site_windows(subject, metric),
            };
            return Ok(json!({"source": "iotpipe", "points": points}));
        };
        let Some(latest) = self.stats().latest_window().map(|(w, _)| w) else {
            return Ok(json!({"source": "influxdb", "points": []}));
        };
        // Always bounded by time: an unbounded query can scan the whole database.
        let from = latest.saturating_sub(RECENT_WINDOWS as u64 * self.window_ms);
        let fields = if device.is_some() {
            "\"count\", \"min\", \"max\", \"mean\""
        } else {
            "\"count\", \"mean\""
        };
        let q = format!(
            "SELECT {fields} FROM \"{measurement}\" WHERE \"{subject_tag}\" = {} AND \
             \"metric\" = {} AND time >= {from}ms AND time <= {latest}ms",
            string_literal(subject),
            string_literal(name),
        );
        let (columns, rows) = reader.query(&q).await.map_err(|e| (502, e.to_string()))?;
        let column = |row: &[Value], name: &str| {
            columns
                .iter()
                .position(|c| c == name)
                .and_then(|i| row.get(i))
                .and_then(Value::as_f64)
        };
        let points: Vec<WindowPoint> = rows
            .iter()
            .filter_map(|row| {
                Some(WindowPoint {
                    t: column(row, "time")? as u64,
                    count: column(row, "count")? as u64,
                    min: column(row, "min"),
                    max: column(row, "max"),
                    mean: column(row, "mean")?,
                })
            })
            .collect();
        Ok(json!({"source": "influxdb", "points": points}))
    }
}

impl Dashboard {
    /// The store's hierarchy and devices (404 without a store or for an unknown id, 502 when
    /// the store does not answer).
    async fn metadata_response(
        &self,
        path: &str,
        query: &HashMap<String, String>,
    ) -> Response<Full<Bytes>> {
        let Some(view) = &self.metadata else {
            let error = "no metadata store: start with --database-url (demo) or [store] url (run)";
            return json_response(404, &json!({ "error": error }));
        };
        let answer = match (path, query.get("id")) {
            ("/api/hierarchy", _) => view.level(query.get("place").map(String::as_str)).await,
            (_, Some(id)) => view.device(id).await,
            (_, None) => return json_response(400, &json!({"error": "give id="})),
        };
        match answer {
            Ok(Some(value)) => json_response(200, &value),
            Ok(None) => json_response(404, &json!({"error": "not in the metadata store"})),
            Err(e) => {
                tracing::warn!(error = %e, "dashboard: metadata store");
                json_response(502, &json!({"error": e.to_string()}))
            }
        }
    }
}

impl Handler for Dashboard {
    async fn get(&self, path: &str, query: &str, accept: &str) -> Response<Full<Bytes>> {
        let query = parameters(query);
        match path {
            "/" | "/index.html" => response(200, "text/html; charset=utf-8", PAGE),
            "/api/overview" => json_response(200, &self.overview()),
            "/api/health" => json_response(200, &self.health()),
            "/api/sites" => json_response(200, &self.sites()),
            "/api/devices" => match query.get("site") {
                Some(site) => json_response(200, &self.devices(site)),
                None => json_response(400, &json!({"error": "give site="})),
            },
            "/api/alerts" => json_response(200, &self.alerts().await),
            "/api/silences" => self.silences().await,
            "/api/hierarchy" | "/api/device" => self.metadata_response(path, &query).await,
            "/metrics" => metrics_response(self.metrics.as_ref(), accept),
            "/api/series" => match self.series(&query).await {
                Ok(series) => json_response(200, &series),
                Err((status, error)) => json_response(status, &json!({"error": error})),
            },
            _ => json_response(404, &json!({"error": format!("no page {path}")})),
        }
    }

    async fn post(&self, path: &str, authorization: &str, body: Bytes) -> Response<Full<Bytes>> {
        let (status, answer) = actions::act(
            self.metadata.as_ref(),
            &self.action_tokens,
            &self.catalog,
            path,
            authorization,
            &body,
        )
        .await;
        json_response(status, &answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_are_decoded() {
        let p = parameters("site=site%200001&metric=temperature&x");
        assert_eq!(p["site"], "site 0001");
        assert_eq!(p["metric"], "temperature");
        assert_eq!(p.len(), 2);
    }
}
