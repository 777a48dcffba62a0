//! One kept-alive HTTP/1.1 connection (hyper), reopened when it breaks.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;

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
    /// (connect, request, no answer) and drops the connection.
    pub async fn send(
        &mut self,
        request: Request<Full<Bytes>>,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), String> {
        let exchange = async {
            if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
                let stream = tokio::net::TcpStream::connect(&self.authority)
                    .await
                    .map_err(|e| format!("connect {}: {e}", self.authority))?;
                let (sender, connection) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream))
                        .await
                        .map_err(|e| format!("handshake: {e}"))?;
                tokio::spawn(connection);
                self.sender = Some(sender);
            }
            let sender = self.sender.as_mut().expect("connected above");
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| format!("request: {e}"))?;
            let status = response.status();
            // Reading the body lets the connection carry the next request.
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("response: {e}"))?
                .to_bytes();
            Ok((status, body))
        };
        let result = match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer in {timeout:?}")),
        };
        if result.is_err() {
            self.sender = None;
        }
        result
    }
}
