//! `limits.send_timeout` for client connections, with nginx's
//! `send_timeout` semantics: the clock runs only while a write to the
//! client cannot make progress, and restarts at every write that does.
//!
//! [`SendTimeout`] wraps the accepted TCP stream (under TLS, so TLS records
//! count too). Once a write has been blocked for the whole timeout — the
//! client stopped reading and its receive window and our send buffer are
//! full — the write fails with `TimedOut`. hyper then ends the connection
//! and drops the response being relayed, which drops the upstream
//! connection with it: the upstream request is cancelled, and a client that
//! never reads can hold neither a connection slot nor an upstream stream
//! for longer than this.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// A stream whose writes fail after `timeout` without progress.
pub struct SendTimeout<I> {
    inner: I,
    timeout: Duration,
    /// Allocated at the first blocked write and reused (reset) after.
    timer: Option<Pin<Box<Sleep>>>,
    /// The timer is running: the last write attempt was blocked.
    armed: bool,
}

impl<I> SendTimeout<I> {
    pub fn new(inner: I, timeout: Duration) -> SendTimeout<I> {
        SendTimeout {
            inner,
            timeout,
            timer: None,
            armed: false,
        }
    }

    /// Passes a finished write through (and stops the clock); on a blocked
    /// one, starts the clock or fails once it has run out.
    fn watch<T>(
        &mut self,
        polled: Poll<io::Result<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.armed = false;
            return polled;
        }
        let deadline = Instant::now() + self.timeout;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !self.armed {
            timer.as_mut().reset(deadline);
            self.armed = true;
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no write progress to the client within send_timeout",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for SendTimeout<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for SendTimeout<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.watch(polled, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.watch(polled, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.watch(polled, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.watch(polled, cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A peer that never reads: the write blocks once the buffer is full
    /// and fails at the timeout, not before.
    #[tokio::test]
    async fn blocked_write_fails_after_timeout() {
        let (near, _far) = tokio::io::duplex(1024);
        let mut io = SendTimeout::new(near, Duration::from_millis(200));
        let started = Instant::now();
        let err = io.write_all(&[0u8; 4096]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(200));
    }

    /// A slow reader that keeps taking bytes never trips the timeout, even
    /// when the whole write takes longer than it.
    #[tokio::test]
    async fn progress_restarts_the_clock() {
        use tokio::io::AsyncReadExt;
        let (near, mut far) = tokio::io::duplex(1024);
        let mut io = SendTimeout::new(near, Duration::from_millis(300));
        // The reader takes 1 KiB every 100 ms: each wait is under the
        // timeout, the total (about 400 ms) is over it.
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let mut total = 0;
            while total < 5120 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                total += far.read(&mut buf).await.unwrap();
            }
        });
        io.write_all(&[0u8; 5120]).await.unwrap();
        reader.await.unwrap();
    }
}
