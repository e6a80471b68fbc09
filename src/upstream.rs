//! Upstream connections: one small keep-alive pool per upstream origin,
//! shared across reloads, over hyper's HTTP/1.1 client connection API.
//!
//! The request path resolves its route's [`Pool`] once at config load (like
//! the metric handles), so sending a request is: pop an idle connection
//! under a short lock, send, and put the connection back when the
//! response body has been relayed to its end. A connection that went away
//! while idle is noticed before use, and a request refused by such a
//! connection before any byte was written is retried once on a new one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::uri::Authority;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::body::ReplayBody;

/// Idle connections are not reused after this long (the upstream may have
/// closed them; nginx's default keepalive_timeout is 75 s).
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle connections kept per upstream origin.
const MAX_IDLE: usize = 256;
/// How much hyper queues before it writes to the upstream (and the largest
/// read of an upstream response). The body frames are queued by reference,
/// not copied, so this costs no memory of its own; with hyper's default
/// (~400 KiB) a 1 MiB body went out in three or four `writev` calls, with
/// this in one, as nginx does. Reads of a response only grow towards it
/// while an upstream keeps filling them.
const UPSTREAM_BUF: usize = 1024 * 1024 + 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to {authority}: {source}")]
    Connect {
        authority: Authority,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP/1.1 handshake with {authority} failed: {source}")]
    Handshake {
        authority: Authority,
        #[source]
        source: hyper::Error,
    },
    #[error("request to {authority} failed: {source}")]
    Request {
        authority: Authority,
        #[source]
        source: hyper::Error,
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
    sender: SendRequest<ReplayBody>,
    since: Instant,
}

/// A connection lent to one request; give it back with [`Lease::release`]
/// once the response has been read to its end.
#[derive(Debug)]
pub struct Lease {
    pool: Arc<Pool>,
    sender: SendRequest<ReplayBody>,
}

impl Lease {
    /// Returns the connection to its pool if it can carry another request.
    pub fn release(self) {
        if self.sender.is_closed() {
            return;
        }
        let mut idle = self.pool.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(Idle {
                sender: self.sender,
                since: Instant::now(),
            });
        }
    }
}

impl Pool {
    /// An idle connection that is still open, if any (dropping stale ones).
    fn take_idle(&self) -> Option<SendRequest<ReplayBody>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(c) = idle.pop() {
            if c.since.elapsed() < IDLE_TIMEOUT && !c.sender.is_closed() {
                return Some(c.sender);
            }
        }
        None
    }

    async fn connect(&self) -> Result<SendRequest<ReplayBody>, UpstreamError> {
        let stream = TcpStream::connect(self.authority.as_str())
            .await
            .map_err(|source| UpstreamError::Connect {
                authority: self.authority.clone(),
                source,
            })?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http1::Builder::new()
            .max_buf_size(UPSTREAM_BUF)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| UpstreamError::Handshake {
                authority: self.authority.clone(),
                source,
            })?;
        let authority = self.authority.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(upstream = %authority, error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// Sends `req` on an idle connection, or a new one. A request that an
    /// idle connection refused before writing anything (it was closing) is
    /// sent again on a new connection.
    pub async fn send(
        self: &Arc<Self>,
        req: Request<ReplayBody>,
    ) -> Result<(Response<Incoming>, Lease), UpstreamError> {
        let mut req = req;
        while let Some(mut sender) = self.take_idle() {
            // Released connections may still be finishing the previous
            // exchange; an error here means it closed meanwhile.
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(response) => return Ok((response, self.lease(sender))),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => {
                        return Err(UpstreamError::Request {
                            authority: self.authority.clone(),
                            source: e.into_error(),
                        })
                    }
                },
            }
        }
        let mut sender = self.connect().await?;
        let response = sender
            .send_request(req)
            .await
            .map_err(|source| UpstreamError::Request {
                authority: self.authority.clone(),
                source,
            })?;
        Ok((response, self.lease(sender)))
    }

    fn lease(self: &Arc<Self>, sender: SendRequest<ReplayBody>) -> Lease {
        Lease {
            pool: self.clone(),
            sender,
        }
    }
}
