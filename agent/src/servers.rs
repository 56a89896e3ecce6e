//! The agent's HTTP servers, and the HTTP/1 serving they share: bounded
//! listeners (`accept_bounded`), header and handshake timeouts, answers by
//! path.
//! - `health_port`: `--health-listen`, kube-proxy's 10256: `/livez`,
//!   `/healthz`, `/readyz`, `/metrics`;
//! - `lb_checks`: the `healthCheckNodePort` of each Service with
//!   `externalTrafficPolicy: Local`, which load balancers probe;
//! - `kubelet`: the kubelet's secure port (TLS, client certificates) and
//!   read-only port.

pub mod health_port;
pub mod kubelet;
pub mod lb_checks;

use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Request, Response, StatusCode, body::Incoming, server::conn::http1, service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::TcpListener,
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Duration,
};

/// A response of `status` with `body` as text.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp
}

/// A response of `status` with `body` as JSON.
pub fn json(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = text(status, body);
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

/// The answer to a request's path.
pub trait Answer: Fn(&str) -> Response<Full<Bytes>> + Clone + Send + Sync + 'static {}
impl<F: Fn(&str) -> Response<Full<Bytes>> + Clone + Send + Sync + 'static> Answer for F {}

/// How long a client may take to send a request's headers, the first or
/// the next on a kept-alive connection (an idle connection is closed
/// then), and a TLS handshake.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once per listener; more wait in the accept queue.
pub const MAX_CONNECTIONS: usize = 256;
/// The pause after a failed accept (out of file descriptors, say), so the
/// loop backs off instead of spinning.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// HTTP/1 on one connection (plain or TLS), each request answered by
/// `answer` from its path, until the client closes, or sends no complete
/// headers within `HEADER_TIMEOUT`.
pub async fn serve_connection<IO>(io: IO, answer: impl Answer)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    serve_requests(io, move |parts: hyper::http::request::Parts| {
        let resp = answer(parts.uri.path());
        async move { resp }
    })
    .await;
}

/// HTTP/1 on one connection, each request answered by `handle` from its
/// head (method, path, headers); bodies are not read.
pub async fn serve_requests<IO, F, Fut>(io: IO, handle: F)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    F: Fn(hyper::http::request::Parts) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let service = service_fn(move |req: Request<Incoming>| {
        let resp = handle(req.into_parts().0);
        async move { Ok::<_, Infallible>(resp.await) }
    });
    let _ = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(io), service)
        .await;
}

/// Accepts connections on `listener` until the task is dropped, at most
/// `MAX_CONNECTIONS` served at once, each by `serve` (given the permit to
/// drop when done).
pub async fn accept_bounded<F, Fut>(listener: TcpListener, serve: F)
where
    F: Fn(tokio::net::TcpStream, SocketAddr, OwnedSemaphorePermit) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((tcp, peer)) => {
                tokio::spawn(serve(tcp, peer, permit));
            }
            Err(e) => {
                tracing::debug!("accept: {e}");
                tokio::time::sleep(ACCEPT_PAUSE).await;
            }
        }
    }
}

/// Plain HTTP on `listener`, until the task is dropped.
pub async fn serve_plain(listener: TcpListener, answer: impl Answer) {
    accept_bounded(listener, move |tcp, _, permit| {
        let answer = answer.clone();
        async move {
            serve_connection(tcp, answer).await;
            drop(permit);
        }
    })
    .await;
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
