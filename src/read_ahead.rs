//! Read-ahead under rustls: one socket read of up to [`READ_AHEAD`] bytes,
//! handed to rustls in the small pieces it asks for.
//!
//! rustls reads ciphertext into its own buffer at most 4 KiB beyond what it
//! already holds (and shrinks that buffer back to 4 KiB whenever it has
//! consumed everything), so a full 16 KiB TLS record took four or five
//! `recvfrom` calls: six per 16 KiB webhook where nginx (OpenSSL) makes one.
//! Below rustls, this wrapper asks the socket for up to 64 KiB at once and
//! serves rustls' reads from that buffer: a user-space copy instead of
//! several system calls. Reads at least as large as the buffer go straight
//! to the socket.
//!
//! The buffer only exists while a connection is busy: once it is drained
//! and the socket has nothing more (the read would block), it is freed, so
//! an idle keep-alive connection holds no read-ahead memory. Writes pass
//! through unchanged.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Largest read from the socket (four full TLS records).
pub const READ_AHEAD: usize = 64 * 1024;

/// A stream whose small reads are served from one larger read.
pub struct ReadAhead<I> {
    inner: I,
    /// Bytes read from `inner` that the reader above has not taken yet.
    buf: BytesMut,
}

impl<I> ReadAhead<I> {
    pub fn new(inner: I) -> ReadAhead<I> {
        ReadAhead {
            inner,
            buf: BytesMut::new(),
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for ReadAhead<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        dst: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.buf.is_empty() {
            if dst.remaining() >= READ_AHEAD {
                return Pin::new(&mut this.inner).poll_read(cx, dst);
            }
            // Reuses the allocation when there is one (nothing else holds it).
            this.buf.reserve(READ_AHEAD);
            match tokio_util::io::poll_read_buf(Pin::new(&mut this.inner), cx, &mut this.buf) {
                Poll::Ready(Ok(_)) => {} // 0 bytes: end of stream, `dst` stays empty
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    // Idle: give the memory back until data comes.
                    this.buf = BytesMut::new();
                    return Poll::Pending;
                }
            }
        }
        let n = this.buf.len().min(dst.remaining());
        dst.put_slice(&this.buf[..n]);
        this.buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for ReadAhead<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// A connected pair of real loopback sockets: (client, server side).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    /// Every byte arrives once and in order, whatever the read sizes asked
    /// for (smaller than, equal to and larger than the buffer), and the end
    /// of the stream reads as 0 bytes.
    #[tokio::test]
    async fn bytes_arrive_in_order_for_any_read_size() {
        let (mut client, server) = pair().await;
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.shutdown().await.unwrap();
        });
        let mut r = ReadAhead::new(server);
        let mut got = Vec::new();
        let sizes = [1, 4096, 5, READ_AHEAD, 17, READ_AHEAD + 3, 4096, 100_000];
        let mut buf = vec![0u8; READ_AHEAD + 100_000];
        for i in 0.. {
            let want = sizes[i % sizes.len()];
            let n = r.read(&mut buf[..want]).await.unwrap();
            if n == 0 {
                break;
            }
            assert!(n <= want);
            got.extend_from_slice(&buf[..n]);
        }
        writer.await.unwrap();
        assert_eq!(got.len(), data.len());
        assert!(got == data, "bytes reordered or changed");
    }

    /// A small read takes what is there from one larger socket read: after
    /// the peer wrote 20 KB at once, five 4 KiB reads are served without
    /// the socket having anything more to give.
    #[tokio::test]
    async fn small_reads_are_served_from_one_socket_read() {
        let (mut client, server) = pair().await;
        client.write_all(&[b'x'; 20_000]).await.unwrap();
        let mut r = ReadAhead::new(server);
        let mut buf = [0u8; 4096];
        // The first read may see only part of the bytes; wait until it
        // has all of them buffered.
        let mut total = r.read(&mut buf).await.unwrap();
        while total < 20_000 {
            if r.buf.is_empty() {
                total += r.read(&mut buf).await.unwrap();
                continue;
            }
            let before = r.buf.len();
            let n = r.read(&mut buf).await.unwrap();
            assert_eq!(r.buf.len(), before - n, "served from the buffer");
            total += n;
        }
        assert_eq!(total, 20_000);
        // Drained, nothing pending on the socket: the buffer is freed.
        let pending = futures_poll_once(&mut r).await;
        assert!(pending, "no data: the read is pending");
        assert_eq!(r.buf.capacity(), 0, "idle connection holds no buffer");
    }

    /// Polls one read once; true when it was pending.
    async fn futures_poll_once(r: &mut ReadAhead<TcpStream>) -> bool {
        std::future::poll_fn(|cx| {
            let mut b = [0u8; 16];
            let mut rb = ReadBuf::new(&mut b);
            Poll::Ready(Pin::new(&mut *r).poll_read(cx, &mut rb).is_pending())
        })
        .await
    }

    /// Writes go to the socket unchanged.
    #[tokio::test]
    async fn writes_pass_through() {
        let (mut client, server) = pair().await;
        let mut r = ReadAhead::new(server);
        r.write_all(b"hello").await.unwrap();
        r.flush().await.unwrap();
        let mut got = [0u8; 5];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
    }
}
