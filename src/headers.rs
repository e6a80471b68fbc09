//! Header rewriting between client, gateway and upstream (pure functions).
//!
//! Hop-by-hop fields (RFC 9110 §7.6.1) are dropped, together with every field
//! the `Connection` header names, except the ones the gateway relies on or
//! sets itself. The surviving end-to-end fields keep their order. Neither
//! direction builds a map: the upstream request head is written from the
//! request's fields ([`write_upstream_head`]), and the upstream client
//! keeps a response's fields that [`crosses_to_client`] lets through.

use http::header::HeaderName;
use http::Method;

use crate::fields::Fields;

/// Connection-specific fields that never cross a proxy (RFC 9110 §7.6.1),
/// by lower-case name. Bytes, not `HeaderName`s: the upstream client checks
/// a response's fields without building a map.
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    matches!(
        name,
        b"connection"
            | b"keep-alive"
            | b"proxy-connection"
            | b"te"
            | b"trailer"
            | b"transfer-encoding"
            | b"upgrade"
    )
}

/// The rule for an upstream response's fields: a field (`name` in lower
/// case) goes on to the client unless it is hop-by-hop or one the
/// response's `Connection` values name (`named`: their
/// [`connection_tokens`], usually none).
#[inline]
pub fn crosses_to_client(name: &[u8], named: &[Vec<u8>]) -> bool {
    !is_hop_by_hop(name) && !named.iter().any(|t| t == name)
}

/// What the gateway adds to a forwarded request.
pub struct Forwarding<'a> {
    /// The peer's IP, formatted once per connection.
    pub peer: &'a [u8],
    /// The peer is a trusted proxy: append to its X-Forwarded-For and keep
    /// its X-Forwarded-Proto/Host.
    pub trusted: bool,
    pub proto: &'static str,
    pub host: Option<&'a [u8]>,
}

/// What the upstream request head is made of.
pub struct UpstreamHead<'a> {
    pub method: &'a Method,
    /// Origin form: path and query.
    pub target: &'a str,
    pub fields: &'a Fields,
    /// The fields the route's scheme reads: never dropped as
    /// `Connection`-named.
    pub signature: &'a [HeaderName],
    pub forwarding: Option<Forwarding<'a>>,
    /// The request's `:authority` (HTTP/2), for a request without `Host`.
    pub authority: Option<&'a str>,
    /// The body's length as read.
    pub content_length: u64,
    /// Fields the gateway sets itself, replacing any the client sent (a
    /// spooled route's delivery id and attempt).
    pub own: &'a [(&'a HeaderName, &'a [u8])],
}

