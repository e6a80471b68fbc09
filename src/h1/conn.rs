//! One HTTP/1 connection on the fast path: read a head, call the proxy,
//! write its response, and again, until the client closes, a head is not
//! eligible (hand-over to hyper), or the connection must close.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use http::Response;
use http_body::Body;
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use super::body::{self, Reader, RequestBody};
use super::head::{self, Eligible, Framing, Parsed};
use crate::proxy::{ConnInfo, Proxy, ResponseBody};
use crate::sniff::Rewind;

/// Free space asked for before each read of a head: a 16 KiB webhook (head
/// and body) usually arrives in one `recv`.
const HEAD_READ: usize = 32 * 1024;

/// Response bodies up to this size are copied behind the head so the whole
/// response goes out in one write; larger frames are written as they are.
const COALESCE: usize = 16 * 1024;

/// What a connection's fast path needs.
pub struct Conn {
    pub proxy: Arc<Proxy>,
    pub info: Arc<ConnInfo>,
    /// Set at the first request, for the first-request deadline.
    pub seen: Arc<AtomicBool>,
    pub stopping: watch::Receiver<bool>,
    /// The limit for each head, also the keep-alive idle limit (hyper's
    /// `header_read_timeout`).
    pub request_timeout: Duration,
}

/// How the fast path left the connection.
pub enum Ended<I> {
    /// Closed (or to be dropped): nothing more to serve.
    Closed,
    /// A head the fast path does not serve: hyper takes the connection,
    /// with every byte read and not yet served put back in front.
    Hyper(Rewind<I>),
}

enum Head {
    Eligible(Eligible),
    Hyper,
    Closed,
}

/// Serves requests on `io` until it closes or goes to hyper. I/O errors
/// (client gone, `send_timeout`) end the connection.
pub async fn serve<I>(mut io: Rewind<I>, mut c: Conn) -> io::Result<Ended<I>>
where
    I: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut buf = BytesMut::new();
    let mut out = BytesMut::new();
    let mut timer = None;
    let mut upstream_timer = None;
    loop {
        let waiting = Waiting {
            stopping: &mut c.stopping,
            timeout: c.request_timeout,
            timer: &mut timer,
        };
        let mut eligible = match read_head(&mut io, &mut buf, waiting).await? {
            Head::Eligible(e) => e,
            Head::Hyper => return Ok(Ended::Hyper(io.rewound(buf.freeze()))),
            Head::Closed => return Ok(Ended::Closed),
        };
        let head_bytes = buf.split_to(eligible.head_len()).freeze();
        let Some(request) = eligible.request(&head_bytes) else {
            // A name, value or target hyper refuses: hyper answers it.
            let mut all = BytesMut::with_capacity(head_bytes.len() + buf.len());
            all.extend_from_slice(&head_bytes);
            all.extend_from_slice(&buf);
            return Ok(Ended::Hyper(io.rewound(all.freeze())));
        };
        c.seen.store(true, Ordering::Relaxed);
        let reader = Mutex::new(Reader {
            io: &mut io,
            buf: &mut buf,
            remaining: eligible.content_length,
        });
        let body = RequestBody {
            reader: &reader,
            remaining: eligible.content_length,
        };
        // Pinned where it is built (the handler's future is large, and
        // each move of it is a copy), and dropped before the reader is.
        let response = {
            let handling = std::pin::pin!(c.proxy.clone().handle(
                c.info.clone(),
                request,
                body,
                Some(&mut upstream_timer)
            ));
            until_client_gone(handling, &reader).await
        };
        let Some(response) = response else {
            // Dropping the request cancels it upstream, as hyper does.
            return Ok(Ended::Closed);
        };
        let remaining = reader
            .into_inner()
            .unwrap_or_else(|e| e.into_inner())
            .remaining;
        drop(head_bytes);
        // Unread body bytes must never be parsed as the next request.
        let close =
            eligible.close || remaining > 0 || head::wants_close(&response) || *c.stopping.borrow();
        write_response(&mut io, &mut out, response, close).await?;
        if close {
            let _ = io.shutdown().await;
            return Ok(Ended::Closed);
        }
    }
}

