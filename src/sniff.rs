//! Tells an HTTP/2 connection (h2c with prior knowledge, or h2 over TLS)
//! from HTTP/1 by its first bytes, then hands those bytes back to the
//! protocol's parser.
//!
//! hyper-util's `auto` builder does the same, but it hides hyper's
//! `http1::Builder::max_header_size`: without it the only way to cap a
//! request head at 16 KiB is to cap hyper's whole read buffer, which also
//! caps every body read at 16 KiB (17 `recv` calls for a 256 KiB webhook
//! instead of 4).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// What every HTTP/2 connection starts with (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads until the bytes seen are the whole HTTP/2 preface or cannot be its
/// start; returns whether they are, and the stream with them put back.
/// Ordinary HTTP/1 requests are told apart by their first byte.
pub async fn sniff<I: AsyncRead + Unpin>(mut io: I) -> io::Result<(bool, Rewind<I>)> {
    let mut buf = [0u8; PREFACE.len()];
    let mut len = 0;
    while len < buf.len() {
        let n = io.read(&mut buf[len..]).await?;
        if n == 0 {
            break;
        }
        len += n;
        if buf[..len] != PREFACE[..len] {
            break;
        }
    }
    let h2 = buf[..len] == PREFACE[..];
    let prefix = Bytes::copy_from_slice(&buf[..len]);
    Ok((h2, Rewind { prefix, inner: io }))
}

/// A stream whose first reads return `prefix`.
pub struct Rewind<I> {
    prefix: Bytes,
    inner: I,
}

impl<I> Rewind<I> {
    /// The same stream with `bytes` put back in front of what it has not
    /// given out yet: the HTTP/1 fast path hands a connection to hyper
    /// with every byte it read and did not serve.
    pub fn rewound(self, bytes: Bytes) -> Rewind<I> {
        let prefix = if self.prefix.is_empty() {
            bytes
        } else {
            let mut both = bytes::BytesMut::with_capacity(bytes.len() + self.prefix.len());
            both.extend_from_slice(&bytes);
            both.extend_from_slice(&self.prefix);
            both.freeze()
        };
        Rewind {
            prefix,
            inner: self.inner,
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Rewind<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.is_empty() {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let n = self.prefix.len().min(buf.remaining());
        buf.put_slice(&self.prefix[..n]);
        self.prefix.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Rewind<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn sniffed(chunks: &[&[u8]]) -> (bool, Vec<u8>) {
        let (mut client, server) = tokio::io::duplex(1024);
        for chunk in chunks {
            client.write_all(chunk).await.unwrap();
        }
        drop(client);
        let (h2, mut io) = sniff(server).await.unwrap();
        let mut all = Vec::new();
        io.read_to_end(&mut all).await.unwrap();
        (h2, all)
    }

    #[tokio::test]
    async fn preface_is_h2_and_every_byte_is_given_back() {
        let mut h2 = PREFACE.to_vec();
        h2.extend_from_slice(b"\0\0\0\x04\0\0\0\0\0");
        assert_eq!(sniffed(&[&h2]).await, (true, h2.clone()));
        // Split across reads.
        assert_eq!(
            sniffed(&[&h2[..3], &h2[3..20], &h2[20..]]).await,
            (true, h2)
        );
    }

    #[tokio::test]
    async fn http1_and_short_or_near_misses_are_not_h2() {
        let h1 = b"POST /x HTTP/1.1\r\nHost: a\r\n\r\n".to_vec();
        assert_eq!(sniffed(&[&h1]).await, (false, h1));
        // A prefix of the preface, then EOF.
        assert_eq!(sniffed(&[b"PRI * HT"]).await, (false, b"PRI * HT".to_vec()));
        // The method PRI with another target.
        let pri = b"PRI /x HTTP/1.1\r\n\r\n".to_vec();
        assert_eq!(sniffed(&[&pri]).await, (false, pri));
        assert_eq!(sniffed(&[]).await, (false, Vec::new()));
    }
}
