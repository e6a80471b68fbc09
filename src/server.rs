//! The data-plane listener: accept, cap connections, terminate TLS when
//! configured, serve HTTP/1.1 and HTTP/2 (ALPN over TLS, prior knowledge on
//! plain TCP) with hyper, drain on shutdown.
//!
//! [`serve`] takes an already-bound listener and a shutdown future, so the
//! binary binds the configured address and tests bind `127.0.0.1:0`.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::config::Limits;
use crate::h1;
use crate::proxy::{ConnInfo, Proxy, RequestHead, ResponseBody};
use crate::read_ahead::ReadAhead;
use crate::send_timeout::SendTimeout;
use crate::streams::{self, Counted, OpenStream, Streams};

/// Header fields per request (more → 431).
pub const MAX_HEADERS: usize = 100;
/// HTTP/2 concurrent streams per connection.
pub const MAX_CONCURRENT_STREAMS: u32 = 100;
/// Request head size: HTTP/1.1 request line + header fields (more → 431),
/// and the HTTP/2 header list size.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Largest single read from a client socket. hyper grows its read buffer
/// towards this while reads keep filling it, so a 256 KiB webhook body
/// arrives in a few `recv` calls and a few frames; the header limit is
/// separate (`MAX_HEADER_BYTES`).
pub const MAX_READ_BUF: usize = 128 * 1024;

/// The HTTP/1 and HTTP/2 connection settings; cheap to clone per connection.
#[derive(Clone)]
struct Builder {
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
}

fn http_builder(limits: &Limits) -> Builder {
    let mut h1 = http1::Builder::new();
    h1.timer(TokioTimer::new())
        // Also the keep-alive idle limit: hyper applies it between requests.
        .header_read_timeout(limits.request_timeout)
        .max_headers(MAX_HEADERS)
        // hyper answers 431 and closes when a request head is larger.
        .max_header_size(MAX_HEADER_BYTES)
        .max_buf_size(MAX_READ_BUF);
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size(MAX_HEADER_BYTES as u32);
    Builder { h1, h2 }
}