/// Runs the proxy's handling of a request; once its body has been read
/// and nothing else is buffered, also watches the connection: the client
/// closing it (or an error) ends the request (`None`), as hyper's
/// dispatcher does, so a sender that gave up does not hold an upstream
/// request (and a replay in-flight mark) until `upstream_timeout`. Bytes
/// that arrive meanwhile (a pipelined request) are kept for later.
async fn until_client_gone<F, I>(
    mut handling: Pin<&mut F>,
    reader: &Mutex<Reader<'_, I>>,
) -> Option<F::Output>
where
    F: Future,
    I: AsyncRead + Unpin,
{
    let mut watching = true;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = handling.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        if !watching {
            return Poll::Pending;
        }
        let mut guard = body::lock(reader);
        let r = &mut *guard;
        if r.remaining > 0 || !r.buf.is_empty() {
            return Poll::Pending;
        }
        // A small read on the stack: the read buffer may still be shared
        // with the body's frames (on their way upstream), and reserving in
        // it now would allocate a fresh one for every request.
        let mut probe = [const { MaybeUninit::<u8>::uninit() }; 1024];
        let mut probe = ReadBuf::uninit(&mut probe);
        match Pin::new(&mut *r.io).poll_read(cx, &mut probe) {
            Poll::Ready(Err(_)) => Poll::Ready(None),
            Poll::Ready(Ok(())) if probe.filled().is_empty() => Poll::Ready(None),
            Poll::Ready(Ok(())) => {
                r.buf.extend_from_slice(probe.filled());
                watching = false;
                Poll::Pending
            }
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// What bounds the wait for a head.
struct Waiting<'a> {
    stopping: &'a mut watch::Receiver<bool>,
    timeout: Duration,
    /// The connection's one head timer, made at the first head that has to
    /// wait and moved to each later head's deadline: a later deadline only
    /// updates the entry already in tokio's timer wheel, where a new timer
    /// per head was an insertion and a removal under the driver's lock.
    timer: &'a mut Option<Pin<Box<Sleep>>>,
}

/// Reads until `buf` starts with a whole head (or cannot). Waiting for a
/// head is bounded by `timeout`; an idle connection (no byte of the next
/// request yet) also closes at once when the server stops, or when the
/// client closes. A timeout closes without an answer, as hyper's header
/// timeout does.
async fn read_head<I: AsyncRead + Unpin>(
    io: &mut I,
    buf: &mut BytesMut,
    w: Waiting<'_>,
) -> io::Result<Head> {
    let Waiting {
        stopping,
        timeout,
        timer,
    } = w;
    let mut deadline = None;
    loop {
        if !buf.is_empty() {
            match head::parse(buf) {
                Parsed::Eligible(e) => return Ok(Head::Eligible(e)),
                Parsed::Hyper => return Ok(Head::Hyper),
                Parsed::Partial => {}
            }
        }
        let idle = buf.is_empty();
        if idle && *stopping.borrow() {
            return Ok(Head::Closed);
        }
        buf.reserve(HEAD_READ);
        // A read that is ready at once (a pipelined or already arrived
        // request) needs no timer.
        let ready = std::future::poll_fn(|cx| {
            Poll::Ready(tokio_util::io::poll_read_buf(
                Pin::new(&mut *io),
                cx,
                &mut *buf,
            ))
        })
        .await;
        let read = match ready {
            Poll::Ready(read) => read,
            Poll::Pending => {
                let at = *deadline.get_or_insert_with(|| Instant::now() + timeout);
                let sleep = match timer {
                    Some(sleep) => {
                        if sleep.deadline() != at {
                            sleep.as_mut().reset(at);
                        }
                        sleep.as_mut()
                    }
                    None => timer
                        .insert(Box::pin(tokio::time::sleep_until(at)))
                        .as_mut(),
                };
                tokio::select! {
                    read = io.read_buf(buf) => read,
                    () = sleep => return Ok(Head::Closed),
                    _ = stopping.wait_for(|stop| *stop), if idle => return Ok(Head::Closed),
                }
            }
        };
        match read? {
            // EOF mid-head: hyper decides what that gets.
            0 if idle => return Ok(Head::Closed),
            0 => return Ok(Head::Hyper),
            _ => {}
        }
    }
}

/// Writes the response: head, then the body framed by length or chunked.
/// A small body goes out in the head's write; the head is also flushed
/// whenever the body has nothing ready, so a slow upstream body streams.
async fn write_response<I: AsyncWrite + Unpin>(
    io: &mut I,
    out: &mut BytesMut,
    mut response: Response<ResponseBody>,
    close: bool,
) -> io::Result<()> {
    out.clear();
    let exact = response.body().size_hint().exact();
    let empty = response.body().is_end_stream();
    let framing = DATE.with(|d| {
        let mut d = d.borrow_mut();
        let upstream = response.body().fields();
        head::encode_response(out, &response, upstream, exact, empty, close, d.now())
    });
    let body = response.body_mut();
    let mut sent = 0u64;
    if framing != Framing::None {
        loop {
            let polled =
                std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *body).poll_frame(cx))).await;
            let next = match polled {
                Poll::Ready(next) => next,
                Poll::Pending => {
                    if !out.is_empty() {
                        io.write_all(out).await?;
                        out.clear();
                        io.flush().await?;
                    }
                    body.frame().await
                }
            };
            let data = match next {
                None => break,
                Some(Err(e)) => return Err(io::Error::other(e)),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if !data.is_empty() => data,
                    _ => continue, // trailers and empty frames: nothing to send
                },
            };
            sent += data.len() as u64;
            if framing == Framing::Chunked {
                out.put_slice(format!("{:x}\r\n", data.len()).as_bytes());
            }
            write_data(io, out, data).await?;
            if framing == Framing::Chunked {
                out.put_slice(b"\r\n");
            }
        }
        match framing {
            Framing::Chunked => out.put_slice(b"0\r\n\r\n"),
            Framing::Length(n) if n != sent => {
                // The body ended short or ran long: the client cannot frame
                // what follows, so the connection ends (as hyper's does).
                io.write_all(out).await?;
                return Err(io::Error::other("response body does not match its length"));
            }
            _ => {}
        }
    }
    if !out.is_empty() {
        io.write_all(out).await?;
    }
    io.flush().await?;
    // The body ended: its exchange is recorded (metrics, access log) and
    // the upstream connection returned to its pool.
    drop(response);
    Ok(())
}

/// Appends a small frame to `out`; writes a large one straight after what
/// `out` holds (one vectored write), without copying it.
async fn write_data<I: AsyncWrite + Unpin>(
    io: &mut I,
    out: &mut BytesMut,
    data: Bytes,
) -> io::Result<()> {
    if out.len() + data.len() <= COALESCE {
        out.extend_from_slice(&data);
        return Ok(());
    }
    let mut both = bytes::Buf::chain(&out[..], data);
    io.write_all_buf(&mut both).await?;
    out.clear();
    Ok(())
}

thread_local! {
    static DATE: RefCell<Date> = const { RefCell::new(Date { second: u64::MAX, text: Vec::new() }) };
}

/// The `date` value, formatted once a second per thread (hyper caches it
/// the same way).
struct Date {
    second: u64,
    text: Vec<u8>,
}

impl Date {
    fn now(&mut self) -> &[u8] {
        let now = SystemTime::now();
        let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if second != self.second {
            self.second = second;
            self.text = httpdate::fmt_http_date(now).into_bytes();
        }
        &self.text
    }
}
