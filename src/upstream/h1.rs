//! The HTTP/1.1 codec of the upstream client: request heads encoded into a
//! reused buffer and written with the body frames in vectored writes,
//! response heads parsed with `httparse`, response bodies framed per
//! RFC 9112 §6.3. No I/O task of its own: everything runs on the task of the
//! request being served.

use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri, Version};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

/// Response header fields accepted, as hyper's client did.
const MAX_HEADERS: usize = 100;
/// The largest response head (status line and fields) accepted: what
/// hyper's read buffer was allowed to grow to before (`max_buf_size`).
pub const MAX_HEAD: usize = 1024 * 1024 + 64 * 1024;
/// The largest chunk-size line (with extensions) and the largest trailer
/// section, each: hyper's chunk-extension and trailer bounds.
const MAX_CHUNK_LINE: usize = 16 * 1024;
const MAX_TRAILERS: usize = 16 * 1024;
/// Free space made before a read: a small response arrives in one read; a
/// large body is read in pieces up to `READ_MAX`.
const READ_MIN: usize = 8 * 1024;
const READ_MAX: usize = 64 * 1024;
/// A read buffer grown beyond this is not kept with an idle connection.
pub const KEEP_BUF: usize = READ_MAX + READ_MIN;
/// IoSlices per `writev`: head and 63 frames (a body read from the client
/// in more frames than that takes more than one call).
const IOV: usize = 64;

/// Why an exchange on an upstream connection failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connection error: {0}")]
    Io(#[source] io::Error),
    #[error("connection closed before message completed")]
    Closed,
    #[error("invalid HTTP response head: {0}")]
    Parse(#[source] httparse::Error),
    #[error("invalid response header field name")]
    HeaderName,
    #[error("response has more than {MAX_HEADERS} header fields")]
    TooManyHeaders,
    #[error("response head is larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("invalid or conflicting Content-Length in the response")]
    ContentLength,
    #[error("Transfer-Encoding in an HTTP/1.0 response")]
    TransferEncodingHttp10,
    #[error("answered {0} to a request that asked for no upgrade")]
    Upgrade(StatusCode),
    #[error("invalid chunk size line in the response body")]
    ChunkSize,
    #[error("missing CRLF after a chunk of the response body")]
    ChunkEnd,
    #[error("response trailers are larger than {MAX_TRAILERS} bytes")]
    TrailersTooLarge,
}

/// One upstream connection and its buffers, reused across requests.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    /// Response bytes read and not yet consumed.
    read: BytesMut,
    /// The request head being written.
    head: Vec<u8>,
}

/// A parsed response head and how its body is framed.
pub struct Head {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Decoder,
    /// The response allows another request on this connection.
    pub keep_alive: bool,
}

impl Conn {
    pub fn new(stream: TcpStream) -> Conn {
        Conn {
            stream,
            read: BytesMut::new(),
            head: Vec::new(),
        }
    }

