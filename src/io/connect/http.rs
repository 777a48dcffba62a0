//! The HTTP/1.1 client every HTTP sink shares: one kept-alive connection on hyper, reopened
//! when it breaks, and the failure classes of what can go wrong on the way.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{HeaderMap, Request, StatusCode};
use hyper_util::rt::TokioIo;

use crate::io::support::failure::FailureClass;

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
            _ => FailureClass::Transient,
        }
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

/// A connection to `authority` (`host:port`).
pub struct HttpConnection {
    authority: String,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl HttpConnection {
    /// Connects lazily, on the first request.
    pub fn new(authority: impl Into<String>) -> Self {
        Self {
            authority: authority.into(),
            sender: None,
        }
    }

    /// The `host:port` requests go to (for the `Host` header).
    pub fn authority(&self) -> &str {
        &self.authority
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
        let authority = self.authority.clone();
        let exchange_error = |source| HttpError::Exchange {
            authority: authority.clone(),
            source,
        };
        let exchange = async {
            if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
                let stream = tokio::net::TcpStream::connect(&self.authority)
                    .await
                    .map_err(|source| HttpError::Connect {
                        authority: self.authority.clone(),
                        source,
                    })?;
                let (sender, connection) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream))
                        .await
                        .map_err(exchange_error)?;
                tokio::spawn(connection);
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
                authority: self.authority.clone(),
                timeout,
            }),
        };
        if result.is_err() {
            self.sender = None;
        }
        result
    }
}
