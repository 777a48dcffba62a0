//! Writing line protocol to InfluxDB over HTTP: the 1.x API (`/write`) or the 2.x/3.x one
//! (`/api/v2/write`), gzip, retries with backoff on 5xx, 429, timeouts and refused connections.
//! Failures are classed by [`crate::io::support::failure`]: a 400, 413 or 422 is the batch's fault and is
//! returned to the caller; 401, 403, 404 (credentials, permissions, no such database) or answers
//! that are not HTTP, several in a row, are the deployment's, and end the sink with an error
//! naming the config field; everything else is retried without limit.

use std::io::Write;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use serde::{Deserialize, Serialize};

use crate::io::connect::http::{HttpConnection, HttpEndpoint};
use crate::io::connect::influx::config::InfluxConfigError;
use crate::io::connect::secret::Secret;
use crate::io::support::backoff::Backoff;
use crate::io::support::failure::{FailureClass, SinkStrikes};

/// Which HTTP API to write with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "api", rename_all = "snake_case", deny_unknown_fields)]
pub enum InfluxApi {
    /// InfluxDB 1.x: `POST /write?db=..&rp=..&precision=ms`, basic authentication.
    V1 {
        /// The database.
        database: String,
        /// The retention policy (default: the database's default).
        #[serde(default)]
        retention_policy: Option<String>,
        /// User name, if authentication is on.
        #[serde(default)]
        username: Option<String>,
        /// Its password.
        #[serde(default)]
        password: Option<Secret>,
    },
    /// InfluxDB 2.x and 3.x: `POST /api/v2/write?org=..&bucket=..&precision=ms`, token
    /// authentication.
    V2 {
        /// The organisation (empty for 3.x, which has none).
        org: String,
        /// The bucket (3.x: the database).
        bucket: String,
        /// The API token.
        token: Secret,
    },
}

impl InfluxApi {
    /// The `Authorization` header: basic for 1.x with a user, a token for 2.x/3.x.
    pub fn authorization(&self) -> Option<String> {
        match self {
            InfluxApi::V1 {
                username, password, ..
            } => username.as_ref().map(|user| {
                let password = password.as_ref().map_or("", |p| p.0.as_str());
                let pair = format!("{user}:{password}");
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                )
            }),
            InfluxApi::V2 { token, .. } => Some(format!("Token {}", token.0)),
        }
    }
}

/// A batch InfluxDB refused for good (400, 413 or 422): a point in it is invalid, such as a
/// field whose type conflicts with the series', or the batch is too large.
#[derive(Debug, thiserror::Error)]
#[error("influxdb refused the batch: HTTP {status}: {message}")]
pub struct Rejected {
    /// The HTTP status.
    pub status: u16,
    /// InfluxDB's message (for 1.x a type conflict names the field and says how many points
    /// were dropped; the others are stored).
    pub message: String,
}

/// InfluxDB says the sink cannot work (see [`crate::io::support::failure`]): authorisation refused, no
/// such database or bucket, or answers that are not HTTP,
/// [`SINK_FAILURE_TRIES`](crate::io::support::failure::SINK_FAILURE_TRIES) times in a row.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: influxdb at {authority}: {message}")]
pub struct InfluxSinkFailure {
    /// The config fields to check.
    pub field: &'static str,
    /// Where.
    pub authority: String,
    /// The HTTP status, if InfluxDB answered at all.
    pub status: Option<u16>,
    /// What was answered (`answered HTTP 401: ...`, or why the answer was not HTTP).
    pub message: String,
}

/// Why a batch did not land.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// A point in it is refused for good: halve it down to the refused points.
    #[error(transparent)]
    Rejected(#[from] Rejected),
    /// The sink cannot work: stop.
    #[error(transparent)]
    Sink(#[from] InfluxSinkFailure),
}

/// The field to check when what answers is not InfluxDB.
const URL_FIELD: &str = "influx.url";

/// The fields to check when the TLS handshake fails on certificates.
const TLS_FIELD: &str = "influx.tls (ca_file, server_name, client_cert_file)";

/// The fields to check when InfluxDB answers `status` for every write.
fn failing_field(status: u16) -> &'static str {
    match status {
        401 | 403 => "influx.username and influx.password (1.x), or influx.token (2.x, 3.x)",
        404 => "influx.database (2.x: influx.org and the bucket)",
        _ => URL_FIELD,
    }
}

/// Writes batches of line protocol to one InfluxDB.
pub struct InfluxWriter {
    http: HttpConnection,
    path_and_query: String,
    authorization: Option<String>,
    timeout: Duration,
    backoff: Backoff,
    retries: u64,
    /// 1.x: the database, which iotpipe creates if missing.
    database: Option<String>,
    gzip: bool,
}