    /// An idle connection can carry a request if the upstream neither
    /// closed it nor sent anything since (hyper's `is_closed`). A
    /// non-blocking read: tokio answers `WouldBlock` without a system call
    /// while the socket has not become readable.
    pub fn idle_usable(&mut self) -> bool {
        if !self.read.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Gives back memory a large response left behind before the
    /// connection waits idle.
    pub fn shrink(&mut self) {
        if self.read.capacity() > KEEP_BUF {
            self.read = BytesMut::new();
        }
    }

    pub fn has_unread(&self) -> bool {
        !self.read.is_empty()
    }

    /// Lets `encode` write the request head into the connection's buffer.
    pub fn encode_head_with(&mut self, encode: impl Fn(&mut Vec<u8>)) {
        self.head.clear();
        encode(&mut self.head);
    }

    /// Writes the encoded head and `body` with vectored writes until all is
    /// written (one `writev` for a head and up to 63 frames the socket
    /// takes at once). On failure, says whether any byte went out: only a
    /// request of which nothing was written may be sent again.
    ///
    /// `Ok(false)`: the upstream answered before it read the whole request
    /// (an early 413 to a body larger than the socket buffers): writing
    /// stopped, the answer is in the read buffer, and the connection must
    /// not be reused. Without this the write would wait for a reader that
    /// never comes, until `upstream_timeout`.
    pub async fn write_request(&mut self, body: &[Bytes]) -> Result<bool, (bool, io::Error)> {
        let mut head_at = 0;
        let mut frame = 0;
        let mut frame_at = 0;
        let mut written_any = false;
        loop {
            let mut slices = [IoSlice::new(&[]); IOV];
            let mut n = 0;
            if head_at < self.head.len() {
                slices[0] = IoSlice::new(&self.head[head_at..]);
                n = 1;
            }
            let mut at = frame_at;
            for buf in body.iter().skip(frame) {
                if n == IOV {
                    break;
                }
                slices[n] = IoSlice::new(&buf[at..]);
                at = 0;
                n += 1;
            }
            if n == 0 {
                return Ok(true);
            }
            let stream = &mut self.stream;
            let read = &mut self.read;
            let slices = &slices[..n];
            // Only while the socket takes no more: the common write
            // completes at once and never looks at the read side.
            let written = std::future::poll_fn(|cx| {
                if let Poll::Ready(r) =
                    std::pin::Pin::new(&mut *stream).poll_write_vectored(cx, slices)
                {
                    return Poll::Ready(Some(r));
                }
                loop {
                    if let Err(e) = ready!(stream.poll_read_ready(cx)) {
                        return Poll::Ready(Some(Err(e)));
                    }
                    match stream.try_read_buf(read) {
                        // Stale readiness, now cleared: wait for either side.
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        Err(e) => return Poll::Ready(Some(Err(e))),
                        // Closed before answering: the write fails next.
                        Ok(0) => {
                            return Poll::Ready(Some(Err(io::ErrorKind::UnexpectedEof.into())))
                        }
                        // An interim 100 asks for the rest of the body.
                        Ok(_)
                            if read.starts_with(b"HTTP/1.1 100 ")
                                || read.starts_with(b"HTTP/1.0 100 ") => {}
                        Ok(_) => return Poll::Ready(None),
                    }
                }
            })
            .await;
            let mut wrote = match written {
                None => return Ok(false),
                Some(Ok(0)) => return Err((written_any, io::ErrorKind::WriteZero.into())),
                Some(Ok(w)) => w,
                Some(Err(e)) => return Err((written_any, e)),
            };
            written_any = true;
            let head_left = self.head.len() - head_at;
            let from_head = wrote.min(head_left);
            head_at += from_head;
            wrote -= from_head;
            while wrote > 0 {
                let Some(buf) = body.get(frame) else { break };
                let left = buf.len() - frame_at;
                if wrote >= left {
                    wrote -= left;
                    frame += 1;
                    frame_at = 0;
                } else {
                    frame_at += wrote;
                    wrote = 0;
                }
            }
            // Empty frames never hold a slice back.
            while body.get(frame).is_some_and(|b| b.len() == frame_at) {
                frame += 1;
                frame_at = 0;
            }
        }
    }

    /// Reads more response bytes into the buffer; `Ok(0)` at end of stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        let want = want.clamp(READ_MIN, READ_MAX);
        if self.read.capacity() - self.read.len() < want / 2 {
            self.read.reserve(want);
        }
        tokio_util::io::poll_read_buf(std::pin::Pin::new(&mut self.stream), cx, &mut self.read)
    }

