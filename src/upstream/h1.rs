//! The HTTP/1.1 codec of the upstream client: request heads encoded into a
//! reused buffer and written with the body frames in vectored writes,
//! response heads parsed with `httparse`, response bodies framed per
//! RFC 9112 §6.3. No I/O task of its own: everything runs on the task of the
//! request being served.

use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap};
use http::{Method, StatusCode, Uri, Version};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

use crate::fields::{self, Fields, MAX_NAME};
use crate::headers;

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
    /// The end-to-end fields, raw.
    pub fields: Fields,
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
            if head_at >= self.head.len() && frame >= body.len() {
                return Ok(true);
            }
            let head = &self.head[head_at..];
            let stream = &mut self.stream;
            let read = &mut self.read;
            // Only while the socket takes no more: the common write
            // completes at once and never looks at the read side. The
            // slices are built on each poll, not kept across the await:
            // 64 of them would add 1 KiB to every future that holds this one.
            let written = std::future::poll_fn(|cx| {
                let mut slices = [IoSlice::new(&[]); IOV];
                let mut n = 0;
                if !head.is_empty() {
                    slices[0] = IoSlice::new(head);
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
                if let Poll::Ready(r) =
                    std::pin::Pin::new(&mut *stream).poll_write_vectored(cx, &slices[..n])
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
    /// a request with method `method`.
    pub async fn read_head(&mut self, method: &Method) -> Result<Head, Error> {
        loop {
            if let Some(head) = parse_head(&mut self.read, method)? {
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
}

/// A final response head from the bytes at the start of `read` (a
/// connection's read buffer), if complete: the head is split off `read`
/// and its end-to-end fields kept raw ([`Fields`]), no map built.
pub fn parse_head(read: &mut BytesMut, method: &Method) -> Result<Option<Head>, Error> {
    loop {
        if read.is_empty() {
            return Ok(None);
        }
        // Field positions are noted during the parse, so the head is split
        // off once and the fields are ranges of it, not copies.
        let mut spans = Vec::new();
        let (len, code, minor) = {
            let mut fields = [const { MaybeUninit::uninit() }; MAX_HEADERS];
            let mut response = httparse::Response::new(&mut []);
            let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
                &mut response,
                read,
                &mut fields,
            );
            let len = match parsed {
                Ok(httparse::Status::Complete(len)) => len,
                Ok(httparse::Status::Partial) => return Ok(None),
                Err(httparse::Error::TooManyHeaders) => return Err(Error::TooManyHeaders),
                Err(e) => return Err(Error::Parse(e)),
            };
            if len > MAX_HEAD {
                return Err(Error::HeadTooLarge);
            }
            let base = read.as_ptr() as usize;
            let range = |s: &[u8]| {
                let start = (s.as_ptr() as usize - base) as u32;
                (start, start + s.len() as u32)
            };
            spans.reserve_exact(response.headers.len());
            spans.extend(
                response
                    .headers
                    .iter()
                    .map(|f| (range(f.name.as_bytes()), range(f.value))),
            );
            (
                len,
                response.code.unwrap_or(0),
                response.version.unwrap_or(1),
            )
        };
        let status =
            StatusCode::from_u16(code).map_err(|_| Error::Parse(httparse::Error::Status))?;
        let mut head = read.split_to(len);
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
        let mut notes = Notes::default();
        for &((ns, ne), (vs, ve)) in &spans {
            let name = &mut head[ns as usize..ne as usize];
            // The one name httparse takes and a `HeaderName` does not (an
            // upstream's answer was a 502 when it was a map, and still is).
            if name.len() > MAX_NAME {
                return Err(Error::HeaderName);
            }
            // Lower case, as a map had it: the rules below compare bytes,
            // and the client gets the same names on every path.
            fields::lowercase_name(name);
            notes.note(
                &head[ns as usize..ne as usize],
                &head[vs as usize..ve as usize],
            );
        }
        let framed = frame(status, version, &notes, method)?;
        let fields = end_to_end(
            head.freeze(),
            spans,
            notes.connection_names,
            framed.drop_length,
        );
        return Ok(Some(Head {
            status,
            version,
            fields,
            body: framed.body,
            keep_alive: framed.keep_alive,
        }));
    }
}

/// Where a field's name and value are in the head.
type Span = ((u32, u32), (u32, u32));

/// The fields of `spans` (every field of `head`, names already lower-case)
/// that go on to the client by [`headers::crosses_to_client`].
/// `connection_names`: some Connection value names fields (usually none
/// does, and no list is built). `drop_length`: Content-Length goes too (a
/// Transfer-Encoding came with it and overrides it).
fn end_to_end(
    head: Bytes,
    mut spans: Vec<Span>,
    connection_names: bool,
    drop_length: bool,
) -> Fields {
    let at = |(s, e): (u32, u32)| &head[s as usize..e as usize];
    let named = if connection_names {
        headers::connection_tokens(
            spans
                .iter()
                .filter(|&&(n, _)| at(n) == b"connection")
                .map(|&(_, v)| at(v)),
        )
    } else {
        Vec::new()
    };
    spans.retain(|&(n, _)| {
        let name = at(n);
        headers::crosses_to_client(name, &named) && !(drop_length && name == b"content-length")
    });
    Fields::new(head, spans)
}

/// What the framing fields of a response head say, noted as the fields are
/// read (no lookups afterwards).
#[derive(Debug, Default)]
struct Notes {
    close: bool,
    keep_alive: bool,
    transfer_encoding: bool,
    /// The last Transfer-Encoding field's final coding is `chunked`.
    chunked: bool,
    /// Some Content-Length field, valid or not.
    length_field: bool,
    /// Some Connection value holds more than `close` and `keep-alive`: it
    /// may name fields, which are dropped too.
    connection_names: bool,
    length: Option<u64>,
    bad_length: bool,
}

impl Notes {
    /// Notes one field (`name` in lower case).
    fn note(&mut self, name: &[u8], value: &[u8]) {
        match name {
            b"connection" => {
                for token in value.split(|&b| b == b',') {
                    let token = token.trim_ascii();
                    if token.eq_ignore_ascii_case(b"close") {
                        self.close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        self.keep_alive = true;
                    } else if !token.is_empty() {
                        // Perhaps a field name: `headers::connection_tokens`
                        // decides, once the fields are all read.
                        self.connection_names = true;
                    }
                }
            }
            b"transfer-encoding" => {
                self.transfer_encoding = true;
                let last = value.rsplit(|&b| b == b',').next();
                self.chunked =
                    last.is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            }
            b"content-length" => {
                self.length_field = true;
                // Every field and every list element: the same decimal number.
                for part in value.split(|&b| b == b',') {
                    let Some(n) = headers::content_length_value(part.trim_ascii()) else {
                        self.bad_length = true;
                        continue;
                    };
                    match self.length {
                        Some(prev) if prev != n => self.bad_length = true,
                        _ => self.length = Some(n),
                    }
                }
            }
            _ => {}
        }
    }
}

/// How a final response's body is framed, and what that means for the
/// connection and the fields.
#[derive(Debug)]
struct Framed {
    body: Decoder,
    keep_alive: bool,
    /// Content-Length must not be passed on: Transfer-Encoding overrides it.
    drop_length: bool,
}

/// The body framing of a final response, RFC 9112 §6.3 in its order.
fn frame(
    status: StatusCode,
    version: Version,
    notes: &Notes,
    method: &Method,
) -> Result<Framed, Error> {
    let mut keep_alive = match version {
        Version::HTTP_10 => notes.keep_alive && !notes.close,
        _ => !notes.close,
    };
    let mut drop_length = false;
    let body = if method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Decoder::Length(0)
    } else if notes.transfer_encoding {
        if version == Version::HTTP_10 {
            return Err(Error::TransferEncodingHttp10);
        }
        // Transfer-Encoding overrides Content-Length, which must not be
        // passed on; a message with both is a smuggling attempt or a bug,
        // so the connection is not used again.
        if notes.length_field {
            drop_length = true;
            keep_alive = false;
        }
        if notes.chunked {
            Decoder::Chunked(Chunk::Size)
        } else {
            keep_alive = false;
            Decoder::Close
        }
    } else if notes.bad_length {
        return Err(Error::ContentLength);
    } else if let Some(len) = notes.length {
        Decoder::Length(len)
    } else {
        keep_alive = false;
        Decoder::Close
    };
    Ok(Framed {
        body,
        keep_alive,
        drop_length,
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

    /// Parses a whole head: `{version} {status} X`, `pairs`, blank line.
    fn parse(
        status: u16,
        version: &str,
        pairs: &[(&str, &str)],
        method: &Method,
    ) -> Result<Head, Error> {
        let mut wire = format!("{version} {status} X\r\n");
        for (k, v) in pairs {
            wire += &format!("{k}: {v}\r\n");
        }
        wire += "\r\n";
        let mut buf = BytesMut::from(wire.as_bytes());
        let head = parse_head(&mut buf, method)?.expect("a whole head");
        assert!(buf.is_empty());
        Ok(head)
    }

    fn names_values(f: &Fields) -> Vec<(String, Vec<u8>)> {
        f.iter()
            .map(|(n, v)| (String::from_utf8(n.to_vec()).unwrap(), v.to_vec()))
            .collect()
    }

    #[test]
    fn content_lengths_must_agree() {
        let cl = |v: &[&str]| {
            let mut n = Notes::default();
            for v in v {
                n.note(b"content-length", v.as_bytes());
            }
            (!n.bad_length).then_some(n.length)
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
        let f = |status: u16, version: Version, pairs: &[(&str, &str)], method: &Method| {
            let version = if version == Version::HTTP_10 {
                "HTTP/1.0"
            } else {
                "HTTP/1.1"
            };
            parse(status, version, pairs, method)
        };
        let v11 = Version::HTTP_11;
        let h = f(204, v11, &[("content-length", "5")], &post).unwrap();
        assert_eq!((h.body, h.keep_alive), (Decoder::Length(0), true));
        let h = f(200, v11, &[("content-length", "5")], &Method::HEAD).unwrap();
        assert_eq!(h.body, Decoder::Length(0));
        assert_eq!(h.fields.get("content-length"), Some(&b"5"[..]));
        let te_cl = [
            ("Transfer-Encoding", "gzip, chunked"),
            ("Content-Length", "5"),
            ("content-length", "5"),
        ];
        let h = f(200, v11, &te_cl, &post).unwrap();
        assert_eq!(
            (h.body, h.keep_alive),
            (Decoder::Chunked(Chunk::Size), false)
        );
        assert!(h.fields.is_empty(), "{:?}", h.fields);
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

    /// The end-to-end fields, in order, names lower-cased, values byte for
    /// byte (obs-text included); hop-by-hop and Connection-named ones gone;
    /// the body stays in the buffer; interim answers are skipped.
    #[test]
    fn end_to_end_fields_are_kept_raw() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n\
HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nConnection: X-Private, keep-alive\r\n\
X-Private: gone\r\nKeep-Alive: timeout=5\r\nX-MiXeD: caf\xc3\xa9 \xff\tend\r\n\
Set-Cookie: b=2\r\nx-private: gone too\r\nTrailer: x\r\nContent-Length: 4\r\n\
Proxy-Connection: x\r\nTE: trailers\r\nUpgrade: h2c\r\n\r\nbody"[..],
        );
        let head = parse_head(&mut buf, &Method::POST).unwrap().unwrap();
        assert_eq!(&buf[..], b"body");
        assert_eq!(
            (head.status, head.body, head.keep_alive),
            (StatusCode::OK, Decoder::Length(4), true)
        );
        let want: Vec<(String, Vec<u8>)> = [
            ("set-cookie", &b"a=1"[..]),
            ("x-mixed", b"caf\xc3\xa9 \xff\tend"),
            ("set-cookie", b"b=2"),
            ("content-length", b"4"),
        ]
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_vec()))
        .collect();
        assert_eq!(names_values(&head.fields), want);
        assert_eq!(head.fields.get("set-cookie"), Some(&b"a=1"[..]));
        // Values never show in Debug output.
        assert_eq!(
            format!("{:?}", head.fields),
            r#"["set-cookie", "x-mixed", "set-cookie", "content-length"]"#
        );
        // hyper's map gets the same fields; a map keeps the values of a
        // name together (their order kept), so the second Set-Cookie moves
        // up to the first: all the order RFC 9110 §5.3 gives meaning to.
        let mut map = http::HeaderMap::new();
        head.fields.append_to(&mut map);
        let from_map: Vec<(String, Vec<u8>)> = map
            .iter()
            .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
            .collect();
        let grouped = [0, 2, 1, 3].map(|i| want[i].clone());
        assert_eq!(from_map, grouped);
    }

    /// A name `http` cannot hold is a 502, as when the head became a map.
    #[test]
    fn overlong_field_name_is_refused() {
        let name = "x".repeat(MAX_NAME + 1);
        assert!(matches!(
            parse(
                200,
                "HTTP/1.1",
                &[(&name, "v"), ("content-length", "0")],
                &Method::POST
            ),
            Err(Error::HeaderName)
        ));
        let name = "x".repeat(MAX_NAME);
        let h = parse(
            200,
            "HTTP/1.1",
            &[(&name, "v"), ("content-length", "0")],
            &Method::POST,
        )
        .unwrap();
        assert_eq!(h.fields.len(), 2);
    }

    /// Whatever byte httparse takes in a name or a value, `http` takes too:
    /// the fields can always be moved into hyper's map, so the fast path
    /// and hyper relay the same fields.
    #[test]
    fn httparse_and_http_agree_on_every_byte() {
        for b in 0..=255u8 {
            for wire in [
                [
                    &b"HTTP/1.1 200 OK\r\nx"[..],
                    &[b],
                    b": v\r\ncontent-length: 0\r\n\r\n",
                ]
                .concat(),
                [
                    &b"HTTP/1.1 200 OK\r\nx: a"[..],
                    &[b],
                    b"a\r\ncontent-length: 0\r\n\r\n",
                ]
                .concat(),
            ] {
                let Ok(Some(head)) = parse_head(&mut BytesMut::from(&wire[..]), &Method::POST)
                else {
                    continue;
                };
                let n = head.fields.len();
                let mut map = http::HeaderMap::new();
                head.fields.append_to(&mut map);
                assert_eq!(map.len(), n, "byte {b:#04x}");
            }
        }
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