/// Writes the upstream request head to `out` (cleared first): the request
/// line, the client's fields in their order, then the gateway's. Returns
/// where the fields are in `out` (what the spool keeps).
///
/// - drops hop-by-hop fields, fields named by `Connection` (never `Host` or
///   the fields the scheme reads), `Expect` (already satisfied: the whole
///   body has been read);
/// - writes `Content-Length` as the body actually read, at the client's
///   first `Content-Length` position (appended for a chunked request);
/// - when `forwarding` is given, replaces (or, for a trusted peer, extends)
///   `X-Forwarded-For/-Proto/-Host`, appended at the end;
/// - when the client sent no `Host` (HTTP/2 uses `:authority`), adds it
///   first so the upstream sees the original host.
///
/// Names are written lower-case, as `http`'s `HeaderName`s (and so hyper)
/// wrote them.
pub fn write_upstream_head(out: &mut Vec<u8>, h: &UpstreamHead<'_>) -> std::ops::Range<usize> {
    out.clear();
    out.extend_from_slice(h.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(if h.target.is_empty() {
        b"/"
    } else {
        h.target.as_bytes()
    });
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let start = out.len();
    let fields = h.fields;
    if !fields.contains("host") {
        if let Some(authority) = h.authority {
            field(out, b"host", authority.as_bytes());
        }
    }
    let named = connection_tokens(fields.get_all("connection"));
    let rewrite = h.forwarding.is_some();
    let mut length = Some(h.content_length);
    let mut xff: Option<Vec<u8>> = None;
    let mut xfp: Option<&[u8]> = None;
    let mut xfh: Option<&[u8]> = None;
    for (name, value) in fields.iter() {
        let is = |n: &[u8]| name.len() == n.len() && name.eq_ignore_ascii_case(n);
        match request_field(name) {
            Kind::ContentLength => {
                if let Some(n) = length.take() {
                    field(
                        out,
                        b"content-length",
                        itoa::Buffer::new().format(n).as_bytes(),
                    );
                }
                continue;
            }
            Kind::Dropped => continue,
            Kind::Forwarded(_) | Kind::Other
                if h.own.iter().any(|(n, _)| is(n.as_str().as_bytes()))
                    || (!named.is_empty()
                        && named.iter().any(|t| is(t))
                        && !h.signature.iter().any(|n| is(n.as_str().as_bytes()))) =>
            {
                continue
            }
            Kind::Forwarded(which) if rewrite => {
                match which {
                    Forwarded::For => xff = Some(join(xff, value)),
                    Forwarded::Proto => xfp = Some(value),
                    Forwarded::Host => xfh = Some(value),
                }
                continue;
            }
            Kind::Host | Kind::Forwarded(_) | Kind::Other => {}
        }
        lower_field(out, name, value);
    }
    if let Some(n) = length {
        field(
            out,
            b"content-length",
            itoa::Buffer::new().format(n).as_bytes(),
        );
    }
    if let Some(f) = &h.forwarding {
        // A trusted proxy's list is extended, anyone else's replaced.
        let proto = f.proto.as_bytes();
        let (prior, xfp, xfh) = if f.trusted {
            (xff.as_deref(), xfp.unwrap_or(proto), xfh.or(f.host))
        } else {
            (None, proto, f.host)
        };
        out.extend_from_slice(b"x-forwarded-for: ");
        if let Some(prior) = prior {
            out.extend_from_slice(prior);
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(f.peer);
        out.extend_from_slice(b"\r\n");
        field(out, b"x-forwarded-proto", xfp);
        if let Some(xfh) = xfh {
            field(out, b"x-forwarded-host", xfh);
        }
    }
    for (name, value) in h.own {
        field(out, name.as_str().as_bytes(), value);
    }
    let end = out.len();
    out.extend_from_slice(b"\r\n");
    start..end
}

/// What a client's field is to the upstream head.
enum Kind {
    ContentLength,
    /// Hop-by-hop (RFC 9110 §7.6.1), or `Expect` (already answered).
    Dropped,
    Host,
    Forwarded(Forwarded),
    /// Any other end-to-end field.
    Other,
}

enum Forwarded {
    For,
    Proto,
    Host,
}

/// Sorts a field by its name, by length first: most fields are none of
/// these, and most lengths rule out every one of them. The hop-by-hop
/// names are `is_hop_by_hop`'s (`tests::request_field_knows_hop_by_hop`).
fn request_field(name: &[u8]) -> Kind {
    let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
    match name.len() {
        2 if is(b"te") => Kind::Dropped,
        4 if is(b"host") => Kind::Host,
        6 if is(b"expect") => Kind::Dropped,
        7 if is(b"trailer") || is(b"upgrade") => Kind::Dropped,
        10 if is(b"connection") || is(b"keep-alive") => Kind::Dropped,
        14 if is(b"content-length") => Kind::ContentLength,
        15 if is(b"x-forwarded-for") => Kind::Forwarded(Forwarded::For),
        16 if is(b"proxy-connection") => Kind::Dropped,
        16 if is(b"x-forwarded-host") => Kind::Forwarded(Forwarded::Host),
        17 if is(b"transfer-encoding") => Kind::Dropped,
        17 if is(b"x-forwarded-proto") => Kind::Forwarded(Forwarded::Proto),
        _ => Kind::Other,
    }
}

/// `name: value\r\n` (name already lower-case).
fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.reserve(name.len() + value.len() + 4);
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// `name: value\r\n` with the name lower-cased.
fn lower_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.reserve(name.len() + value.len() + 4);
    let at = out.len();
    out.extend_from_slice(name);
    crate::fields::lowercase_name(&mut out[at..]);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The field names listed in `Connection` values, lower-cased, other than
/// `close` and `keep-alive`. Empty (and no allocation) in the usual case.
pub fn connection_tokens<'a>(values: impl Iterator<Item = &'a [u8]>) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for value in values {
        for token in value.split(|&b| b == b',') {
            let token = token.trim_ascii();
            if token.is_empty()
                || token.eq_ignore_ascii_case(b"close")
                || token.eq_ignore_ascii_case(b"keep-alive")
                || !crate::fields::name_ok(token)
            {
                continue;
            }
            out.push(token.to_ascii_lowercase());
        }
    }
    out
}