    /// Reads the final response head (interim 1xx answers are skipped) to
    /// a request with method `method`. The response's fields go into
    /// `headers` (the request's map, emptied: its allocation is reused, as
    /// hyper's client did).
    pub async fn read_head(
        &mut self,
        method: &Method,
        mut headers: HeaderMap,
    ) -> Result<Head, Error> {
        headers.clear();
        loop {
            if let Some(head) = self.parse_head(method, &mut headers)? {
                return Ok(head);
            }
            if self.read.len() >= MAX_HEAD {
                return Err(Error::HeadTooLarge);
            }
            let n = std::future::poll_fn(|cx| self.poll_fill(cx, READ_MIN))
                .await
                .map_err(Error::Io)?;
            if n == 0 {
                return Err(Error::Closed);
            }
        }
    }

    /// A final response head from the buffered bytes, if complete.
    fn parse_head(
        &mut self,
        method: &Method,
        headers: &mut HeaderMap,
    ) -> Result<Option<Head>, Error> {
        loop {
            if self.read.is_empty() {
                return Ok(None);
            }
            // Field positions are noted during the parse, so the head is
            // frozen once and the values are slices of it, not copies.
            let mut spans = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
            let (len, code, minor, count) =
                {
                    let mut fields = [const { MaybeUninit::uninit() }; MAX_HEADERS];
                    let mut response = httparse::Response::new(&mut []);
                    let parsed = httparse::ParserConfig::default()
                        .parse_response_with_uninit_headers(&mut response, &self.read, &mut fields);
                    let len = match parsed {
                        Ok(httparse::Status::Complete(len)) => len,
                        Ok(httparse::Status::Partial) => return Ok(None),
                        Err(httparse::Error::TooManyHeaders) => return Err(Error::TooManyHeaders),
                        Err(e) => return Err(Error::Parse(e)),
                    };
                    if len > MAX_HEAD {
                        return Err(Error::HeadTooLarge);
                    }
                    let base = self.read.as_ptr() as usize;
                    let at = |s: &[u8]| (s.as_ptr() as usize - base) as u32;
                    for (span, f) in spans.iter_mut().zip(response.headers.iter()) {
                        let name = at(f.name.as_bytes());
                        let value = at(f.value);
                        *span = (
                            name,
                            name + f.name.len() as u32,
                            value,
                            value + f.value.len() as u32,
                        );
                    }
                    (
                        len,
                        response.code.unwrap_or(0),
                        response.version.unwrap_or(1),
                        response.headers.len(),
                    )
                };
            let status =
                StatusCode::from_u16(code).map_err(|_| Error::Parse(httparse::Error::Status))?;
            let head = self.read.split_to(len).freeze();
            if status == StatusCode::SWITCHING_PROTOCOLS {
                return Err(Error::Upgrade(status));
            }
            if status.is_informational() {
                continue; // 100, 103, …: the final answer follows
            }
            let version = if minor == 0 {
                Version::HTTP_10
            } else {
                Version::HTTP_11
            };
            headers.reserve(count);
            let mut fields = Fields::default();
            for &(n0, n1, v0, v1) in &spans[..count] {
                let name = HeaderName::from_bytes(&head[n0 as usize..n1 as usize])
                    .map_err(|_| Error::HeaderName)?;
                let value = HeaderValue::from_maybe_shared(head.slice(v0 as usize..v1 as usize))
                    .map_err(|_| Error::Parse(httparse::Error::HeaderValue))?;
                fields.note(&name, &value);
                headers.append(name, value);
            }
            let headers = std::mem::take(headers);
            return frame(status, version, headers, &fields, method).map(Some);
        }
    }
}

/// What the framing fields of a response head say, noted as the fields are
/// read (no lookups afterwards).
#[derive(Debug, Default)]
struct Fields {
    close: bool,
    keep_alive: bool,
    transfer_encoding: bool,
    /// The last Transfer-Encoding field's final coding is `chunked`.
    chunked: bool,
    length: Option<u64>,
    bad_length: bool,
}

