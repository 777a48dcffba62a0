//! The HTTP/1.1 client every HTTP sink shares (InfluxDB, webhooks): where to connect
//! ([`HttpEndpoint`]: `http://` or `https://` through rustls, with the same [`TlsConfig`] as
//! MQTT), one kept-alive connection on hyper, reopened when it breaks, and the failure classes
//! of what can go wrong on the way.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{HeaderMap, Request, StatusCode};
use hyper_util::rt::TokioIo;

use rustls::pki_types::ServerName;

use crate::io::connect::tls::{TlsConfig, TlsConfigError, system_client_config};
use crate::io::support::failure::FailureClass;

/// Where an HTTP client connects: the URL's scheme, host and port, its path, and for
/// `https://` the TLS client configuration and the name the certificate must carry.
#[derive(Clone)]
pub struct HttpEndpoint {
    authority: String,
    path: String,
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
}

impl std::fmt::Debug for HttpEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        write!(f, "{scheme}://{}{}", self.authority, self.path)
    }
}

/// A URL or TLS setting an HTTP client cannot use: the field (`url`, `tls.ca_file`, ...) and
/// why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct HttpEndpointError {
    /// The field, within the client's section.
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl From<TlsConfigError> for HttpEndpointError {
    fn from(e: TlsConfigError) -> Self {
        Self {
            field: format!("tls.{}", e.field),
            message: e.message,
        }
    }
}

impl HttpEndpoint {
    /// The endpoint of `url` (`http://HOST[:PORT][/PATH]` or `https://...`); `tls` gives the
    /// certificate authorities and client certificate for `https`, which without it trusts the
    /// system's roots.
    pub fn parse(url: &str, tls: Option<&TlsConfig>) -> Result<Self, HttpEndpointError> {
        let bad_url = |message: String| HttpEndpointError {
            field: "url".into(),
            message,
        };
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e| bad_url(format!("{url:?}: {e}; use http(s)://HOST:PORT/PATH")))?;
        let secure = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => {
                return Err(bad_url(format!(
                    "{url:?}: use http:// or https://HOST:PORT/PATH"
                )));
            }
        };
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| bad_url(format!("{url:?} has no host")))?;
        let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let authority = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let path = uri
            .path_and_query()
            .map_or("/".to_owned(), |p| p.as_str().to_owned());
        let tls = match (secure, tls) {
            (false, None) => None,
            (false, Some(_)) => {
                return Err(bad_url(format!(
                    "{url:?} is plain http but a tls section is set: use https://"
                )));
            }
            (true, tls) => {
                let client = match tls {
                    Some(tls) => tls.client_config()?,
                    None => system_client_config()?,
                };
                let name = tls
                    .and_then(|t| t.server_name.clone())
                    .unwrap_or_else(|| host.to_owned());
                let server_name =
                    ServerName::try_from(name.clone()).map_err(|e| HttpEndpointError {
                        field: "tls.server_name".into(),
                        message: format!("{name:?}: {e}"),
                    })?;
                Some((client, server_name))
            }
        };
        Ok(Self {
            authority,
            path,
            tls,
        })
    }

    /// `host:port`, for the `Host` header and messages.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// The URL's path and query (`/` when it has none).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Whether requests go through TLS.
    pub fn is_https(&self) -> bool {
        self.tls.is_some()
    }
}

/// Why an HTTP exchange failed (an answer with an error status is not a failure here: it is
/// the caller's to class, with [`FailureClass::of_http_status`]).
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// No TCP connection: nothing listens, or the host is unreachable.
    #[error("connect {authority}: {source}")]
    Connect {
        /// `host:port`.
        authority: String,
        /// Why.
        source: std::io::Error,
    },
    /// The TLS handshake failed: the server's certificate is not trusted or not for this name,
    /// or the server refused this client's.
    #[error("tls with {authority}: {source}")]
    Tls {
        /// `host:port`.
        authority: String,
        /// Why (rustls's error inside).
        source: std::io::Error,
    },
    /// The connection broke, or what came back was not an HTTP/1.1 answer.
    #[error("{authority}: {source}")]
    Exchange {
        /// `host:port`.
        authority: String,
        /// Hyper's account.
        source: hyper::Error,
    },
    /// No whole answer within the timeout.
    #[error("{authority}: no answer in {timeout:?}")]
    Timeout {
        /// `host:port`.
        authority: String,
        /// The timeout.
        timeout: Duration,
    },
}

impl HttpError {
    /// The failure's class (see [`crate::io::support::failure`]). An answer that cannot be parsed as
    /// HTTP says the URL names something that is not the server meant (a port of another
    /// protocol, a proxy that mangles answers): a sink failure, so that several in a row stop
    /// the sink with an error naming its URL instead of retrying forever. Everything else
    /// (refused, reset, timed out) is transient.
    pub fn class(&self) -> FailureClass {
        match self {
            Self::Exchange { source, .. } if not_http(source) => FailureClass::Sink,
            Self::Tls { source, .. } if certificate_refused(source) => FailureClass::Sink,
            _ => FailureClass::Transient,
        }
    }

    /// The field of the client's section to check when the failure is the sink's.
    pub fn field(&self) -> &'static str {
        match self {
            Self::Tls { .. } => "tls (ca_file, server_name, client_cert_file)",
            _ => "url",
        }
    }
}

