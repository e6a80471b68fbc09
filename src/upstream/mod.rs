//! Upstream connections: one small keep-alive pool per upstream origin,
//! shared across reloads, and a purpose-built HTTP/1.1 client ([`h1`]) that
//! runs on the task of the request it serves (no connection task, no
//! channels between the two).
//!
//! The request path resolves its route's [`Pool`] once at config load (like
//! the metric handles), so sending a request is: pop an idle connection
//! under a short lock, write the head and the body frames, read the response
//! head. The response body ([`UpstreamBody`]) owns the connection while it
//! streams and puts it back in the pool itself once it was read to a clean
//! end, the response allowed keep-alive and nothing beyond it arrived. A
//! body dropped early (the client went away) or failed takes its connection
//! with it. A connection that went away while idle is noticed before use,
//! and a request of which nothing could be written on a reused connection
//! is sent again on another one; never once bytes went out.
//!
//! The response's header fields are not a `HeaderMap`: the end-to-end ones
//! travel raw with the body ([`Fields`], hop-by-hop ones already dropped),
//! and the response's own map stays empty.

pub mod h1;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::Authority;
use http::{Method, Request, Response};
use http_body::{Frame, SizeHint};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::body::ReplayBody;
pub use crate::fields::{Fields, NONE as NO_FIELDS};
use h1::{Conn, Decoder};

/// Idle connections are not reused after this long (the upstream may have
/// closed them; nginx's default keepalive_timeout is 75 s).
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle connections kept per upstream origin.
const MAX_IDLE: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to {authority}: {source}")]
    Connect {
        authority: Authority,
        #[source]
        source: std::io::Error,
    },
    #[error("request to {authority} failed: {source}")]
    Request {
        authority: Authority,
        #[source]
        source: h1::Error,
    },
}

/// Pools by origin, so a reload keeps the connections of unchanged
/// upstreams.
#[derive(Debug, Default)]
pub struct Upstreams {
    pools: Mutex<HashMap<Authority, Arc<Pool>>>,
}

impl Upstreams {
    /// The pool for `authority`, created on first use.
    pub fn pool(&self, authority: &Authority) -> Arc<Pool> {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools
            .entry(authority.clone())
            .or_insert_with(|| {
                Arc::new(Pool {
                    authority: authority.clone(),
                    idle: Mutex::new(Vec::new()),
                })
            })
            .clone()
    }
}

/// Idle keep-alive connections to one origin.
#[derive(Debug)]
pub struct Pool {
    authority: Authority,
    idle: Mutex<Vec<Idle>>,
}

#[derive(Debug)]
struct Idle {
    conn: Box<Conn>,
    since: Instant,
}

impl Pool {
    /// An idle connection that is still open, if any (dropping stale ones).
    /// The check runs outside the lock.
    fn take_idle(&self, now: Instant) -> Option<Box<Conn>> {
        loop {
            let popped = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let mut idle = popped?;
            if now.saturating_duration_since(idle.since) < IDLE_TIMEOUT && idle.conn.idle_usable() {
                return Some(idle.conn);
            }
        }
    }

    /// Keeps a connection whose last exchange ended cleanly for the next
    /// request.
    fn put(&self, mut conn: Box<Conn>) {
        conn.shrink();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }

    async fn connect(&self) -> Result<Box<Conn>, UpstreamError> {
        let stream = TcpStream::connect(self.authority.as_str())
            .await
            .map_err(|source| UpstreamError::Connect {
                authority: self.authority.clone(),
                source,
            })?;
        let _ = stream.set_nodelay(true);
        Ok(Box::new(Conn::new(stream)))
    }

    fn failed(&self, source: h1::Error) -> UpstreamError {
        UpstreamError::Request {
            authority: self.authority.clone(),
            source,
        }
    }

