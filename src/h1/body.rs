//! The request body of the fast path: `Content-Length` bytes, first what
//! the head's read already brought, then socket reads, each handed on as a
//! `Bytes` frame split off the connection's read buffer (no copy).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use tokio::io::AsyncRead;

use crate::server::MAX_READ_BUF;

/// A request body read from the connection it borrows. `remaining` lives in
/// the connection loop, so it knows afterwards whether the body was read to
/// its end (the connection can carry another request) or not (it closes).
pub struct RequestBody<'a, I> {
    pub(super) io: &'a mut I,
    pub(super) buf: &'a mut BytesMut,
    pub(super) remaining: &'a mut u64,
}

impl<I: AsyncRead + Unpin> Body for RequestBody<'_, I> {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        if *this.remaining == 0 {
            return Poll::Ready(None);
        }
        if this.buf.is_empty() {
            // Up to the rest of the body, at most one read buffer's worth
            // (as hyper's read strategy caps it).
            let want = usize::try_from(*this.remaining)
                .unwrap_or(usize::MAX)
                .min(MAX_READ_BUF);
            this.buf.reserve(want);
            match tokio_util::io::poll_read_buf(Pin::new(&mut *this.io), cx, &mut *this.buf) {
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
        let take = usize::try_from(*this.remaining)
            .unwrap_or(usize::MAX)
            .min(this.buf.len());
        *this.remaining -= take as u64;
        Poll::Ready(Some(Ok(Frame::data(this.buf.split_to(take).freeze()))))
    }

    fn is_end_stream(&self) -> bool {
        *self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(*self.remaining)
    }
}
