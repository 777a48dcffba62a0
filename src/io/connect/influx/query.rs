//! Reading back from InfluxDB with InfluxQL (`GET /query`, which 1.x serves and 2.x and 3.x
//! keep for compatibility), for the dashboard: it shows what dashboards see.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::Value;

use crate::io::connect::http::{HttpConnection, HttpEndpoint};
use crate::io::connect::influx::write::InfluxApi;

/// A query InfluxDB did not answer with rows.
#[derive(Debug, thiserror::Error)]
pub enum InfluxQueryError {
    /// No answer.
    #[error(transparent)]
    Http(#[from] crate::io::connect::http::HttpError),
    /// An answer with an error status.
    #[error("influxdb answered HTTP {status}: {answer}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// What it said.
        answer: String,
    },
    /// An answer that is not InfluxQL's JSON.
    #[error("influxdb's answer: {0}")]
    Answer(#[from] serde_json::Error),
    /// InfluxDB refused the query.
    #[error("influxdb: {0}")]
    Query(String),
}

/// Runs InfluxQL queries against one database.
#[derive(Clone, Debug)]
pub struct InfluxReader {
    endpoint: HttpEndpoint,
    database: String,
    authorization: Option<String>,
    timeout: Duration,
}

impl InfluxReader {
    /// A reader of the database `api` writes to, at `endpoint`.
    pub fn new(endpoint: HttpEndpoint, api: &InfluxApi, timeout: Duration) -> Self {
        let database = match api {
            InfluxApi::V1 { database, .. } => database.clone(),
            InfluxApi::V2 { bucket, .. } => bucket.clone(),
        };
        Self {
            endpoint,
            database,
            authorization: api.authorization(),
            timeout,
        }
    }

    /// The rows of the first series `q` answers, as `(column names, rows)`; times are epoch
    /// ms. No series is an empty answer, not an error.
    pub async fn query(&self, q: &str) -> Result<(Vec<String>, Vec<Vec<Value>>), InfluxQueryError> {
        let path = format!(
            "/query?db={}&epoch=ms&q={}",
            utf8_percent_encode(&self.database, NON_ALPHANUMERIC),
            utf8_percent_encode(q, NON_ALPHANUMERIC)
        );
        let body = self.get(path).await?;
        let answer: Value = serde_json::from_slice(&body)?;
        let result = &answer["results"][0];
        if let Some(error) = result["error"].as_str() {
            return Err(InfluxQueryError::Query(error.to_owned()));
        }
        let series = &result["series"][0];
        let columns = series["columns"]
            .as_array()
            .map(|c| {
                c.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let rows = series["values"]
            .as_array()
            .map(|rows| rows.iter().filter_map(|r| r.as_array().cloned()).collect())
            .unwrap_or_default();
        Ok((columns, rows))
    }
}

/// One series of a query's answer: its tags (those the query grouped by), its columns and its
/// rows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Series {
    /// Tag values, by key, of the `GROUP BY` tags.
    pub tags: std::collections::BTreeMap<String, String>,
    /// Column names; the first is `time` (epoch ms).
    pub columns: Vec<String>,
    /// Rows, in time order.
    pub rows: Vec<Vec<Value>>,
}

/// One answer object of a chunked response: InfluxDB sends a series in parts, each marked
/// `partial` but the last.
#[derive(serde::Deserialize)]
struct Chunk {
    #[serde(default)]
    results: Vec<ChunkResult>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(serde::Deserialize)]
struct ChunkResult {
    #[serde(default)]
    series: Vec<ChunkSeries>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(serde::Deserialize)]
struct ChunkSeries {
    #[serde(default)]
    tags: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    columns: Vec<String>,
    #[serde(default)]
    values: Vec<Vec<Value>>,
}

impl InfluxReader {
    /// Every series `q` answers, read as a chunked response (`chunked=true`): a server's
    /// `max-row-limit` does not cut the answer short, and a series split over chunks comes
    /// back whole. Times are epoch ms.
    pub async fn query_series(&self, q: &str) -> Result<Vec<Series>, InfluxQueryError> {
        let path = format!(
            "/query?db={}&epoch=ms&chunked=true&chunk_size=10000&q={}",
            utf8_percent_encode(&self.database, NON_ALPHANUMERIC),
            utf8_percent_encode(q, NON_ALPHANUMERIC)
        );
        let body = self.get(path).await?;
        let mut series: Vec<Series> = Vec::new();
        for chunk in serde_json::Deserializer::from_slice(&body).into_iter::<Chunk>() {
            let chunk = chunk?;
            if let Some(error) = chunk.error {
                return Err(InfluxQueryError::Query(error));
            }
            for result in chunk.results {
                if let Some(error) = result.error {
                    return Err(InfluxQueryError::Query(error));
                }
                for part in result.series {
                    match series.last_mut() {
                        // The next part of the series the last chunk ended in.
                        Some(last) if last.tags == part.tags && last.columns == part.columns => {
                            last.rows.extend(part.values)
                        }
                        _ => series.push(Series {
                            tags: part.tags,
                            columns: part.columns,
                            rows: part.values,
                        }),
                    }
                }
            }
        }
        Ok(series)
    }

