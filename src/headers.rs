//! Header rewriting between client, gateway and upstream (pure functions).
//!
//! Hop-by-hop fields (RFC 9110 §7.6.1) are dropped, together with every field
//! the `Connection` header names, except the ones the gateway relies on or
//! sets itself. The surviving end-to-end fields keep their order. `http`'s
//! `HeaderMap::remove` reorders entries (swap-remove), so when something
//! must be removed the map is rebuilt in one pass, moving (not copying) each
//! value; the usual request and response are updated in place.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Connection-specific fields that never cross a proxy.
static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name)
}

/// Names listed in the `Connection` header(s), lower-cased. Empty (and no
/// allocation) in the common case of no `Connection` header or only
/// `keep-alive`/`close`.
fn connection_named(headers: &HeaderMap) -> Vec<HeaderName> {
    let mut out = Vec::new();
    for value in headers.get_all(header::CONNECTION) {
        let Ok(text) = value.to_str() else { continue };
        for token in text.split(',') {
            let token = token.trim();
            if token.is_empty()
                || token.eq_ignore_ascii_case("close")
                || token.eq_ignore_ascii_case("keep-alive")
            {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                out.push(name);
            }
        }
    }
    out
}

/// What the gateway adds to a forwarded request.
pub struct Forwarding {
    /// The peer's IP, formatted once per connection.
    pub peer: HeaderValue,
    /// The peer is a trusted proxy: append to its X-Forwarded-For and keep
    /// its X-Forwarded-Proto/Host.
    pub trusted: bool,
    pub proto: &'static str,
    pub host: Option<HeaderValue>,
}

/// Builds the upstream request headers from the client's, in their order.
///
/// - drops hop-by-hop fields, fields named by `Connection` (never `Host` or
///   the fields the scheme reads), `Expect` (already satisfied: the whole body has
///   been read);
/// - sets `Content-Length` to the body actually read, at the client's
///   `Content-Length` position (appended for a chunked request);
/// - when `forwarding` is given, replaces (or, for a trusted peer, extends)
///   `X-Forwarded-For/-Proto/-Host`, appended at the end;
/// - when the client sent no `Host` (HTTP/2 uses `:authority`), adds it
///   first so the upstream sees the original host.
///
/// The common request (none of those fields present) is updated in place;
/// otherwise the map is rebuilt in one pass.
pub fn upstream_request_headers(
    mut client: HeaderMap,
    signature: &[HeaderName],
    forwarding: Option<Forwarding>,
    authority: Option<&str>,
    content_length: u64,
) -> HeaderMap {
    let rewrite = forwarding.is_some();
    let needs_rebuild = (!client.contains_key(header::HOST) && authority.is_some())
        || client.keys().any(|name| {
            is_hop_by_hop(name) || name == header::EXPECT || (rewrite && is_forwarded(name))
        })
        || client
            .get_all(header::CONTENT_LENGTH)
            .iter()
            .nth(1)
            .is_some();
    if !needs_rebuild {
        // The usual request declared exactly the length that was read: its
        // field already holds those bytes, so it stays as is (no new value,
        // no allocation). insert() keeps an existing field's position.
        let mut read = itoa::Buffer::new();
        let read = read.format(content_length).as_bytes();
        if client
            .get(header::CONTENT_LENGTH)
            .is_none_or(|v| v.as_bytes() != read)
        {
            client.insert(header::CONTENT_LENGTH, HeaderValue::from(content_length));
        }
        if let Some(f) = forwarding {
            append_forwarded(&mut client, f, None, None, None);
        }
        return client;
    }

    let named = connection_named(&client);
    let mut out = HeaderMap::with_capacity(client.len() + 4);
    if !client.contains_key(header::HOST) {
        if let Some(value) = authority.and_then(|a| HeaderValue::from_str(a).ok()) {
            out.insert(header::HOST, value);
        }
    }
    let mut length = Some(HeaderValue::from(content_length));
    let mut xff: Option<HeaderValue> = None;
    let mut xfp: Option<HeaderValue> = None;
    let mut xfh: Option<HeaderValue> = None;
    let mut current: Option<HeaderName> = None;
    for (name, value) in client.drain() {
        if let Some(name) = name {
            current = Some(name);
        }
        let Some(name) = current.as_ref() else {
            continue;
        };
        if name == header::CONTENT_LENGTH {
            if let Some(length) = length.take() {
                out.append(header::CONTENT_LENGTH, length);
            }
            continue;
        }
        if is_hop_by_hop(name)
            || name == header::EXPECT
            || (named.contains(name) && name != header::HOST && !signature.contains(name))
        {
            continue;
        }
        if rewrite {
            if name == X_FORWARDED_FOR {
                xff = Some(join(xff, &value));
                continue;
            }
            if name == X_FORWARDED_PROTO {
                xfp = Some(value);
                continue;
            }
            if name == X_FORWARDED_HOST {
                xfh = Some(value);
                continue;
            }
        }
        out.append(name.clone(), value);
    }
    if let Some(length) = length {
        out.append(header::CONTENT_LENGTH, length);
    }
    if let Some(f) = forwarding {
        append_forwarded(&mut out, f, xff, xfp, xfh);
    }
    out
}

