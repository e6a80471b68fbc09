//! The data-plane listener: accept, cap connections, serve HTTP/1.1 and
//! HTTP/2 (h2c by prior knowledge) with hyper, drain on shutdown.
//!
//! [`serve`] takes an already-bound listener and a shutdown future, so the
//! binary binds the configured address and tests bind `127.0.0.1:0`.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::proxy::{ConnInfo, Proxy};

/// Header fields per request (more → 431).
pub const MAX_HEADERS: usize = 100;
/// HTTP/2 concurrent streams per connection.
pub const MAX_CONCURRENT_STREAMS: u32 = 100;
/// HTTP/2 header list size.
pub const MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;

/// Serves `listener` until `shutdown` resolves, then stops accepting and lets
/// in-flight requests finish for up to `server.shutdown_timeout`.
pub async fn serve(listener: TcpListener, proxy: Arc<Proxy>, shutdown: impl Future<Output = ()>) {
    let state = proxy.state();
    let limits = state.config.limits.clone();
    let shutdown_timeout = state.config.server.shutdown_timeout;
    drop(state);

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Also the keep-alive idle limit: hyper applies it between requests.
        .header_read_timeout(limits.request_timeout)
        .max_headers(MAX_HEADERS);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size(MAX_HEADER_LIST_SIZE);

    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut backoff = Duration::ZERO;
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => {
                backoff = Duration::ZERO;
                pair
            }
            Err(e) => {
                // EMFILE and friends fail at once and again: back off instead
                // of spinning, up to one second.
                backoff = (backoff * 2).clamp(Duration::from_millis(5), Duration::from_secs(1));
                tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed");
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "max_connections reached; connection closed");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conn = ConnInfo {
            peer,
            proto: "http",
        };
        let proxy = proxy.clone();
        let service = service_fn(move |req| {
            let proxy = proxy.clone();
            async move { Ok::<_, Infallible>(proxy.handle(conn, req).await) }
        });
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    tracing::info!(
        connections = graceful.count(),
        "stopped accepting; draining in-flight requests"
    );
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("drained"),
        () = tokio::time::sleep(shutdown_timeout) => {
            tracing::warn!("shutdown_timeout reached; closing remaining connections");
        }
    }
}