impl Fields {
    fn note(&mut self, name: &HeaderName, value: &HeaderValue) {
        if name == header::CONNECTION {
            for token in value.as_bytes().split(|&b| b == b',') {
                let token = token.trim_ascii();
                self.close |= token.eq_ignore_ascii_case(b"close");
                self.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name == header::TRANSFER_ENCODING {
            self.transfer_encoding = true;
            let last = value.as_bytes().rsplit(|&b| b == b',').next();
            self.chunked = last.is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name == header::CONTENT_LENGTH {
            // Every field and every list element: the same decimal number.
            for part in value.as_bytes().split(|&b| b == b',') {
                let Some(n) = crate::headers::content_length_value(part.trim_ascii()) else {
                    self.bad_length = true;
                    continue;
                };
                match self.length {
                    Some(prev) if prev != n => self.bad_length = true,
                    _ => self.length = Some(n),
                }
            }
        }
    }
}

/// The body framing of a final response, RFC 9112 §6.3 in its order.
fn frame(
    status: StatusCode,
    version: Version,
    mut headers: HeaderMap,
    fields: &Fields,
    method: &Method,
) -> Result<Head, Error> {
    let mut keep_alive = match version {
        Version::HTTP_10 => fields.keep_alive && !fields.close,
        _ => !fields.close,
    };
    let body = if method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Decoder::Length(0)
    } else if fields.transfer_encoding {
        if version == Version::HTTP_10 {
            return Err(Error::TransferEncodingHttp10);
        }
        // Transfer-Encoding overrides Content-Length, which must not be
        // passed on; a message with both is a smuggling attempt or a bug,
        // so the connection is not used again.
        if headers.remove(header::CONTENT_LENGTH).is_some() {
            keep_alive = false;
        }
        if fields.chunked {
            Decoder::Chunked(Chunk::Size)
        } else {
            keep_alive = false;
            Decoder::Close
        }
    } else if fields.bad_length {
        return Err(Error::ContentLength);
    } else if let Some(len) = fields.length {
        Decoder::Length(len)
    } else {
        keep_alive = false;
        Decoder::Close
    };
    Ok(Head {
        status,
        version,
        headers,
        body,
        keep_alive,
    })
}

/// Where a response body's framing is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoder {
    /// This many bytes are still to come (0: the body is complete).
    Length(u64),
    Chunked(Chunk),
    /// Read until the upstream closes.
    Close,
    /// Read until the upstream closed: complete.
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    /// Trailer fields (dropped), this many bytes of them so far.
    Trailers(usize),
}

impl Decoder {
    pub fn is_complete(&self) -> bool {
        matches!(self, Decoder::Length(0) | Decoder::Closed)
    }

    pub fn remaining(&self) -> Option<u64> {
        match self {
            Decoder::Length(n) => Some(*n),
            Decoder::Closed => Some(0),
            Decoder::Chunked(_) | Decoder::Close => None,
        }
    }