impl InfluxWriter {
    /// A writer to `endpoint` (see [`InfluxConfig::endpoint`]) through `api`; the error names
    /// what is wrong.
    ///
    /// [`InfluxConfig::endpoint`]: crate::io::connect::influx::config::InfluxConfig::endpoint
    pub fn new(
        endpoint: HttpEndpoint,
        api: &InfluxApi,
        timeout: Duration,
        backoff: Backoff,
    ) -> Result<Self, InfluxConfigError> {
        let name = |field: &str, value: &str| {
            if !value.is_empty()
                && value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
            {
                Ok(value.to_owned())
            } else {
                Err(InfluxConfigError {
                    field: field.to_owned(),
                    message: format!("{value:?}: use letters, digits, '_', '-' and '.'"),
                })
            }
        };
        let (path_and_query, database) = match api {
            InfluxApi::V1 {
                database,
                retention_policy,
                ..
            } => {
                let database = name("database", database)?;
                let mut query = format!("/write?db={database}&precision=ms");
                if let Some(rp) = retention_policy {
                    query += &format!("&rp={}", name("retention_policy", rp)?);
                }
                (query, Some(database))
            }
            InfluxApi::V2 { org, bucket, .. } => {
                // 3.x needs no organisation.
                let org = if org.is_empty() {
                    String::new()
                } else {
                    format!("org={}&", name("org", org)?)
                };
                let query = format!(
                    "/api/v2/write?{org}bucket={}&precision=ms",
                    name("bucket", bucket)?
                );
                (query, None)
            }
        };
        Ok(Self {
            http: HttpConnection::to(endpoint),
            path_and_query,
            authorization: api.authorization(),
            timeout,
            backoff,
            retries: 0,
            database,
            gzip: true,
        })
    }

    /// 1.x: creates the database unless it exists (`CREATE DATABASE` changes nothing then). A
    /// failure is logged and writing goes ahead: a user without the right may write to a
    /// database an administrator made.
    pub async fn ensure_database(&mut self) {
        let Some(database) = &self.database else {
            return;
        };
        let mut request = Request::post(format!("/query?q=CREATE%20DATABASE%20%22{database}%22"))
            .header(hyper::header::HOST, self.http.authority());
        if let Some(authorization) = &self.authorization {
            request = request.header(hyper::header::AUTHORIZATION, authorization);
        }
        let request = request
            .body(Full::new(Bytes::new()))
            .expect("a valid request");
        match self.http.send(request, self.timeout).await {
            Ok((status, _)) if status.is_success() => {}
            Ok((status, body)) => tracing::warn!(
                database = %database,
                %status,
                answer = %String::from_utf8_lossy(&body),
                "could not create the influxdb database; writing to it anyway"
            ),
            Err(error) => tracing::warn!(
                database = %database,
                %error,
                "could not create the influxdb database; writing to it anyway"
            ),
        }
    }

    /// Attempts that failed and were made again.
    pub fn retries(&self) -> u64 {
        self.retries
    }

    /// Sends bodies as they are instead of gzipped.
    pub fn without_gzip(mut self) -> Self {
        self.gzip = false;
        self
    }

    /// The request that writes `lines` (gzipped, unless [`without_gzip`](Self::without_gzip)).
    pub fn request(&self, lines: &[u8]) -> Request<Full<Bytes>> {
        let mut request = Request::post(&self.path_and_query)
            .header(hyper::header::HOST, self.http.authority())
            .header(hyper::header::CONTENT_TYPE, "text/plain; charset=utf-8");
        let body = if self.gzip {
            request = request.header(hyper::header::CONTENT_ENCODING, "gzip");
            let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gzip.write_all(lines).expect("writing to memory");
            Bytes::from(gzip.finish().expect("writing to memory"))
        } else {
            Bytes::copy_from_slice(lines)
        };
        if let Some(authorization) = &self.authorization {
            request = request.header(hyper::header::AUTHORIZATION, authorization);
        }
        request.body(Full::new(body)).expect("a valid request")
    }

    fn sink_failure(
        &self,
        field: &'static str,
        status: Option<u16>,
        message: String,
    ) -> WriteError {
        InfluxSinkFailure {
            field,
            authority: self.http.authority().to_owned(),
            status,
            message,
        }
        .into()
    }

