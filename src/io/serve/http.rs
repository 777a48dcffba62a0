//! A small HTTP/1.1 server on hyper, for `/metrics` and the dashboard: GET only, one thread.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

/// Answers requests of a small HTTP server ([`serve`]).
pub trait Handler: Send + Sync + 'static {
    /// The response to `GET path?query` (`query` still percent-encoded; empty if none) from a
    /// client that accepts `accept` (its `Accept` header; empty if none).
    fn get(
        &self,
        path: &str,
        query: &str,
        accept: &str,
    ) -> impl std::future::Future<Output = Response<Full<Bytes>>> + Send;
}

/// A response with `status`, a content type and a body.
pub fn response(status: u16, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, content_type)
        .header(hyper::header::CACHE_CONTROL, "no-store")
        .body(Full::new(body.into()))
        .expect("a valid response")
}

/// Serves `handler` at `listen` from a thread of its own, for the life of the process; returns
/// the address it listens on (the port chosen, for port 0).
pub fn serve<H: Handler>(
    name: &str,
    listen: std::net::SocketAddr,
    handler: std::sync::Arc<H>,
) -> std::io::Result<std::net::SocketAddr> {
    let listener = std::net::TcpListener::bind(listen)?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let server = name.to_owned();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => listener,
                    Err(e) => {
                        tracing::error!(%server, error = %e, "listener failed");
                        return;
                    }
                };
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let handler = std::sync::Arc::clone(&handler);
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(
                            move |request: Request<hyper::body::Incoming>| {
                                let handler = std::sync::Arc::clone(&handler);
                                async move {
                                    let response = if request.method() == hyper::Method::GET {
                                        let uri = request.uri();
                                        let accept = request
                                            .headers()
                                            .get(hyper::header::ACCEPT)
                                            .and_then(|v| v.to_str().ok())
                                            .unwrap_or("");
                                        handler
                                            .get(uri.path(), uri.query().unwrap_or(""), accept)
                                            .await
                                    } else {
                                        response(405, "text/plain", "only GET is served\n")
                                    };
                                    Ok::<_, std::convert::Infallible>(response)
                                }
                            },
                        );
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            })
        })?;
    Ok(local)
}