    /// The next piece of body data, `None` once the body is complete.
    /// Reads from the connection only when the buffered bytes hold no data
    /// and no end. After handing out data it moves past whatever framing
    /// (chunk ends, the last chunk, trailers) is already buffered, so a
    /// body that ended is known to have ended with its last data.
    pub fn poll_data(
        &mut self,
        conn: &mut Conn,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Error>>> {
        loop {
            match self.decode(&mut conn.read, true) {
                Err(e) => return Poll::Ready(Some(Err(e))),
                Ok(Some(data)) => {
                    // An error here is found again on the next poll.
                    let _ = self.decode(&mut conn.read, false);
                    return Poll::Ready(Some(Ok(data)));
                }
                Ok(None) if self.is_complete() => return Poll::Ready(None),
                Ok(None) => {}
            }
            let want = match self {
                Decoder::Length(n) | Decoder::Chunked(Chunk::Data(n)) => {
                    usize::try_from(*n).unwrap_or(usize::MAX)
                }
                _ => READ_MIN,
            };
            match ready!(conn.poll_fill(cx, want)) {
                Err(e) => return Poll::Ready(Some(Err(Error::Io(e)))),
                Ok(0) if *self == Decoder::Close => *self = Decoder::Closed,
                Ok(0) => return Poll::Ready(Some(Err(Error::Closed))),
                Ok(_) => {}
            }
        }
    }

    /// Advances through the buffered bytes; returns data when `emit` and
    /// some is buffered, else `None` (more input needed, or complete).
    fn decode(&mut self, buf: &mut BytesMut, emit: bool) -> Result<Option<Bytes>, Error> {
        loop {
            match self {
                Decoder::Length(0) | Decoder::Closed => return Ok(None),
                Decoder::Length(n) => {
                    if !emit || buf.is_empty() {
                        return Ok(None);
                    }
                    let take = take(buf, n);
                    return Ok(Some(take));
                }
                Decoder::Close => {
                    if !emit || buf.is_empty() {
                        return Ok(None);
                    }
                    return Ok(Some(buf.split().freeze()));
                }
                Decoder::Chunked(Chunk::Data(0)) => *self = Decoder::Chunked(Chunk::DataEnd),
                Decoder::Chunked(Chunk::Data(n)) => {
                    if !emit || buf.is_empty() {
                        return Ok(None);
                    }
                    return Ok(Some(take(buf, n)));
                }
                Decoder::Chunked(Chunk::DataEnd) => {
                    if buf.len() < 2 {
                        return Ok(None);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(Error::ChunkEnd);
                    }
                    buf.advance(2);
                    *self = Decoder::Chunked(Chunk::Size);
                }
                Decoder::Chunked(Chunk::Size) => match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        buf.advance(used);
                        *self = match size {
                            0 => Decoder::Chunked(Chunk::Trailers(0)),
                            n => Decoder::Chunked(Chunk::Data(n)),
                        };
                    }
                    Ok(httparse::Status::Partial) if buf.len() > MAX_CHUNK_LINE => {
                        return Err(Error::ChunkSize)
                    }
                    Ok(httparse::Status::Partial) => return Ok(None),
                    Err(httparse::InvalidChunkSize) => return Err(Error::ChunkSize),
                },
                Decoder::Chunked(Chunk::Trailers(seen)) => {
                    let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
                        if *seen + buf.len() > MAX_TRAILERS {
                            return Err(Error::TrailersTooLarge);
                        }
                        return Ok(None);
                    };
                    buf.advance(eol + 2);
                    *self = if eol == 0 {
                        Decoder::Length(0) // the empty line: complete
                    } else if *seen + eol + 2 > MAX_TRAILERS {
                        return Err(Error::TrailersTooLarge);
                    } else {
                        Decoder::Chunked(Chunk::Trailers(*seen + eol + 2))
                    };
                }
            }
        }
    }
}

/// Up to `*n` buffered bytes, counted off `*n`.
fn take(buf: &mut BytesMut, n: &mut u64) -> Bytes {
    let k = usize::try_from(*n).map_or(buf.len(), |n| n.min(buf.len()));
    *n -= k as u64;
    buf.split_to(k).freeze()
}