/// True when a field name is one of `names` with some `-` written as `_`
/// (`X_Adsumo_Signature` for `X-Adsumo-Signature`). Many app stacks (CGI,
/// Rack, PHP, WSGI) map both to the same variable, so such a field next to
/// the real one could hand the app a value the gateway never verified
/// (Envoy's `headers_with_underscores_action` closes the same hole). Only
/// names containing `_` are compared, so the usual request costs one byte
/// scan per field.
pub fn has_lookalike<'a>(mut fields: impl Iterator<Item = &'a [u8]>, names: &[HeaderName]) -> bool {
    fields.any(|field| {
        field.contains(&b'_')
            && names.iter().any(|name| {
                let name = name.as_str().as_bytes();
                name.len() == field.len()
                    && name
                        .iter()
                        .zip(field)
                        .all(|(&n, &f)| n == f.to_ascii_lowercase() || (n == b'-' && f == b'_'))
            })
    })
}

/// "a, b" + "c" → "a, b, c" (X-Forwarded-For fields are combined this way).
fn join(prev: Option<Vec<u8>>, next: &[u8]) -> Vec<u8> {
    match prev {
        None => next.to_vec(),
        Some(mut prev) => {
            prev.extend_from_slice(b", ");
            prev.extend_from_slice(next);
            prev
        }
    }
}