/// Serves `listener` until `shutdown` resolves, then stops accepting and lets
/// in-flight requests finish for up to `server.shutdown_timeout`.
pub async fn serve(listener: TcpListener, proxy: Arc<Proxy>, shutdown: impl Future<Output = ()>) {
    let mut built_for = proxy.state();
    let mut builder = http_builder(&built_for.config.limits);
    let slots = Arc::new(Semaphore::new(built_for.config.limits.max_connections));

    // Read once: the test-only switch that turns the fast path off.
    let fast_h1 = h1::enabled();
    let graceful = GracefulShutdown::new();
    // Connections still waiting for their first bytes are not hyper
    // connections yet, so `graceful` cannot reach them: they watch this.
    let (stopping, stopping_rx) = watch::channel(false);
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
            proxy.metrics().connections_rejected.inc();
            tracing::debug!(%peer, "max_connections reached; connection closed");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        // Read per connection so a reload's new certificate and limits
        // apply to new connections.
        let state = proxy.state();
        if !Arc::ptr_eq(&state, &built_for) {
            builder = http_builder(&state.config.limits);
            built_for = state.clone();
        }
        let tls = state
            .config
            .server
            .tls
            .as_ref()
            .map(|t| TlsAcceptor::from(t.server_config.clone()));
        let handshake_timeout = state.config.limits.handshake_timeout;
        let request_timeout = state.config.limits.request_timeout;
        let send_timeout = state.config.limits.send_timeout;
        // Under TLS too, so TLS records count as writes.
        let stream = SendTimeout::new(stream, send_timeout);
        drop(state);
        let task = ConnTask {
            builder: builder.clone(),
            watcher: graceful.watcher(),
            stopping: stopping_rx.clone(),
            proxy: proxy.clone(),
            request_timeout,
            send_timeout,
            fast_h1,
        };
        tokio::spawn(async move {
            match tls {
                None => task.serve(stream, ConnInfo::new(peer, "http")).await,
                Some(acceptor) => {
                    // rustls reads 4 KiB at a time; ReadAhead gives it those
                    // from one socket read of up to 64 KiB.
                    let stream = ReadAhead::new(stream);
                    match crate::tls::accept(&acceptor, stream, handshake_timeout).await {
                        Ok(stream) => task.serve(stream, ConnInfo::new(peer, "https")).await,
                        Err(e) => {
                            task.proxy.metrics().tls_handshake_errors.inc();
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        }
                    }
                }
            }
            drop(permit);
        });
    }
    drop(listener);
    stopping.send_replace(true);
    tracing::info!(
        connections = graceful.count(),
        "stopped accepting; draining in-flight requests"
    );
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("drained"),
        () = tokio::time::sleep(proxy.state().config.server.shutdown_timeout) => {
            tracing::warn!("shutdown_timeout reached; closing remaining connections");
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What a connection's task needs to serve it.
struct ConnTask {
    builder: Builder,
    watcher: Watcher,
    stopping: watch::Receiver<bool>,
    proxy: Arc<Proxy>,
    request_timeout: Duration,
    send_timeout: Duration,
    /// HTTP/1 requests go through the fast path first (`h1`).
    fast_h1: bool,
}

impl ConnTask {
    /// Serves one connection. A connection that has not started a request
    /// within `request_timeout` of being accepted (or of its TLS handshake)
    /// is closed: hyper's header timeout only starts once it has told
    /// HTTP/1 from an HTTP/2 preface, so without this a silent socket, or an
    /// HTTP/2 connection that never opens a stream, would hold a connection
    /// slot and a descriptor forever.
    async fn serve<I>(self, io: I, conn: ConnInfo)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let started = Arc::new(AtomicBool::new(false));
        let peer = conn.peer;
        let conn = Arc::new(conn);
        let proxy = self.proxy;
        let request_timeout = self.request_timeout;
        let send_timeout = self.send_timeout;
        let builder = self.builder;
        let fast_h1 = self.fast_h1;
        let watcher = self.watcher;
        let mut stopping = self.stopping;
        let seen = started.clone();
        // Telling HTTP/2 from HTTP/1 waits for the client's first bytes, so
        // it runs under the first-request deadline too; a shutdown before
        // them closes the connection: there is nothing to finish.
        let connection = async move {
            let (h2, io) = tokio::select! {
                sniffed = crate::sniff::sniff(io) => sniffed?,
                _ = stopping.wait_for(|stop| *stop) => return Ok(()),
            };
            if h2 {
                let io = TokioIo::new(io);
                let streams = Streams::new();
                let service = service(proxy, conn, seen, Some(streams.clone()));
                let conn = builder.h2.serve_connection(io, service);
                let result = streams::serve_h2(
                    conn,
                    |c| c.graceful_shutdown(),
                    streams,
                    stopping,
                    request_timeout,
                    send_timeout,
                )
                .await;
                // Held until here so a drain waits for this connection.
                drop(watcher);
                result
            } else {
                let io = if fast_h1 {
                    let fast = h1::Conn {
                        proxy: proxy.clone(),
                        info: conn.clone(),
                        seen: seen.clone(),
                        stopping,
                        request_timeout,
                    };
                    // The watcher is held meanwhile, so a drain waits for
                    // a fast-path request in flight.
                    match h1::serve(io, fast).await? {
                        h1::Ended::Closed => return Ok(()),
                        h1::Ended::Hyper(io) => io,
                    }
                } else {
                    io
                };
                let service = service(proxy, conn, seen, None);
                let conn = builder.h1.serve_connection(TokioIo::new(io), service);
                watcher.watch(conn).await.map_err(BoxError::from)
            }
        };
        tokio::pin!(connection);
        let result = tokio::select! {
            result = &mut connection => result,
            () = tokio::time::sleep(request_timeout) => {
                if !started.load(Ordering::Relaxed) {
                    tracing::debug!(%peer, "no request within request_timeout; connection closed");
                    return;
                }
                connection.await
            }
        };
        if let Err(e) = result {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
    }
}

/// The request handler of one connection. For HTTP/2, `streams` keeps
/// track of the open streams: a stream is open from its request until its
/// response body is finished or dropped (or the client resets it).
fn service(
    proxy: Arc<Proxy>,
    conn: Arc<ConnInfo>,
    seen: Arc<AtomicBool>,
    streams: Option<Arc<Streams>>,
) -> impl hyper::service::Service<
    http::Request<hyper::body::Incoming>,
    Response = http::Response<Counted>,
    Error = Infallible,
    Future = impl Future<Output = Result<http::Response<Counted>, Infallible>> + Send,
> {
    service_fn(move |req| {
        seen.store(true, Ordering::Relaxed);
        let proxy = proxy.clone();
        let conn = conn.clone();
        let open = streams.as_ref().map(OpenStream::new);
        async move {
            let (parts, body) = req.into_parts();
            let head = RequestHead::from_parts(parts);
            let mut response = proxy.handle(conn, head, body, None).await;
            ResponseBody::fields_into_map(&mut response);
            Ok::<_, Infallible>(response.map(|body| Counted { body, open }))
        }
    })
}