    /// Writes `lines` (one batch): retries transient failures without limit; returns a
    /// refusal of the batch, or, after several answers in a row that say writing cannot work
    /// (401, 403, 404), the sink's failure.
    pub async fn write(&mut self, lines: &[u8]) -> Result<(), WriteError> {
        let mut attempt = 0;
        let mut strikes = SinkStrikes::default();
        loop {
            let failure = match self.http.send(self.request(lines), self.timeout).await {
                Ok((status, _)) if status.is_success() => return Ok(()),
                Ok((status, body)) => {
                    let body = String::from_utf8_lossy(&body).trim().to_owned();
                    let status = status.as_u16();
                    let class = FailureClass::of_http_status(status);
                    if class == FailureClass::Record {
                        return Err(Rejected {
                            status,
                            message: body,
                        }
                        .into());
                    }
                    let message = format!("answered HTTP {status}: {body}");
                    if strikes.note(Some(class)) {
                        return Err(self.sink_failure(
                            failing_field(status),
                            Some(status),
                            message,
                        ));
                    }
                    message
                }
                Err(e) => {
                    if strikes.note(Some(e.class())) {
                        let field = match e.field() {
                            "url" => URL_FIELD,
                            _ => TLS_FIELD,
                        };
                        return Err(self.sink_failure(field, None, e.to_string()));
                    }
                    e.to_string()
                }
            };
            tracing::warn!(
                influxdb = %self.http.authority(),
                error = %failure,
                attempt = attempt + 1,
                "influxdb write failed; retrying"
            );
            self.retries += 1;
            tokio::time::sleep(self.backoff.wait(attempt)).await;
            attempt += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer(api: InfluxApi) -> InfluxWriter {
        InfluxWriter::new(
            HttpEndpoint::parse("http://127.0.0.1:8086", None).unwrap(),
            &api,
            Duration::from_secs(1),
            Backoff::default(),
        )
        .unwrap()
    }

    /// Something that is not an HTTP server at the URL (here a server of another protocol that
    /// greets first) answers what cannot be parsed: a few times in a row and the writer stops
    /// with an error naming the URL, rather than retrying forever.
    #[test]
    fn answers_that_are_not_http_stop_the_writer_naming_the_url() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        runtime.spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let _ = stream.write_all(b"SSH-2.0-OpenSSH_9.2\r\n\r\n").await;
                    // Like such a server, keep the connection until the client leaves.
                    let mut buffer = [0u8; 4096];
                    while matches!(stream.read(&mut buffer).await, Ok(n) if n > 0) {}
                });
            }
        });
        let backoff = Backoff {
            initial_ms: 1,
            max_ms: 5,
        };
        let api = InfluxApi::V1 {
            database: "iotpipe".into(),
            retention_policy: None,
            username: None,
            password: None,
        };
        let mut writer = InfluxWriter::new(
            HttpEndpoint::parse(&format!("http://{addr}"), None).unwrap(),
            &api,
            Duration::from_secs(5),
            backoff,
        )
        .unwrap();
        // Retried forever, it would never end.
        let error = runtime
            .block_on(async {
                tokio::time::timeout(Duration::from_secs(20), writer.write(b"m f=1 1\n")).await
            })
            .expect("the writer gives up")
            .unwrap_err();
        let WriteError::Sink(failure) = error else {
            panic!("an answer that is not HTTP is the sink's failure: {error}");
        };
        assert_eq!(failure.field, "influx.url");
        assert_eq!(failure.status, None);
        // The greeting sometimes meets the request as a reset, which is transient and not
        // counted: at least the strikes were tried.
        assert!(writer.retries() >= u64::from(crate::io::support::failure::SINK_FAILURE_TRIES) - 1);
    }

    /// The 2.x/3.x request shape, as InfluxDB documents it: no 2.x server can run here.
    #[test]
    fn the_v2_request_names_org_bucket_precision_and_token() {
        let w = writer(InfluxApi::V2 {
            org: "acme".into(),
            bucket: "telemetry".into(),
            token: Secret("t0k3n".into()),
        });
        let request = w.request(b"m f=1 1\n");
        assert_eq!(
            request.uri(),
            "/api/v2/write?org=acme&bucket=telemetry&precision=ms"
        );
        let headers = request.headers();
        assert_eq!(headers["authorization"], "Token t0k3n");
        assert_eq!(headers["content-encoding"], "gzip");
        assert_eq!(headers["host"], "127.0.0.1:8086");
        let plain = w.without_gzip().request(b"m f=1 1\n");
        assert!(!plain.headers().contains_key("content-encoding"));
    }

    #[test]
    fn the_v1_request_uses_basic_authentication_and_checks_names() {
        let w = writer(InfluxApi::V1 {
            database: "iotpipe".into(),
            retention_policy: Some("autogen".into()),
            username: Some("user".into()),
            password: Some(Secret("pass".into())),
        });
        let request = w.request(b"m f=1 1\n");
        assert_eq!(request.uri(), "/write?db=iotpipe&precision=ms&rp=autogen");
        assert_eq!(request.headers()["authorization"], "Basic dXNlcjpwYXNz");
        let bad = InfluxApi::V1 {
            database: "a b".into(),
            retention_policy: None,
            username: None,
            password: None,
        };
        let endpoint = HttpEndpoint::parse("http://h:1", None).unwrap();
        let error = InfluxWriter::new(endpoint, &bad, Duration::ZERO, Backoff::default());
        let error = error.err().unwrap().to_string();
        assert!(error.starts_with("influx.database: \"a b\""), "{error}");
    }
}
