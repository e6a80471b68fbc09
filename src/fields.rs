//! Header fields as they arrived: the head's bytes and where each name and
//! value sits in them, in order. Both directions use it.
//!
//! Requests: the HTTP/1.1 fast path hands the proxy the fields it parsed
//! without building an `http::HeaderMap` (hashing every name, sharing every
//! value): the proxy reads a handful of fields by name and writes all of
//! them upstream once, in order, which a short list does with less work.
//! The hyper path (HTTP/2, other HTTP/1 requests) converts its map into the
//! same form, so the request path has one way of reading fields.
//!
//! Responses: the upstream client keeps an answer's end-to-end fields this
//! way (`upstream::h1::parse_head`); they travel with the response body,
//! the fast path copies them into the client's response head, and only a
//! response hyper writes gets them moved into its map ([`Fields::append_to`]).

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};

/// Byte range in the head (`u32`: a request head is at most 16 KiB, an
/// upstream response head 1 MiB + 64 KiB).
type Span = (u32, u32);

/// Header fields in arrival order. A request's names are as the client
/// wrote them (any case), an upstream response's lower-cased by the
/// upstream client; values are trimmed of surrounding whitespace, as
/// `http`'s `HeaderValue`s are. Every name and value is one `http` accepts
/// (httparse accepts the same bytes: `tests::httparse_accepts_what_http_accepts`;
/// the upstream client refuses the one name it does not, one over
/// `MAX_NAME` bytes).
#[derive(Clone, Default)]
pub struct Fields {
    buf: Bytes,
    at: Vec<(Span, Span)>,
}

/// No fields: what the gateway's own responses carry.
pub static NONE: Fields = Fields {
    buf: Bytes::new(),
    at: Vec::new(),
};

/// The longest field name `http` takes (its `MAX_HEADER_NAME_LEN`).
pub const MAX_NAME: usize = (1 << 16) - 1;

impl Fields {
    /// Fields at `at` (name, value byte ranges) in `buf`, as httparse
    /// found them.
    pub fn new(buf: Bytes, at: Vec<(Span, Span)>) -> Fields {
        Fields { buf, at }
    }

    /// The fields of a `HeaderMap` (hyper's requests), in its order.
    pub fn from_map(map: &HeaderMap) -> Fields {
        let size = map
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len())
            .sum::<usize>();
        let mut buf = BytesMut::with_capacity(size);
        let mut at = Vec::with_capacity(map.len());
        for (name, value) in map {
            let n = push(&mut buf, name.as_str().as_bytes());
            let v = push(&mut buf, value.as_bytes());
            at.push((n, v));
        }
        Fields {
            buf: buf.freeze(),
            at,
        }
    }

    /// Every field, in order: (name, value).
    #[inline]
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.at.iter().map(|&(n, v)| (self.slice(n), self.slice(v)))
    }

    /// The values of the fields named `name` (lower-case, as `HeaderName`s
    /// are), in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        let name = name.as_bytes();
        self.iter()
            .filter(move |(n, _)| n.len() == name.len() && n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// The first value of the fields named `name`.
    pub fn get<'a>(&'a self, name: &'a str) -> Option<&'a [u8]> {
        self.get_all(name).next()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    pub fn len(&self) -> usize {
        self.at.len()
    }

    pub fn is_empty(&self) -> bool {
        self.at.is_empty()
    }

    /// Appends the fields to `map` (for hyper, which writes a map), values
    /// sharing the head's bytes. Every name and value is one `http` takes
    /// (see the type's docs), so nothing is dropped here.
    pub fn append_to(self, map: &mut HeaderMap) {
        map.reserve(self.at.len());
        for &(n, (vs, ve)) in &self.at {
            let name = HeaderName::from_bytes(self.slice(n));
            let value = HeaderValue::from_maybe_shared(self.buf.slice(vs as usize..ve as usize));
            if let (Ok(name), Ok(value)) = (name, value) {
                map.append(name, value);
            }
        }
    }

    #[inline]
    fn slice(&self, (start, end): Span) -> &[u8] {
        &self.buf[start as usize..end as usize]
    }
}

/// Names only: values may carry credentials, cookies or tokens.
impl std::fmt::Debug for Fields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.iter().map(|(n, _)| String::from_utf8_lossy(n)))
            .finish()
    }
}

fn push(buf: &mut BytesMut, bytes: &[u8]) -> Span {
    let start = buf.len();
    buf.put_slice(bytes);
    (start as u32, buf.len() as u32)
}

/// Reading fields by name, from a request's [`Fields`] or from a
/// `HeaderMap` (the spool worker, the `sign`/`verify` commands, tests).
pub trait Lookup {
    /// The values of the fields named `name`, in order.
    fn values<'a>(&'a self, name: &'a HeaderName) -> impl Iterator<Item = &'a [u8]> + 'a;
}

impl Lookup for Fields {
    fn values<'a>(&'a self, name: &'a HeaderName) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.get_all(name.as_str())
    }
}

impl Lookup for HeaderMap {
    fn values<'a>(&'a self, name: &'a HeaderName) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.get_all(name).into_iter().map(|v| v.as_bytes())
    }
}

