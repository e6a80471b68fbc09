//! The request head of the fast path: parsed with httparse the way hyper
//! parses it, and accepted only when it is the plain webhook request. The
//! response head, encoded the way hyper encodes it.
//!
//! Everything a head can be besides the plain request (another method or
//! version, chunked or absent framing, `Expect`, `Upgrade`, a parse error,
//! a head over the limit) is *not* handled here: the connection is handed
//! to hyper with every byte read so far, so each of those edge cases keeps
//! hyper's answer (SPEC §1–§2, research/hardening.md).

use std::mem::MaybeUninit;

use bytes::{BufMut, Bytes, BytesMut};
use http::header;
use http::{Method, Response, StatusCode, Uri, Version};

use crate::fields::Fields;
use crate::proxy::RequestHead;

use crate::headers;
use crate::server::{MAX_HEADERS, MAX_HEADER_BYTES};

/// What the bytes at the start of the buffer are.
pub enum Parsed {
    /// A plain webhook request: its head is `len` bytes, its body
    /// `content_length` bytes.
    Eligible(Eligible),
    /// Not a whole head yet (and still under the size limit).
    Partial,
    /// Anything else: hyper decides (parse error, other framing, limits).
    Hyper,
}

/// Where an eligible head's parts are in the buffer.
pub struct Eligible {
    len: usize,
    pub content_length: u64,
    /// The client asked for the connection to close after this response.
    pub close: bool,
    method: Method,
    /// Byte range of the request target.
    target: (usize, usize),
    /// Byte ranges of each field's name and value, in order.
    fields: Vec<((u32, u32), (u32, u32))>,
}

/// Parses the head at the start of `buf` (with hyper's httparse settings:
/// the defaults, `MAX_HEADERS` fields, `MAX_HEADER_BYTES` bytes).
pub fn parse(buf: &[u8]) -> Parsed {
    // Uninitialised slots: httparse writes the ones it fills, and 100
    // initialised ones were a 3 KiB memset per head.
    let mut fields = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut fields) {
        Ok(httparse::Status::Complete(len)) if len <= MAX_HEADER_BYTES => len,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEADER_BYTES => return Parsed::Partial,
        _ => return Parsed::Hyper,
    };
    let (Some("POST"), Some(path), Some(1)) = (req.method, req.path, req.version) else {
        return Parsed::Hyper;
    };
    // Origin form only: `*`, absolute and authority forms stay hyper's.
    if !path.starts_with('/') {
        return Parsed::Hyper;
    }
    let base = buf.as_ptr() as usize;
    let range = |s: &[u8]| {
        let start = s.as_ptr() as usize - base;
        (start, start + s.len())
    };
    // A head is at most MAX_HEADER_BYTES: its offsets fit a u32.
    let span = |s: &[u8]| {
        let (start, end) = range(s);
        (start as u32, end as u32)
    };
    let mut content_length = None;
    let mut close = false;
    let mut ranges = Vec::with_capacity(req.headers.len());
    for field in req.headers.iter() {
        let name = field.name.as_bytes();
        // By length first: most fields are none of these five.
        let is = |n: &[u8]| name.len() == n.len() && name.eq_ignore_ascii_case(n);
        match name.len() {
            14 if is(b"content-length") => {
                if content_length.is_some() {
                    return Parsed::Hyper;
                }
                match headers::content_length_value(field.value) {
                    Some(n) => content_length = Some(n),
                    None => return Parsed::Hyper,
                }
            }
            17 if is(b"transfer-encoding") => return Parsed::Hyper,
            6 if is(b"expect") => return Parsed::Hyper,
            7 if is(b"upgrade") => return Parsed::Hyper,
            10 if is(b"connection") => match connection_close(field.value) {
                Some(c) => close |= c,
                None => return Parsed::Hyper,
            },
            _ => {}
        }
        ranges.push((span(name), span(field.value)));
    }
    let Some(content_length) = content_length else {
        return Parsed::Hyper;
    };
    Parsed::Eligible(Eligible {
        len,
        content_length,
        close,
        method: Method::POST,
        target: range(path.as_bytes()),
        fields: ranges,
    })
}

/// Whether a `Connection` value asks to close: `Some(false)` for
/// `keep-alive`, `Some(true)` when `close` is among the tokens, `None` for
/// any other token (hyper and the header rewriting handle those).
fn connection_close(value: &[u8]) -> Option<bool> {
    let mut close = false;
    for token in value.split(|&b| b == b',') {
        let token = token.trim_ascii();
        if token.eq_ignore_ascii_case(b"close") {
            close = true;
        } else if !token.is_empty() && !token.eq_ignore_ascii_case(b"keep-alive") {
            return None;
        }
    }
    Some(close)
}

impl Eligible {
    /// The head's length in bytes.
    pub fn head_len(&self) -> usize {
        self.len
    }