/// Whether a TLS failure is about certificates (ours or the server's): no retry mends it.
fn certificate_refused(error: &std::io::Error) -> bool {
    let Some(rustls_error) = error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    else {
        return false;
    };
    match rustls_error {
        rustls::Error::InvalidCertificate(_) => true,
        rustls::Error::AlertReceived(alert) => matches!(
            alert,
            rustls::AlertDescription::BadCertificate
                | rustls::AlertDescription::UnknownCA
                | rustls::AlertDescription::CertificateRequired
                | rustls::AlertDescription::CertificateUnknown
                | rustls::AlertDescription::UnsupportedCertificate
        ),
        _ => false,
    }
}

/// Whether hyper's error, or one it was caused by, says the peer does not speak HTTP: an answer
/// that does not parse, or bytes sent before any request (a protocol whose server speaks
/// first). Hyper has no predicate for the second, so its stable message is matched.
fn not_http(error: &hyper::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cause {
        if let Some(e) = e.downcast_ref::<hyper::Error>()
            && (e.is_parse() || e.to_string() == "received unexpected message from connection")
        {
            return true;
        }
        cause = e.source();
    }
    false
}

/// A kept-alive connection to an [`HttpEndpoint`].
pub struct HttpConnection {
    endpoint: HttpEndpoint,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl HttpConnection {
    /// A connection to `endpoint`; connects lazily, on the first request.
    pub fn to(endpoint: HttpEndpoint) -> Self {
        Self {
            endpoint,
            sender: None,
        }
    }

    /// The `host:port` requests go to (for the `Host` header).
    pub fn authority(&self) -> &str {
        &self.endpoint.authority
    }

    /// Sends `request` and reads the whole answer, within `timeout`; an error says what failed
    /// (connect, exchange, no answer) and drops the connection.
    pub async fn send(
        &mut self,
        request: Request<Full<Bytes>>,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), HttpError> {
        let (status, _, body) = self.send_with_headers(request, timeout).await?;
        Ok((status, body))
    }

    /// [`send`](Self::send), with the answer's headers.
    pub async fn send_with_headers(
        &mut self,
        request: Request<Full<Bytes>>,
        timeout: Duration,
    ) -> Result<(StatusCode, HeaderMap, Bytes), HttpError> {
        let authority = self.endpoint.authority.clone();
        let exchange_error = |source| HttpError::Exchange {
            authority: authority.clone(),
            source,
        };
        let exchange = async {
            if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
                let stream =
                    tokio::net::TcpStream::connect(&authority)
                        .await
                        .map_err(|source| HttpError::Connect {
                            authority: authority.clone(),
                            source,
                        })?;
                let sender = match &self.endpoint.tls {
                    None => handshake(stream).await.map_err(exchange_error)?,
                    Some((config, server_name)) => {
                        let connector = tokio_rustls::TlsConnector::from(Arc::clone(config));
                        let stream = connector
                            .connect(server_name.clone(), stream)
                            .await
                            .map_err(|source| HttpError::Tls {
                                authority: authority.clone(),
                                source,
                            })?;
                        handshake(stream).await.map_err(exchange_error)?
                    }
                };
                self.sender = Some(sender);
            }
            let sender = self.sender.as_mut().expect("connected above");
            let response = sender.send_request(request).await.map_err(exchange_error)?;
            let status = response.status();
            let headers = response.headers().clone();
            // Reading the body lets the connection carry the next request.
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(exchange_error)?
                .to_bytes();
            Ok((status, headers, body))
        };
        let result = match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(HttpError::Timeout {
                authority: self.endpoint.authority.clone(),
                timeout,
            }),
        };
        if result.is_err() {
            self.sender = None;
        }
        result
    }
}

/// An HTTP/1.1 client connection over `io`, its driver spawned on the runtime.
async fn handshake<I>(io: I) -> Result<SendRequest<Full<Bytes>>, hyper::Error>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_become_endpoints_or_errors_naming_the_field() {
        let plain = HttpEndpoint::parse("http://influx.local:8086", None).unwrap();
        assert_eq!(plain.authority(), "influx.local:8086");
        assert_eq!(plain.path(), "/");
        assert!(!plain.is_https());
        let hook = HttpEndpoint::parse("http://10.0.0.1/hooks/iotpipe?x=1", None).unwrap();
        assert_eq!(hook.authority(), "10.0.0.1:80");
        assert_eq!(hook.path(), "/hooks/iotpipe?x=1");
        for (url, field) in [
            ("ftp://h:1", "url"),
            ("influx.local:8086", "url"),
            ("http://", "url"),
            ("http://bad host:1", "url"),
        ] {
            let error = HttpEndpoint::parse(url, None).unwrap_err();
            assert_eq!(error.field, field, "{url}: {error}");
        }
        let tls = TlsConfig {
            ca_file: "/nonexistent/ca.pem".into(),
            ..TlsConfig::default()
        };
        let error = HttpEndpoint::parse("https://h:1", Some(&tls)).unwrap_err();
        assert_eq!(error.field, "tls.ca_file");
        let error = HttpEndpoint::parse("http://h:1", Some(&tls)).unwrap_err();
        assert_eq!(error.field, "url");
    }
}