/// A field name `http::HeaderName` accepts: a token (RFC 9110 §5.6.2),
/// which is also what httparse accepts (`tests::same_as_http`).
pub fn name_ok(name: &[u8]) -> bool {
    !name.is_empty()
        && name
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Lower-cases a field name in place (the upstream client's response
/// names, the upstream head's request names): eight bytes at a time (a name of
/// five or six fields is lower-cased on every response; byte by byte that
/// was about 280 instructions a response under callgrind). The last eight
/// bytes may overlap the eight before: lower-casing twice changes nothing.
pub fn lowercase_name(name: &mut [u8]) {
    let Some(last) = name.len().checked_sub(8) else {
        name.make_ascii_lowercase();
        return;
    };
    let mut at = 0;
    loop {
        let start = at.min(last);
        let mut word = [0u8; 8];
        word.copy_from_slice(&name[start..start + 8]);
        let word = lowercase_word(u64::from_ne_bytes(word));
        name[start..start + 8].copy_from_slice(&word.to_ne_bytes());
        if start == last {
            return;
        }
        at += 8;
    }
}

/// Eight name bytes lower-cased at once. Names are token bytes, all below
/// 0x80, so adding below 0x80 to each byte never carries into the next:
/// a byte's top bit then says whether it was at least `A`, and (the other
/// sum) above `Z`; `A`..=`Z` gain 0x20.
fn lowercase_word(w: u64) -> u64 {
    const LANES: u64 = 0x0101_0101_0101_0101;
    let at_least_a = w + LANES * (0x80 - b'A' as u64);
    let above_z = w + LANES * (0x80 - b'Z' as u64 - 1);
    let upper = at_least_a & !above_z & (LANES * 0x80);
    w | (upper >> 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    /// The byte rules agree with `http`'s for every byte.
    #[test]
    fn same_as_http() {
        for b in 0u8..=255 {
            let name = [b'x', b];
            assert_eq!(
                name_ok(&name),
                HeaderName::from_bytes(&name).is_ok(),
                "name byte {b:#x}"
            );
        }
        assert!(!name_ok(b""));
        assert!(HeaderName::from_bytes(b"").is_err());
    }

    /// What httparse (with hyper's settings: the defaults) accepts in a
    /// request's field names and values is exactly what `http` accepts, byte
    /// for byte: the fast path's fields need no second check.
    #[test]
    fn httparse_accepts_what_http_accepts() {
        let parsed = |raw: &[u8]| -> Option<(Vec<u8>, Vec<u8>)> {
            let mut fields = [httparse::EMPTY_HEADER; 4];
            let mut req = httparse::Request::new(&mut fields);
            match req.parse(raw) {
                Ok(httparse::Status::Complete(_)) if req.headers.len() == 1 => Some((
                    req.headers[0].name.as_bytes().to_vec(),
                    req.headers[0].value.to_vec(),
                )),
                _ => None,
            }
        };
        for b in 0u8..=255 {
            let name = [b'x', b];
            let mut raw = b"POST / HTTP/1.1\r\n".to_vec();
            raw.extend_from_slice(&name);
            raw.extend_from_slice(b": v\r\n\r\n");
            let accepted = parsed(&raw).is_some_and(|(n, _)| n == name);
            assert_eq!(
                accepted,
                HeaderName::from_bytes(&name).is_ok(),
                "name byte {b:#x}"
            );
            assert_eq!(accepted, name_ok(&name), "name byte {b:#x}");

            let value = [b'a', b, b'b'];
            let mut raw = b"POST / HTTP/1.1\r\nx: ".to_vec();
            raw.extend_from_slice(&value);
            raw.extend_from_slice(b"\r\n\r\n");
            let accepted = parsed(&raw).is_some_and(|(_, v)| v == value);
            assert_eq!(
                accepted,
                HeaderValue::from_bytes(&value).is_ok(),
                "value byte {b:#x}"
            );
        }
    }

    #[test]
    fn lookups_ignore_case_and_keep_order() {
        let mut map = HeaderMap::new();
        map.append("x-a", HeaderValue::from_static("1"));
        map.append("host", HeaderValue::from_static("h"));
        map.append("x-a", HeaderValue::from_static("2"));
        let f = Fields::from_map(&map);
        assert_eq!(f.len(), 3);
        assert_eq!(f.get("host"), Some(&b"h"[..]));
        assert_eq!(f.get_all("x-a").collect::<Vec<_>>(), vec![&b"1"[..], b"2"]);
        let raw = Bytes::from_static(b"X-A1Host2");
        let f = Fields::new(raw, vec![((0, 3), (3, 4)), ((4, 8), (8, 9))]);
        assert_eq!(f.get("x-a"), Some(&b"1"[..]));
        assert_eq!(f.get("host"), Some(&b"2"[..]));
        assert!(!f.contains("x-b"));
        let name = HeaderName::from_static("x-a");
        assert_eq!(
            Lookup::values(&f, &name).collect::<Vec<_>>(),
            vec![&b"1"[..]]
        );
    }

    /// Eight at a time or one by one, every token byte at every position
    /// of names of every length up to 24 is lower-cased as
    /// `make_ascii_lowercase` does.
    #[test]
    fn names_lowercase_like_std() {
        let tokens: Vec<u8> = (0..=255u8).filter(|&b| httparse_token(b)).collect();
        for len in 1..=24 {
            for (i, &b) in tokens.iter().enumerate() {
                let mut name: Vec<u8> = (0..len)
                    .map(|k| tokens[(i + k * 7) % tokens.len()])
                    .collect();
                name[len / 2] = b;
                let mut want = name.clone();
                want.make_ascii_lowercase();
                lowercase_name(&mut name);
                assert_eq!(name, want, "{len} {b:#04x}");
            }
        }
    }

    /// A token byte, as httparse takes it in a name: a name of this byte
    /// parses.
    fn httparse_token(b: u8) -> bool {
        let wire = [&b"HTTP/1.1 200 OK\r\n"[..], &[b], b": v\r\n\r\n"].concat();
        let mut fields = [httparse::EMPTY_HEADER; 1];
        httparse::Response::new(&mut fields).parse(&wire).is_ok()
    }
}