    /// The `GET` of `path` with the API's authorization (1.x basic, 2.x/3.x `Token`).
    fn request(&self, path: String) -> Request<Full<Bytes>> {
        let mut request = Request::get(path).header(hyper::header::HOST, self.endpoint.authority());
        if let Some(authorization) = &self.authorization {
            request = request.header(hyper::header::AUTHORIZATION, authorization);
        }
        request
            .body(Full::new(Bytes::new()))
            .expect("a valid request")
    }

    async fn get(&self, path: String) -> Result<Bytes, InfluxQueryError> {
        let request = self.request(path);
        let mut http = HttpConnection::to(self.endpoint.clone());
        let (status, body) = http.send(request, self.timeout).await?;
        if !status.is_success() {
            return Err(InfluxQueryError::Status {
                status: status.as_u16(),
                answer: String::from_utf8_lossy(&body).trim().to_owned(),
            });
        }
        Ok(body)
    }
}

/// `text` as an InfluxQL string literal (single quotes; backslash and quote escaped).
pub fn string_literal(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "\\'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// InfluxDB 2.x and 3.x answer InfluxQL at the 1.x compatibility endpoint `/query`, with
    /// the bucket (2.x: mapped to a database by a DBRP mapping) as `db` and the token as
    /// `Authorization: Token`, as their documentation gives the request.
    #[test]
    fn a_2x_query_names_the_bucket_and_carries_the_token() {
        let endpoint =
            crate::io::connect::http::HttpEndpoint::parse("http://127.0.0.1:8086", None).unwrap();
        let api = InfluxApi::V2 {
            org: "acme".into(),
            bucket: "fleet data".into(),
            token: crate::io::connect::secret::Secret("s3cr3t".into()),
        };
        let reader = InfluxReader::new(endpoint, &api, Duration::from_secs(1));
        let path = format!(
            "/query?db={}&epoch=ms&chunked=true&chunk_size=10000&q=SELECT",
            utf8_percent_encode(&reader.database, NON_ALPHANUMERIC)
        );
        let request = reader.request(path);
        assert_eq!(
            request.uri().to_string(),
            "/query?db=fleet%20data&epoch=ms&chunked=true&chunk_size=10000&q=SELECT"
        );
        assert_eq!(
            request.headers()[hyper::header::AUTHORIZATION],
            "Token s3cr3t"
        );
        assert_eq!(request.headers()[hyper::header::HOST], "127.0.0.1:8086");
    }

    #[test]
    fn literals_cannot_close_their_quotes() {
        assert_eq!(string_literal("dev-1"), "'dev-1'");
        assert_eq!(string_literal("a' OR 'b"), "'a\\' OR \\'b'");
        assert_eq!(string_literal("a\\"), "'a\\\\'");
    }
}
