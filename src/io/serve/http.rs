//! A small HTTP/1.1 server on hyper, for `/metrics` and the dashboard: GET, and POST where a
//! handler takes it; one thread.

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

    /// The response to `POST path` with `body` (at most [`MAX_POST_BYTES`]) from a client that
    /// sent `authorization` (its `Authorization` header; empty if none). By default: 405.
    fn post(
        &self,
        path: &str,
        authorization: &str,
        body: Bytes,
    ) -> impl std::future::Future<Output = Response<Full<Bytes>>> + Send {
        let _ = (path, authorization, body);
        async { response(405, "text/plain", "only GET is served\n") }
    }
}

/// The largest POST body read; a longer one is answered 413.
pub const MAX_POST_BYTES: usize = 64 * 1024;

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
                                    let header = |name| {
                                        request
                                            .headers()
                                            .get(name)
                                            .and_then(|v| v.to_str().ok())
                                            .unwrap_or("")
                                            .to_owned()
                                    };
                                    let response = match *request.method() {
                                        hyper::Method::GET => {
                                            let uri = request.uri();
                                            let accept = header(hyper::header::ACCEPT);
                                            handler
                                                .get(uri.path(), uri.query().unwrap_or(""), &accept)
                                                .await
                                        }
                                        hyper::Method::POST => {
                                            let authorization =
                                                header(hyper::header::AUTHORIZATION);
                                            let path = request.uri().path().to_owned();
                                            let limited = http_body_util::Limited::new(
                                                request.into_body(),
                                                MAX_POST_BYTES,
                                            );
                                            match http_body_util::BodyExt::collect(limited).await {
                                                Ok(body) => {
                                                    handler
                                                        .post(
                                                            &path,
                                                            &authorization,
                                                            body.to_bytes(),
                                                        )
                                                        .await
                                                }
                                                Err(_) => response(
                                                    413,
                                                    "text/plain",
                                                    "the body is too large\n",
                                                ),
                                            }
                                        }
                                        _ => response(405, "text/plain", "GET or POST only\n"),
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