fn is_forwarded(name: &HeaderName) -> bool {
    name == X_FORWARDED_FOR || name == X_FORWARDED_PROTO || name == X_FORWARDED_HOST
}

/// Appends the gateway's X-Forwarded-* given what the client sent.
fn append_forwarded(
    out: &mut HeaderMap,
    f: Forwarding,
    xff: Option<HeaderValue>,
    xfp: Option<HeaderValue>,
    xfh: Option<HeaderValue>,
) {
    let proto = HeaderValue::from_static(f.proto);
    let (xff, xfp, xfh) = if f.trusted {
        let xff = match xff {
            Some(prev) => join(Some(prev), &f.peer),
            None => f.peer,
        };
        (xff, xfp.unwrap_or(proto), xfh.or(f.host))
    } else {
        (f.peer, proto, f.host)
    };
    out.append(X_FORWARDED_FOR.clone(), xff);
    out.append(X_FORWARDED_PROTO.clone(), xfp);
    if let Some(xfh) = xfh {
        out.append(X_FORWARDED_HOST.clone(), xfh);
    }
}

/// True when a field name in `headers` is one of `names` with some `-`
/// written as `_` (`X_Adsumo_Signature` for `X-Adsumo-Signature`). Many app
/// stacks (CGI, Rack, PHP, WSGI) map both to the same variable, so such a
/// field next to the real one could hand the app a value the gateway never
/// verified (Envoy's `headers_with_underscores_action` closes the same
/// hole). Names are already lower-case; only names containing `_` are
/// compared, so the usual request costs one byte scan per field.
pub fn has_lookalike(headers: &HeaderMap, names: &[HeaderName]) -> bool {
    headers.keys().any(|field| {
        let field = field.as_str().as_bytes();
        field.contains(&b'_')
            && names.iter().any(|name| {
                let name = name.as_str().as_bytes();
                name.len() == field.len()
                    && name
                        .iter()
                        .zip(field)
                        .all(|(&n, &f)| n == f || (n == b'-' && f == b'_'))
            })
    })
}

/// Strips hop-by-hop fields from the upstream's response, keeping order.
pub fn client_response_headers(mut upstream: HeaderMap) -> HeaderMap {
    let named = connection_named(&upstream);
    let hop_names = upstream.keys().filter(|n| is_hop_by_hop(n)).count();
    if named.is_empty() && hop_names == 0 {
        return upstream;
    }
    // The usual case (nginx, most servers): one `Connection: keep-alive`
    // as the last field. Removing the last entry moves nothing, so order is
    // kept without rebuilding the map.
    let only_trailing_connection = named.is_empty()
        && hop_names == 1
        && upstream.get_all(header::CONNECTION).iter().count() == 1
        && upstream
            .iter()
            .last()
            .is_some_and(|(name, _)| name == header::CONNECTION);
    if only_trailing_connection {
        upstream.remove(header::CONNECTION);
        return upstream;
    }
    let mut out = HeaderMap::with_capacity(upstream.len());
    let mut current: Option<HeaderName> = None;
    for (name, value) in upstream.drain() {
        if let Some(name) = name {
            current = Some(name);
        }
        let Some(name) = current.as_ref() else {
            continue;
        };
        if is_hop_by_hop(name) || named.contains(name) {
            continue;
        }
        out.append(name.clone(), value);
    }
    out
}

