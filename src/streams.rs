//! HTTP/2 connection upkeep that hyper does not do: an idle timeout, and
//! `send_timeout` for a stream whose flow-control window the client keeps
//! closed.
//!
//! [`Streams`] is one connection's bookkeeping. Each request holds an
//! [`OpenStream`] from its start until its response body is finished or
//! dropped (inside [`Counted`], the response body type of every
//! connection). [`serve_h2`] drives the connection and closes it:
//!
//! - gracefully (GOAWAY, NO_ERROR) after `request_timeout` with no open
//!   stream, or when the gateway stops;
//! - at once when a stream has handed hyper data and not been asked for
//!   more for `send_timeout`: hyper polls a response body only when the
//!   client's window has room, so a client that never sends WINDOW_UPDATE
//!   would otherwise hold the stream, its upstream request and the
//!   connection forever. The socket-level case (a client that stops reading
//!   at all) is [`crate::send_timeout`]'s.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::proxy::ResponseBody;
use crate::upstream::UpstreamError;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One HTTP/2 connection's open streams.
pub struct Streams {
    open: watch::Sender<usize>,
    epoch: Instant,
    /// Per open stream: when it last handed hyper data without being polled
    /// again since, as milliseconds after `epoch` plus one; 0 when it is
    /// not waiting on the client.
    waiting: Mutex<Vec<Weak<AtomicU64>>>,
}

impl Streams {
    pub fn new() -> Arc<Streams> {
        Arc::new(Streams {
            open: watch::Sender::new(0),
            epoch: Instant::now(),
            waiting: Mutex::new(Vec::new()),
        })
    }

    fn now_mark(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1)
    }

    /// How long the longest-waiting stream has waited on the client's
    /// window; forgets streams that are gone.
    fn longest_wait(&self) -> Duration {
        let now = self.now_mark();
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        waiting.retain(|w| w.strong_count() > 0);
        let oldest = waiting
            .iter()
            .filter_map(Weak::upgrade)
            .map(|mark| mark.load(Ordering::Relaxed))
            .filter(|&mark| mark != 0)
            .min();
        oldest.map_or(Duration::ZERO, |mark| {
            Duration::from_millis(now.saturating_sub(mark))
        })
    }
}

/// Counts one open HTTP/2 stream while it lives.
pub struct OpenStream {
    streams: Arc<Streams>,
    waiting: Arc<AtomicU64>,
}

impl OpenStream {
    pub fn new(streams: &Arc<Streams>) -> OpenStream {
        streams.open.send_modify(|n| *n += 1);
        let waiting = Arc::new(AtomicU64::new(0));
        streams
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::downgrade(&waiting));
        OpenStream {
            streams: streams.clone(),
            waiting,
        }
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.streams.open.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// A response body that keeps its stream counted as open until it is
/// finished or dropped, and notes when it waits on the client's window.
/// HTTP/1 responses carry no [`OpenStream`].
pub struct Counted {
    pub body: ResponseBody,
    pub open: Option<OpenStream>,
}

impl Body for Counted {
    type Data = Bytes;
    type Error = UpstreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if let Some(open) = &this.open {
            // Data handed over: until hyper asks again, the stream waits
            // for window. Anything else: it waits on the upstream, or is
            // done.
            let mark = match &polled {
                Poll::Ready(Some(Ok(frame))) if frame.is_data() => open.streams.now_mark(),
                _ => 0,
            };
            open.waiting.store(mark, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Drives an HTTP/2 connection until it ends; see the module docs for when
/// it is closed. `graceful_shutdown` is hyper's (sends GOAWAY).
pub async fn serve_h2<C>(
    conn: C,
    graceful_shutdown: impl Fn(Pin<&mut C>),
    streams: Arc<Streams>,
    mut stopping: watch::Receiver<bool>,
    idle_timeout: Duration,
    send_timeout: Duration,
) -> Result<(), BoxError>
where
    C: Future<Output = hyper::Result<()>>,
{
    tokio::pin!(conn);
    let mut open = streams.open.subscribe();
    let every = (send_timeout / 4).max(Duration::from_millis(10));
    let mut check = tokio::time::interval_at(Instant::now() + every, every);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut closing = false;
    loop {
        let count = *open.borrow_and_update();
        tokio::select! {
            result = conn.as_mut() => return result.map_err(BoxError::from),
            Ok(()) = open.changed() => {}
            () = tokio::time::sleep(idle_timeout), if count == 0 && !closing => {
                tracing::debug!("HTTP/2 connection idle for request_timeout; GOAWAY");
                graceful_shutdown(conn.as_mut());
                closing = true;
            }
            Ok(_) = stopping.wait_for(|stop| *stop), if !closing => {
                graceful_shutdown(conn.as_mut());
                closing = true;
            }
            _ = check.tick(), if count > 0 => {
                if streams.longest_wait() >= send_timeout {
                    // Dropping the connection drops its streams and their
                    // upstream requests.
                    return Err("an HTTP/2 stream's flow-control window stayed closed for send_timeout; connection closed".into());
                }
            }
        }
    }
}