    /// Sends `req` on an idle connection, or a new one, and reads the
    /// response head (its end-to-end fields are in the body:
    /// [`UpstreamBody::fields`]). A request of which nothing was written on a reused
    /// connection (it was closing) is sent again on another connection.
    pub async fn send(
        self: &Arc<Self>,
        req: Request<ReplayBody>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let (mut parts, body) = req.into_parts();
        let len = body.bufs().iter().map(|b| b.len() as u64).sum();
        let headers = std::mem::take(&mut parts.headers);
        let encode =
            |out: &mut Vec<u8>| h1::encode_head(out, &parts.method, &parts.uri, &headers, len);
        self.send_head(&parts.method, encode, body, Instant::now())
            .await
    }

    /// Sends a request whose head `encode` writes (the request line, the
    /// fields, the blank line) and whose body is `body`, as [`Pool::send`].
    /// `now`: the caller's clock read as it sends (an idle connection's age
    /// is measured against it).
    pub async fn send_head(
        self: &Arc<Self>,
        method: &Method,
        encode: impl Fn(&mut Vec<u8>),
        body: ReplayBody,
        now: Instant,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let frames = body.bufs();
        let (mut conn, complete) = loop {
            let (mut conn, reused) = match self.take_idle(now) {
                Some(conn) => (conn, true),
                None => (self.connect().await?, false),
            };
            conn.encode_head_with(&encode);
            match conn.write_request(frames).await {
                Ok(complete) => break (conn, complete),
                Err((false, _)) if reused => continue,
                Err((_, e)) => return Err(self.failed(h1::Error::Io(e))),
            }
        };
        // Written: the body's buffers go now, not after the upstream's
        // answer (with 64 concurrent 1 MiB uploads that is megabytes).
        drop(body);
        let head = conn.read_head(method).await.map_err(|e| self.failed(e))?;
        let mut body = UpstreamBody {
            conn: Some(conn),
            decoder: head.body,
            // A request cut short by an early answer leaves the upstream
            // waiting for the rest: never reused.
            keep_alive: head.keep_alive && complete,
            pool: self.clone(),
            fields: head.fields,
        };
        body.end_if_complete();
        let mut response = Response::new(body);
        *response.status_mut() = head.status;
        *response.version_mut() = head.version;
        Ok(response)
    }
}

/// An upstream response body, streamed from the connection as it is
/// polled. It owns the connection until the body ends; see the module docs
/// for when the connection goes back to its pool.
#[derive(Debug)]
pub struct UpstreamBody {
    /// `None` once the body ended (or failed). Boxed: moved between the
    /// pool and responses, allocated once per connection.
    conn: Option<Box<Conn>>,
    decoder: Decoder,
    keep_alive: bool,
    pool: Arc<Pool>,
    /// The response's end-to-end header fields: they travel with the body
    /// (the response's map stays empty), so the HTTP/1.1 fast path writes
    /// them without a map ever being built.
    fields: Fields,
}

impl UpstreamBody {
    /// The response's end-to-end header fields.
    pub fn fields(&self) -> &Fields {
        &self.fields
    }

    /// Takes the fields out (for a response hyper writes from its map).
    pub fn take_fields(&mut self) -> Fields {
        std::mem::take(&mut self.fields)
    }

    /// Once the body is complete: the connection goes back to the pool if
    /// it can carry another request and holds no byte beyond this response.
    fn end_if_complete(&mut self) {
        if !self.decoder.is_complete() {
            return;
        }
        if let Some(conn) = self.conn.take() {
            if self.keep_alive && !conn.has_unread() {
                self.pool.put(conn);
            }
        }
    }
}

impl http_body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = UpstreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        let this = self.get_mut();
        let Some(conn) = this.conn.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = std::task::ready!(this.decoder.poll_data(conn, cx));
        let out = match polled {
            Some(Ok(data)) => Some(Ok(Frame::data(data))),
            Some(Err(e)) => {
                this.conn = None; // never reused after an error
                return Poll::Ready(Some(Err(this.pool.failed(e))));
            }
            None => None,
        };
        this.end_if_complete();
        Poll::Ready(out)
    }

    fn is_end_stream(&self) -> bool {
        self.decoder.is_complete()
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder.remaining() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}