/// "a, b" + "c" → "a, b, c" (X-Forwarded-For fields are combined this way).
fn join(prev: Option<HeaderValue>, next: &HeaderValue) -> HeaderValue {
    match prev {
        None => next.clone(),
        Some(prev) => {
            let mut bytes = Vec::with_capacity(prev.len() + 2 + next.len());
            bytes.extend_from_slice(prev.as_bytes());
            bytes.extend_from_slice(b", ");
            bytes.extend_from_slice(next.as_bytes());
            HeaderValue::from_bytes(&bytes).unwrap_or(prev)
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

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        m
    }

    fn pairs(m: &HeaderMap) -> Vec<(String, String)> {
        m.iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
            .collect()
    }

    fn sig() -> HeaderName {
        HeaderName::from_static("x-adsumo-signature")
    }

    #[test]
    fn hop_by_hop_and_connection_named_are_dropped_in_order() {
        let host = HeaderValue::from_static("h.example");
        let m = map(&[
            ("host", "h.example"),
            (
                "connection",
                "keep-alive, X-Foo, x-forwarded-for, host, x-adsumo-signature",
            ),
            ("x-a", "1"),
            ("x-foo", "gone"),
            ("keep-alive", "timeout=5"),
            ("x-adsumo-signature", "abc"),
            ("te", "trailers"),
            ("content-length", "3"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-b", "2"),
        ]);
        let out = upstream_request_headers(
            m,
            std::slice::from_ref(&sig()),
            Some(Forwarding {
                peer: HeaderValue::from_static("127.0.0.1"),
                trusted: false,
                proto: "http",
                host: Some(host.clone()),
            }),
            None,
            3,
        );
        assert_eq!(
            pairs(&out),
            [
                ("host", "h.example"),
                ("x-a", "1"),
                ("x-adsumo-signature", "abc"),
                ("content-length", "3"),
                ("x-b", "2"),
                ("x-forwarded-for", "127.0.0.1"),
                ("x-forwarded-proto", "http"),
                ("x-forwarded-host", "h.example"),
            ]
            .map(|(a, b)| (a.to_string(), b.to_string()))
        );
    }

    #[test]
    fn plain_request_is_updated_in_place() {
        let m = map(&[
            ("host", "h"),
            ("content-length", "2"),
            ("x-adsumo-signature", "s"),
            ("content-type", "a/b"),
        ]);
        let out = upstream_request_headers(
            m,
            std::slice::from_ref(&sig()),
            Some(Forwarding {
                peer: HeaderValue::from_static("192.0.2.1"),
                trusted: false,
                proto: "https",
                host: Some(HeaderValue::from_static("h")),
            }),
            None,
            2,
        );
        assert_eq!(
            pairs(&out),
            [
                ("host", "h"),
                ("content-length", "2"),
                ("x-adsumo-signature", "s"),
                ("content-type", "a/b"),
                ("x-forwarded-for", "192.0.2.1"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "h"),
            ]
            .map(|(a, b)| (a.to_string(), b.to_string()))
        );
    }

    #[test]
    fn trusted_peer_is_appended() {
        let m = map(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
            ("x-forwarded-proto", "https"),
        ]);
        let out = upstream_request_headers(
            m,
            std::slice::from_ref(&sig()),
            Some(Forwarding {
                peer: HeaderValue::from_static("10.0.0.1"),
                trusted: true,
                proto: "http",
                host: None,
            }),
            None,
            0,
        );
        assert_eq!(out[&X_FORWARDED_FOR], "1.1.1.1, 2.2.2.2, 10.0.0.1");
        assert_eq!(out[&X_FORWARDED_PROTO], "https");
    }

    #[test]
    fn forwarding_off_keeps_client_values() {
        let m = map(&[("x-forwarded-for", "1.1.1.1")]);
        let out =
            upstream_request_headers(m, std::slice::from_ref(&sig()), None, Some("a.example"), 0);
        assert_eq!(out[&X_FORWARDED_FOR], "1.1.1.1");
        assert_eq!(out[header::HOST], "a.example");
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
                has_lookalike(&map(&[(field, "v")]), &names),
                want,
                "{field}"
            );
        }
        assert!(!has_lookalike(&map(&[("x_adsumo_signature", "v")]), &[]));
    }

    #[test]
    fn trailing_keep_alive_is_dropped_in_place() {
        let m = map(&[
            ("server", "x"),
            ("content-length", "2"),
            ("connection", "keep-alive"),
        ]);
        assert_eq!(
            pairs(&client_response_headers(m)),
            [("server", "x"), ("content-length", "2")].map(|(a, b)| (a.to_string(), b.to_string()))
        );
        let m = map(&[
            ("connection", "keep-alive"),
            ("a", "1"),
            ("b", "2"),
            ("c", "3"),
        ]);
        assert_eq!(
            pairs(&client_response_headers(m)),
            [("a", "1"), ("b", "2"), ("c", "3")].map(|(a, b)| (a.to_string(), b.to_string()))
        );
    }

    #[test]
    fn response_hop_by_hop_removed() {
        let m = map(&[
            ("x-1", "a"),
            ("connection", "x-2"),
            ("x-2", "b"),
            ("transfer-encoding", "chunked"),
            ("x-3", "c"),
        ]);
        assert_eq!(
            pairs(&client_response_headers(m)),
            [("x-1", "a"), ("x-3", "c")].map(|(a, b)| (a.to_string(), b.to_string()))
        );
    }
}