    /// The request's head, its fields sharing `head` (the head's bytes,
    /// split off the read buffer). httparse accepted its field names and
    /// values, so `http` would too (`fields::tests`); `None` when the target
    /// is one hyper would refuse: the connection is then handed to hyper.
    pub fn request(&mut self, head: &Bytes) -> Option<RequestHead> {
        let spans = std::mem::take(&mut self.fields);
        let uri = Uri::from_maybe_shared(head.slice(self.target.0..self.target.1)).ok()?;
        Some(RequestHead {
            method: self.method.clone(),
            uri,
            version: Version::HTTP_11,
            fields: Fields::new(head.clone(), spans),
        })
    }
}

/// How a response body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body at all (1xx, 204, 304).
    None,
    Length(u64),
    Chunked,
}

/// Appends the response head to `out`: status line, the proxy's fields in
/// order (the response's map, then `upstream`: an upstream's end-to-end
/// fields, copied as they are), then what hyper adds: the framing field
/// when the proxy set none (`content-length` when the body's size is
/// exact, else chunked), `connection: close` when the connection closes
/// after it, and `date`. As hyper does, an empty body (`empty`: the body is
/// already at its end) drops a `content-length` other than `0` (an
/// upstream's 204 or 304 may carry the length of what it did not send).
/// Returns the framing the body must use.
pub fn encode_response<B>(
    out: &mut BytesMut,
    response: &Response<B>,
    upstream: &Fields,
    exact: Option<u64>,
    empty: bool,
    close: bool,
    date: &[u8],
) -> Framing {
    let status = response.status();
    out.put_slice(b"HTTP/1.1 ");
    out.put_slice(status.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.put_slice(b"\r\n");
    let headers = response.headers();
    let framing = if bodiless(status) {
        Framing::None
    } else if empty {
        Framing::Length(0)
    } else {
        let length = match headers.get(header::CONTENT_LENGTH) {
            Some(v) => Some(v.as_bytes()),
            // An upstream's names are lower-case: compared as bytes.
            None => upstream
                .iter()
                .find(|(n, _)| *n == b"content-length")
                .map(|(_, v)| v),
        };
        match length.and_then(headers::content_length_value) {
            Some(n) => Framing::Length(n),
            None => match exact {
                Some(n) => Framing::Length(n),
                None => Framing::Chunked,
            },
        }
    };
    let mut fields = FieldWriter {
        framing,
        empty,
        close,
        wrote_length: false,
        has_connection_close: false,
        has_date: false,
    };
    for (name, value) in headers {
        fields.write(out, name.as_str().as_bytes(), value.as_bytes());
    }
    for (name, value) in upstream.iter() {
        fields.write(out, name, value);
    }
    let FieldWriter {
        wrote_length,
        has_connection_close,
        has_date,
        ..
    } = fields;
    match framing {
        Framing::Length(n) if !wrote_length => {
            out.put_slice(b"content-length: ");
            out.put_slice(itoa::Buffer::new().format(n).as_bytes());
            out.put_slice(b"\r\n");
        }
        Framing::Chunked => out.put_slice(b"transfer-encoding: chunked\r\n"),
        _ => {}
    }
    if close && !has_connection_close {
        out.put_slice(b"connection: close\r\n");
    }
    if !has_date {
        out.put_slice(b"date: ");
        out.put_slice(date);
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"\r\n");
    framing
}

/// The response's fields as they are written: the map's and the
/// upstream's alike (as bytes, names in lower case), under one set of rules.
struct FieldWriter {
    framing: Framing,
    empty: bool,
    close: bool,
    wrote_length: bool,
    has_connection_close: bool,
    has_date: bool,
}

impl FieldWriter {
    #[inline(always)]
    fn write(&mut self, out: &mut BytesMut, name: &[u8], value: &[u8]) {
        match name {
            // The proxy's response never carries hop-by-hop framing, but a
            // stray one must not contradict the framing written here.
            b"transfer-encoding" => return,
            b"content-length" => {
                if self.framing == Framing::Chunked
                    || (self.empty && value != b"0")
                    || self.wrote_length
                {
                    return;
                }
                self.wrote_length = true;
            }
            b"connection" => {
                self.has_connection_close |= connection_close(value) == Some(true);
                if self.close && !self.has_connection_close {
                    return;
                }
            }
            b"date" => self.has_date = true,
            _ => {}
        }
        out.put_slice(name);
        out.put_slice(b": ");
        out.put_slice(value);
        out.put_slice(b"\r\n");
    }
}

/// Statuses that never carry a body (RFC 9112 §6.3).
fn bodiless(status: StatusCode) -> bool {
    status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
}

/// Whether a response asks for the connection to close.
pub fn wants_close<B>(response: &Response<B>) -> bool {
    response
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .any(|v| connection_close(v.as_bytes()) == Some(true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::NO_FIELDS;
    use http::HeaderValue;

    fn eligible(raw: &[u8]) -> Option<Eligible> {
        match parse(raw) {
            Parsed::Eligible(e) => Some(e),
            _ => None,
        }
    }

    #[test]
    fn plain_webhook_is_eligible_and_rebuilt() {
        let raw = b"POST /hooks/a?x=1 HTTP/1.1\r\nHost: h\r\nX-Sig: ab\r\nx-sig: cd\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\nhello";
        let mut e = eligible(raw).unwrap();
        assert_eq!(e.content_length, 5);
        assert!(!e.close);
        let head = Bytes::copy_from_slice(&raw[..e.head_len()]);
        let req = e.request(&head).unwrap();
        assert_eq!(req.uri, "/hooks/a?x=1");
        let sigs: Vec<_> = req.fields.get_all("x-sig").collect();
        assert_eq!(sigs, [&b"ab"[..], b"cd"]);
        assert_eq!(req.fields.len(), 5);
    }

    #[test]
    fn everything_else_goes_to_hyper() {
        let hyper: &[&[u8]] = &[
            b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
            b"POST / HTTP/1.0\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
            b"POST http://h/ HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: h\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1 1\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nExpect: 100-continue\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nUpgrade: h2c\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nConnection: x-secret\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\n folded\r\n\r\n",
            b"POST / HTTP/1.1\r\nno colon\r\n\r\n",
        ];
        for raw in hyper {
            assert!(
                matches!(parse(raw), Parsed::Hyper),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
        assert!(matches!(parse(b"POST / HTTP/1.1\r\nHost"), Parsed::Partial));
        let mut big = b"POST / HTTP/1.1\r\nX: ".to_vec();
        big.resize(MAX_HEADER_BYTES + 1, b'a');
        assert!(matches!(parse(&big), Parsed::Hyper));
    }

    #[test]
    fn connection_tokens() {
        assert_eq!(connection_close(b"close"), Some(true));
        assert_eq!(connection_close(b"Keep-Alive"), Some(false));
        assert_eq!(connection_close(b"keep-alive, CLOSE"), Some(true));
        assert_eq!(connection_close(b"te"), None);
    }

    #[test]
    fn response_framing() {
        let mut out = BytesMut::new();
        let r = Response::new(());
        let f = encode_response(&mut out, &r, &NO_FIELDS, Some(3), false, true, b"D");
        assert_eq!(f, Framing::Length(3));
        assert_eq!(
            &out[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\ndate: D\r\n\r\n"
        );
        out.clear();
        assert_eq!(
            encode_response(&mut out, &r, &NO_FIELDS, None, false, false, b"D"),
            Framing::Chunked
        );
        // An upstream's 204 with the length of a body it did not send.
        let mut r = Response::new(());
        *r.status_mut() = StatusCode::NO_CONTENT;
        r.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        out.clear();
        assert_eq!(
            encode_response(&mut out, &r, &NO_FIELDS, Some(0), true, false, b"D"),
            Framing::None
        );
        assert_eq!(&out[..], b"HTTP/1.1 204 No Content\r\ndate: D\r\n\r\n");
        // An empty 200 says so.
        let r = Response::new(());
        out.clear();
        assert_eq!(
            encode_response(&mut out, &r, &NO_FIELDS, Some(0), true, false, b"D"),
            Framing::Length(0)
        );
        assert_eq!(
            &out[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\ndate: D\r\n\r\n"
        );
    }

    /// An upstream's fields follow the map's, byte for byte; its
    /// Content-Length frames the body, its Date replaces the gateway's.
    #[test]
    fn upstream_fields_are_copied_after_the_map() {
        let mut read = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nDate: Mon, 01 Jan 2024 00:00:00 GMT\r\n\
X-Odd: \xffv\r\nSet-Cookie: b=2\r\nContent-Length: 3\r\nConnection: close\r\n\r\n"[..],
        );
        let head = crate::upstream::h1::parse_head(&mut read, &Method::POST)
            .unwrap()
            .unwrap();
        let mut r = Response::new(());
        r.headers_mut()
            .insert("x-own", HeaderValue::from_static("1"));
        let mut out = BytesMut::new();
        let f = encode_response(&mut out, &r, &head.fields, None, false, true, b"D");
        assert_eq!(f, Framing::Length(3));
        assert_eq!(
            &out[..],
            &b"HTTP/1.1 200 OK\r\nx-own: 1\r\nset-cookie: a=1\r\n\
date: Mon, 01 Jan 2024 00:00:00 GMT\r\nx-odd: \xffv\r\nset-cookie: b=2\r\n\
content-length: 3\r\nconnection: close\r\n\r\n"[..]
        );
        // An empty body (a HEAD's answer) keeps no non-zero length.
        out.clear();
        let f = encode_response(&mut out, &r, &head.fields, Some(0), true, false, b"D");
        assert_eq!(f, Framing::Length(0));
        assert!(!out.windows(16).any(|w| w == b"content-length: 3"));
    }
}