/// Encodes a request head: the request line in origin form, the fields in
/// their order (names lower-case, as hyper wrote them), and `Content-Length`
/// when the fields have none and there is a body.
pub fn encode_head(
    out: &mut Vec<u8>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body_len: u64,
) {
    out.clear();
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    let target = uri.path_and_query().map_or("/", |pq| pq.as_str());
    out.extend_from_slice(if target.is_empty() {
        b"/"
    } else {
        target.as_bytes()
    });
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if body_len > 0 && !headers.contains_key(header::CONTENT_LENGTH) {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(body_len).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn fields(h: &HeaderMap) -> Fields {
        let mut f = Fields::default();
        for (name, value) in h {
            f.note(name, value);
        }
        f
    }

    #[test]
    fn content_lengths_must_agree() {
        let cl = |v: &[&str]| {
            let pairs: Vec<_> = v.iter().map(|v| ("content-length", *v)).collect();
            let f = fields(&headers(&pairs));
            (!f.bad_length).then_some(f.length)
        };
        assert_eq!(cl(&["5"]), Some(Some(5)));
        assert_eq!(cl(&["5", "5"]), Some(Some(5)));
        assert_eq!(cl(&["5, 5"]), Some(Some(5)));
        assert_eq!(cl(&[]), Some(None));
        for bad in [
            &["5", "6"][..],
            &["5, 6"],
            &["+5"],
            &["-1"],
            &[""],
            &["99999999999999999999"],
        ] {
            assert_eq!(cl(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn framing_follows_rfc_9112_order() {
        let post = Method::POST;
        let f = |status: u16, version, pairs: &[(&str, &str)], method: &Method| {
            let h = headers(pairs);
            let fields = fields(&h);
            frame(
                StatusCode::from_u16(status).unwrap(),
                version,
                h,
                &fields,
                method,
            )
        };
        let v11 = Version::HTTP_11;
        let h = f(204, v11, &[("content-length", "5")], &post).unwrap();
        assert_eq!((h.body, h.keep_alive), (Decoder::Length(0), true));
        let h = f(200, v11, &[("content-length", "5")], &Method::HEAD).unwrap();
        assert_eq!(h.body, Decoder::Length(0));
        let te_cl = [
            ("transfer-encoding", "gzip, chunked"),
            ("content-length", "5"),
        ];
        let h = f(200, v11, &te_cl, &post).unwrap();
        assert_eq!(
            (h.body, h.keep_alive),
            (Decoder::Chunked(Chunk::Size), false)
        );
        assert!(!h.headers.contains_key(header::CONTENT_LENGTH));
        let h = f(200, v11, &[("transfer-encoding", "chunked, gzip")], &post).unwrap();
        assert_eq!((h.body, h.keep_alive), (Decoder::Close, false));
        let h = f(200, v11, &[], &post).unwrap();
        assert_eq!((h.body, h.keep_alive), (Decoder::Close, false));
        let close = [("connection", "Close"), ("content-length", "1")];
        assert!(!f(200, v11, &close, &post).unwrap().keep_alive);
        let h = f(200, Version::HTTP_10, &[("content-length", "1")], &post).unwrap();
        assert!(!h.keep_alive);
        let ka = [("connection", "keep-alive"), ("content-length", "1")];
        assert!(f(200, Version::HTTP_10, &ka, &post).unwrap().keep_alive);
        let te10 = [("transfer-encoding", "chunked")];
        assert!(f(200, Version::HTTP_10, &te10, &post).is_err());
        assert!(f(200, v11, &[("content-length", "1, 2")], &post).is_err());
    }

    fn decode_all(mut d: Decoder, wire: &[u8]) -> Result<(Vec<u8>, Decoder, usize), Error> {
        let mut buf = BytesMut::from(wire);
        let mut out = Vec::new();
        while let Some(data) = d.decode(&mut buf, true)? {
            out.extend_from_slice(&data);
        }
        Ok((out, d, buf.len()))
    }

    #[test]
    fn chunked_bodies_decode_and_bad_ones_fail() {
        let wire = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-t: 1\r\n\r\nNEXT";
        let (body, d, left) = decode_all(Decoder::Chunked(Chunk::Size), wire).unwrap();
        assert_eq!(body, b"hello world");
        assert!(d.is_complete());
        assert_eq!(left, 4);
        assert!(matches!(
            decode_all(Decoder::Chunked(Chunk::Size), b"5\r\nhelloXX0\r\n\r\n"),
            Err(Error::ChunkEnd)
        ));
        assert!(matches!(
            decode_all(Decoder::Chunked(Chunk::Size), b"1ffffffffffffffff\r\n"),
            Err(Error::ChunkSize)
        ));
        assert!(matches!(
            decode_all(Decoder::Chunked(Chunk::Size), b"zz\r\n"),
            Err(Error::ChunkSize)
        ));
    }
}
