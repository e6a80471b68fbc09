//! The admin listener (loopback by default): `GET /metrics`, `/healthz`,
//! `/readyz`. It shares nothing with the data plane but the metrics, and the
//! data-plane listener never serves these paths.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::metrics::{Metrics, CONTENT_TYPE};
use crate::spool::Health;

/// Whether the gateway is ready for traffic: config loaded and listeners
/// bound, not draining, and the spool (if any) writable.
#[derive(Debug, Default)]
pub struct Readiness {
    ready: AtomicBool,
    spool: OnceLock<Arc<Health>>,
}

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }
    /// Also answer "not ready" while the spool cannot be written (SPEC §8).
    pub fn watch_spool(&self, health: Arc<Health>) {
        let _ = self.spool.set(health);
    }
    pub fn get(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.spool_failing()
    }
    /// Why not ready, when it is the spool.
    pub fn spool_failing(&self) -> bool {
        self.spool.get().is_some_and(|h| h.is_failing())
    }
}

/// Serves the admin endpoints until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, ready: Arc<Readiness>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let response = answer(&req, &metrics, &ready);
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn answer(req: &Request<Incoming>, metrics: &Metrics, ready: &Readiness) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match req.uri().path() {
        "/metrics" => {
            let mut r = Response::new(Full::new(Bytes::from(metrics.encode())));
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
            r
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if ready.get() => text(StatusCode::OK, "ready\n"),
        "/readyz" if ready.spool_failing() => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the spool cannot be written (storage or database unreachable; see the error log)\n",
        ),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
