//! The request body of the fast path: `Content-Length` bytes, first what
//! the head's read already brought, then socket reads, each handed on as a
//! `Bytes` frame split off the connection's read buffer (no copy).

use std::io;
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use tokio::io::AsyncRead;

use crate::server::MAX_READ_BUF;

/// The connection's read side while a request is served: shared (behind
/// an uncontended lock: one task polls both) by the request body, which
/// reads it, and the connection loop, which watches it for the client
/// going away once the body is read.
pub struct Reader<'a, I> {
    pub io: &'a mut I,
    pub buf: &'a mut BytesMut,
    /// Body bytes not read yet: when not 0 after the response, the
    /// connection cannot carry another request.
    pub remaining: u64,
}

/// A request body read from the connection's [`Reader`].
pub struct RequestBody<'r, 'a, I> {
    pub(super) reader: &'r Mutex<Reader<'a, I>>,
    /// A copy of the reader's `remaining`, for `size_hint` and
    /// `is_end_stream` without the lock.
    pub(super) remaining: u64,
}

/// Locks the reader; a poisoned lock (a panic while holding it) still
/// holds consistent bytes, since every update is a single step.
pub(super) fn lock<'r, 'a, I>(m: &'r Mutex<Reader<'a, I>>) -> MutexGuard<'r, Reader<'a, I>> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<I: AsyncRead + Unpin> Body for RequestBody<'_, '_, I> {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        let mut guard = lock(this.reader);
        let r = &mut *guard;
        if r.buf.is_empty() {
            // Up to the rest of the body, at most one read buffer's worth
            // (as hyper's read strategy caps it).
            let want = usize::try_from(r.remaining)
                .unwrap_or(usize::MAX)
                .min(MAX_READ_BUF);
            r.buf.reserve(want);
            match tokio_util::io::poll_read_buf(Pin::new(&mut *r.io), cx, &mut *r.buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed before the whole body (Content-Length) arrived",
                    ))))
                }
                Poll::Ready(Ok(_)) => {}
            }
        }
        let take = usize::try_from(r.remaining)
            .unwrap_or(usize::MAX)
            .min(r.buf.len());
        r.remaining -= take as u64;
        this.remaining = r.remaining;
        Poll::Ready(Some(Ok(Frame::data(r.buf.split_to(take).freeze()))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}