/// A `Content-Length` value (or one element of a list of them): ASCII
/// digits only, not empty, no sign or inner space, fitting a u64. The
/// callers trim what RFC 9110 allows around it. Shared by the HTTP/1.1
/// fast path (request heads) and the upstream client (response heads).
pub fn content_length_value(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |n, &b| {
        if !b.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fields in the given order (names as given, any case).
    fn fields(pairs: &[(&str, &str)]) -> Fields {
        let mut buf = Vec::new();
        let mut at = Vec::new();
        for (n, v) in pairs {
            let ns = buf.len() as u32;
            buf.extend_from_slice(n.as_bytes());
            let vs = buf.len() as u32;
            buf.extend_from_slice(v.as_bytes());
            at.push(((ns, vs), (vs, buf.len() as u32)));
        }
        Fields::new(bytes::Bytes::from(buf), at)
    }

    /// The upstream head for `f` as (name, value) pairs, after checking its
    /// request line and end.
    fn upstream(
        f: &Fields,
        forwarding: Option<Forwarding<'_>>,
        authority: Option<&str>,
        content_length: u64,
        own: &[(&HeaderName, &[u8])],
    ) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let sig = [sig()];
        let head = UpstreamHead {
            method: &Method::POST,
            target: "/a?b",
            fields: f,
            signature: &sig,
            forwarding,
            authority,
            content_length,
            own,
        };
        let range = write_upstream_head(&mut out, &head);
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(text.starts_with("POST /a?b HTTP/1.1\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n"), "{text}");
        assert_eq!(range.end, out.len() - 2);
        String::from_utf8(out[range].to_vec())
            .unwrap()
            .split_terminator("\r\n")
            .map(|line| {
                let (n, v) = line.split_once(": ").unwrap();
                (n.to_string(), v.to_string())
            })
            .collect()
    }

    fn owned(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    fn sig() -> HeaderName {
        HeaderName::from_static("x-adsumo-signature")
    }

    #[test]
    fn hop_by_hop_and_connection_named_are_dropped_in_order() {
        let f = fields(&[
            ("Host", "h.example"),
            (
                "connection",
                "keep-alive, X-Foo, x-forwarded-for, host, x-adsumo-signature",
            ),
            ("x-a", "1"),
            ("X-Foo", "gone"),
            ("keep-alive", "timeout=5"),
            ("X-Adsumo-Signature", "abc"),
            ("te", "trailers"),
            ("Content-Length", "3"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-b", "2"),
            ("Expect", "100-continue"),
        ]);
        let forwarding = Forwarding {
            peer: b"127.0.0.1",
            trusted: false,
            proto: "http",
            host: Some(b"h.example"),
        };
        assert_eq!(
            upstream(&f, Some(forwarding), None, 3, &[]),
            owned(&[
                ("host", "h.example"),
                ("x-a", "1"),
                ("x-adsumo-signature", "abc"),
                ("content-length", "3"),
                ("x-b", "2"),
                ("x-forwarded-for", "127.0.0.1"),
                ("x-forwarded-proto", "http"),
                ("x-forwarded-host", "h.example"),
            ])
        );
    }

    #[test]
    fn plain_request_keeps_its_order_and_gets_the_read_length() {
        let f = fields(&[
            ("Host", "h"),
            ("x-r", "1"),
            ("Content-Length", "7"),
            ("X-Adsumo-Signature", "s"),
            ("x-r", "2"),
            ("Content-Type", "a/b"),
        ]);
        let forwarding = Forwarding {
            peer: b"192.0.2.1",
            trusted: false,
            proto: "https",
            host: Some(b"h"),
        };
        assert_eq!(
            upstream(&f, Some(forwarding), None, 2, &[]),
            owned(&[
                ("host", "h"),
                ("x-r", "1"),
                ("content-length", "2"),
                ("x-adsumo-signature", "s"),
                ("x-r", "2"),
                ("content-type", "a/b"),
                ("x-forwarded-for", "192.0.2.1"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "h"),
            ])
        );
        // No Content-Length (a chunked request read whole): appended.
        let f = fields(&[("host", "h"), ("transfer-encoding", "chunked")]);
        assert_eq!(
            upstream(&f, None, None, 0, &[]),
            owned(&[("host", "h"), ("content-length", "0")])
        );
    }

    #[test]
    fn request_field_knows_hop_by_hop() {
        for name in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
        ] {
            assert!(is_hop_by_hop(name.as_bytes()), "{name}");
            let upper = name.to_ascii_uppercase();
            assert!(
                matches!(request_field(upper.as_bytes()), Kind::Dropped),
                "{name}"
            );
        }
        assert!(!is_hop_by_hop(b"expect"));
        assert!(matches!(request_field(b"Expect"), Kind::Dropped));
        assert!(matches!(request_field(b"x-forwarded-fox"), Kind::Other));
    }

    #[test]
    fn trusted_peer_is_appended() {
        let f = fields(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("X-Forwarded-For", "2.2.2.2"),
            ("x-forwarded-proto", "https"),
        ]);
        let forwarding = Forwarding {
            peer: b"10.0.0.1",
            trusted: true,
            proto: "http",
            host: None,
        };
        assert_eq!(
            upstream(&f, Some(forwarding), None, 0, &[]),
            owned(&[
                ("content-length", "0"),
                ("x-forwarded-for", "1.1.1.1, 2.2.2.2, 10.0.0.1"),
                ("x-forwarded-proto", "https"),
            ])
        );
    }

    #[test]
    fn forwarding_off_keeps_client_values() {
        let f = fields(&[("x-forwarded-for", "1.1.1.1")]);
        assert_eq!(
            upstream(&f, None, Some("a.example"), 0, &[]),
            owned(&[
                ("host", "a.example"),
                ("x-forwarded-for", "1.1.1.1"),
                ("content-length", "0"),
            ])
        );
    }

    #[test]
    fn own_fields_replace_the_clients() {
        let delivery = HeaderName::from_static("x-hookgate-delivery");
        let f = fields(&[
            ("host", "h"),
            ("X-Hookgate-Delivery", "forged"),
            ("x-a", "1"),
        ]);
        assert_eq!(
            upstream(&f, None, None, 1, &[(&delivery, b"d-1")]),
            owned(&[
                ("host", "h"),
                ("x-a", "1"),
                ("content-length", "1"),
                ("x-hookgate-delivery", "d-1"),
            ])
        );
    }

    #[test]
    fn lookalikes_of_the_signature_field() {
        let names = [sig()];
        for (field, want) in [
            ("x_adsumo_signature", true),
            ("x-adsumo_signature", true),
            ("x_adsumo-signature", true),
            ("x-adsumo-signature", false),
            ("x_adsumo_signaturex", false),
            ("x_request_id", false),
            ("x_adsumo_signatur_", false),
        ] {
            assert_eq!(
                has_lookalike([field.as_bytes()].into_iter(), &names),
                want,
                "{field}"
            );
        }
        assert!(!has_lookalike(
            [&b"x_adsumo_signature"[..]].into_iter(),
            &[]
        ));
        assert!(has_lookalike(
            [&b"X_Adsumo_Signature"[..]].into_iter(),
            &names
        ));
    }

    #[test]
    fn response_fields_cross_unless_hop_by_hop_or_named() {
        assert!(crosses_to_client(b"x-1", &[]));
        assert!(!crosses_to_client(b"trailer", &[]));
        let named = connection_tokens([&b"keep-alive"[..], b" X-Two ,close,, x-3"].into_iter());
        assert_eq!(named, [b"x-two".to_vec(), b"x-3".to_vec()]);
        assert!(!crosses_to_client(b"x-two", &named));
        assert!(!crosses_to_client(b"x-3", &named));
        assert!(crosses_to_client(b"x-1", &named));
        // Connection options are not field names.
        assert!(crosses_to_client(b"close", &named));
    }
}
