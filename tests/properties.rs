//! Property tests (proptest, run by `cargo test` on stable): every parser
//! that sees peer or operator input gets arbitrary bytes and must answer
//! without panicking, and the HMAC path is checked against an independent
//! implementation (aws-lc-rs).
//!
//! Case counts are kept to a few hundred per property so the whole file
//! runs in a few seconds. A failing case is written to
//! `tests/proptest-regressions/properties.txt` by proptest; commit it so it
//! becomes a regression case.

use std::collections::HashMap;
use std::path::Path;

use hookgate::config::{mask_userinfo, Config};
use hookgate::fields::Fields;
use hookgate::headers::{self, Forwarding, UpstreamHead};
use hookgate::proxy::valid_host;
use hookgate::scheme::{self, presets, Algorithm, Field, Key, MacKey, SignatureCheck, VerifyError};

use http::header::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;

fn adsumo_header() -> HeaderName {
    HeaderName::from_static("x-adsumo-signature")
}

/// An Adsumo route's check with one key.
fn adsumo(secret: &[u8]) -> SignatureCheck {
    let scheme = presets::preset("adsumo").unwrap();
    let key = Key::new(&scheme, "k".into(), secret, None, None).unwrap();
    SignatureCheck::new(scheme, vec![key], None)
}

/// The header checks alone (what is decided before the body).
fn begin(check: &SignatureCheck, map: &HeaderMap) -> Result<(), VerifyError> {
    check.begin(map, None, 0).map(|_| ())
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // proptest's default looks for lib.rs beside the test; name the
        // file instead (paths are relative to the package root).
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::Direct(
                "tests/proptest-regressions/properties.txt",
            ),
        )),
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------
// Signature header parsing.

proptest! {
    #![proptest_config(config(2000))]

    /// Arbitrary bytes: never a panic; accepted only when the trimmed
    /// value is exactly 64 hex digits, and then decoded to those bytes.
    #[test]
    fn signature_parser_takes_any_bytes(value in proptest::collection::vec(any::<u8>(), 0..100)) {
        let Ok(header) = HeaderValue::from_bytes(&value) else {
            return Ok(()); // not a header value hyper would hand over
        };
        let trimmed = value.trim_ascii();
        let want_ok = trimmed.len() == 64 && trimmed.iter().all(u8::is_ascii_hexdigit);
        let mut map = HeaderMap::new();
        map.insert(adsumo_header(), header);
        match begin(&adsumo(b"k"), &map) {
            Ok(()) => prop_assert!(want_ok),
            Err(e) => {
                prop_assert!(!want_ok);
                prop_assert!(matches!(e, VerifyError::WrongLength | VerifyError::NotHex));
            }
        }
    }

    /// Any body's MAC, hex in either case with surrounding blanks, verifies.
    #[test]
    fn signature_round_trips(body in proptest::collection::vec(any::<u8>(), 0..64), upper in any::<bool>(), pad in "[ \t]{0,3}") {
        let check = adsumo(b"k");
        let mac = check.keys[0].mac().unwrap().sign(&body);
        let hex = if upper { hex::encode_upper(mac.as_slice()) } else { hex::encode(mac.as_slice()) };
        let mut map = HeaderMap::new();
        map.insert(adsumo_header(), HeaderValue::from_str(&format!("{pad}{hex}{pad}")).unwrap());
        prop_assert!(scheme::verify_whole(&check, &map, None, &body, 0).is_ok());
    }

    /// Header maps with 0–3 signature fields of arbitrary (valid) values:
    /// missing, duplicated or parsed, never a panic.
    #[test]
    fn signature_fields_any_count(values in proptest::collection::vec(proptest::collection::vec(0x20u8..0x7f, 0..80), 0..4)) {
        let check = adsumo(b"k");
        let name = adsumo_header();
        let mut map = HeaderMap::new();
        for v in &values {
            map.append(&name, HeaderValue::from_bytes(v).unwrap());
        }
        let got = begin(&check, &map);
        match values.len() {
            0 => prop_assert_eq!(got, Err(VerifyError::Missing(Field::Signature))),
            1 => {
                let mut one = HeaderMap::new();
                one.insert(&name, HeaderValue::from_bytes(&values[0]).unwrap());
                prop_assert_eq!(got, begin(&check, &one));
            }
            _ => prop_assert_eq!(got, Err(VerifyError::Duplicated(Field::Signature))),
        }
    }
}

// ---------------------------------------------------------------------------
// HMAC: differential against aws-lc-rs, and tamper detection.

proptest! {
    #![proptest_config(config(500))]

    /// For random secrets and bodies, hookgate's `sign` equals aws-lc-rs's
    /// HMAC-SHA256 in hex; the frame-by-frame verifier accepts that MAC for
    /// any split of the body; and the body with any one bit flipped is
    /// refused.
    #[test]
    fn hmac_matches_aws_lc_and_one_bit_flip_fails(
        secret in proptest::collection::vec(any::<u8>(), 1..100),
        body in proptest::collection::vec(any::<u8>(), 0..4096),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
        flip in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let ours = MacKey::new(Algorithm::Sha256, &secret).unwrap().sign(&body);
        let theirs = aws_lc_rs::hmac::sign(
            &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &secret),
            &body,
        );
        prop_assert_eq!(hex::encode(ours.as_slice()), hex::encode(theirs.as_ref()));

        let check = adsumo(&secret);
        let mut map = HeaderMap::new();
        map.insert(adsumo_header(), HeaderValue::from_str(&hex::encode(ours.as_slice())).unwrap());
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(body.len() + 1)).collect();
        points.sort_unstable();
        let mut verifier = check.begin(&map, None, 0).unwrap();
        let mut frames = Vec::new();
        let mut from = 0;
        for p in points.into_iter().chain([body.len()]) {
            verifier.update(&body[from..p]);
            frames.push(bytes::Bytes::copy_from_slice(&body[from..p]));
            from = p;
        }
        prop_assert!(verifier.finish(&frames).is_ok());

        if !body.is_empty() {
            let mut tampered = body.clone();
            tampered[flip.index(body.len())] ^= 1 << bit;
            prop_assert_eq!(
                scheme::verify_whole(&check, &map, None, &tampered, 0),
                Err(VerifyError::Mismatch)
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Host validation and forwarded headers.

proptest! {
    #![proptest_config(config(2000))]

    /// Arbitrary text never panics the Host check.
    #[test]
    fn host_check_takes_any_text(text in "\\PC{0,40}") {
        let _ = valid_host(&text);
    }

    /// `name:port` is valid exactly when the port is 0–65535 written in at
    /// most five digits.
    #[test]
    fn host_port_range(name in "[a-z][a-z0-9-]{0,10}(\\.[a-z]{2,5})?", port in 0u32..200_000, zeros in 0usize..3) {
        let digits = format!("{}{port}", "0".repeat(zeros));
        let want = port <= 65535 && digits.len() <= 5;
        prop_assert_eq!(valid_host(&format!("{name}:{digits}")), want);
        prop_assert!(valid_host(&name));
    }

    /// Any non-digit in the port is refused.
    #[test]
    fn host_port_with_a_non_digit(port in "[0-9]{0,3}[^0-9:\\]]{1,2}[0-9]{0,2}") {
        let host = format!("gw.test:{port}");
        prop_assert!(!valid_host(&host), "{}", host);
    }
}

/// Header names that the forwarding code treats specially, plus ordinary
/// ones and underscore lookalikes.
fn header_name() -> impl Strategy<Value = HeaderName> {
    prop::sample::select(vec![
        "host",
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
        "content-length",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-adsumo-signature",
        "x_adsumo_signature",
        "x-adsumo_signature",
        "content-type",
        "x-a",
        "x_b",
    ])
    .prop_map(HeaderName::from_static)
}

/// Values: arbitrary visible bytes, sometimes lists of the names above (so
/// `Connection` names other fields).
fn header_value() -> impl Strategy<Value = HeaderValue> {
    prop_oneof![
        proptest::collection::vec(0x20u8..0x7f, 0..30),
        "[a-z_, -]{0,40}".prop_map(String::into_bytes),
        Just(b"close, host, x-adsumo-signature, x-forwarded-for, x-a".to_vec()),
    ]
    .prop_map(|v| HeaderValue::from_bytes(&v).unwrap())
}

/// The fields in the order given, as the HTTP/1.1 fast path hands them
/// to the proxy.
fn arrival_order(fields: &[(HeaderName, HeaderValue)]) -> Fields {
    let mut buf = Vec::new();
    let mut at = Vec::new();
    for (n, v) in fields {
        let ns = buf.len() as u32;
        buf.extend_from_slice(n.as_str().as_bytes());
        let vs = buf.len() as u32;
        buf.extend_from_slice(v.as_bytes());
        at.push(((ns, vs), (vs, buf.len() as u32)));
    }
    Fields::new(bytes::Bytes::from(buf), at)
}

proptest! {
    #![proptest_config(config(1000))]

    /// Any client header fields: the upstream headers carry no hop-by-hop
    /// field, exactly one Content-Length (the bytes read), the signature
    /// field(s) unchanged, exactly one gateway-set X-Forwarded-For/-Proto
    /// for an untrusted peer, and every other end-to-end field kept.
    #[test]
    fn upstream_headers_invariants(
        fields in proptest::collection::vec((header_name(), header_value()), 0..24),
        length in any::<u32>(),
        trusted in any::<bool>(),
    ) {
        let mut map = HeaderMap::new();
        for (n, v) in &fields {
            map.append(n, v.clone());
        }
        let client = arrival_order(&fields);
        let signature = adsumo_header();
        let sent_sig: Vec<HeaderValue> = map.get_all(&signature).iter().cloned().collect();
        let lookalike = headers::has_lookalike(client.iter().map(|(n, _)| n), std::slice::from_ref(&signature));
        prop_assert_eq!(
            lookalike,
            fields.iter().any(|(n, _)| n.as_str().starts_with("x_adsumo") || n.as_str() == "x-adsumo_signature")
        );
        let mut encoded = Vec::new();
        let range = headers::write_upstream_head(&mut encoded, &UpstreamHead {
            method: &http::Method::POST,
            target: "/hook",
            fields: &client,
            signature: std::slice::from_ref(&signature),
            forwarding: Some(Forwarding {
                peer: b"192.0.2.7",
                trusted,
                proto: "https",
                host: Some(b"hooks.test"),
            }),
            authority: Some("hooks.test"),
            content_length: u64::from(length),
            own: &[],
        });
        let out = hookgate::spool::decode_headers(&encoded[range]).unwrap();
        for hop in ["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "expect"] {
            prop_assert!(!out.contains_key(hop), "{} forwarded", hop);
        }
        let lengths: Vec<_> = out.get_all("content-length").iter().collect();
        prop_assert_eq!(lengths.len(), 1);
        prop_assert_eq!(lengths[0].to_str().unwrap(), length.to_string());
        // Compared as they read back from the encoded head, where a value
        // cannot carry surrounding whitespace (parsers trim it, as httparse
        // does for the values the gateway receives).
        let out_sig: Vec<&[u8]> = out.get_all(&signature).iter().map(|v| v.as_bytes().trim_ascii()).collect();
        let sent_sig: Vec<&[u8]> = sent_sig.iter().map(|v| v.as_bytes().trim_ascii()).collect();
        prop_assert_eq!(out_sig, sent_sig);
        prop_assert_eq!(out.get_all("x-forwarded-for").iter().count(), 1);
        prop_assert_eq!(out.get_all("x-forwarded-proto").iter().count(), 1);
        if !trusted {
            prop_assert_eq!(&out["x-forwarded-for"], "192.0.2.7");
            prop_assert_eq!(&out["x-forwarded-proto"], "https");
        }
        prop_assert!(out.contains_key("host"));
        for kept in ["content-type", "x_b", "x_adsumo_signature", "x-adsumo_signature"] {
            let before = fields.iter().filter(|(n, _)| n == kept).count();
            // A `Connection` header may name ordinary fields, which are
            // then dropped; never more than were sent.
            prop_assert!(out.get_all(kept).iter().count() <= before);
        }
    }

    /// Arbitrary upstream response heads, names in any case: exactly the
    /// end-to-end fields reach the client (no hop-by-hop field, none a
    /// `Connection` value names, no Content-Length next to a
    /// Transfer-Encoding), in their order, values as sent; never a panic.
    #[test]
    fn response_headers_invariants(
        fields in proptest::collection::vec((header_name(), header_value(), any::<bool>()), 0..24),
    ) {
        let mut wire = b"HTTP/1.1 200 OK\r\n".to_vec();
        for (n, v, upper) in &fields {
            let n = n.as_str();
            let n = if *upper { n.to_ascii_uppercase() } else { n.to_string() };
            wire.extend_from_slice(n.as_bytes());
            wire.extend_from_slice(b": ");
            wire.extend_from_slice(v.as_bytes());
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(b"\r\n");
        let mut read = bytes::BytesMut::from(&wire[..]);
        // A Content-Length that is no number is the upstream's error (502).
        let Ok(Some(head)) = hookgate::upstream::h1::parse_head(&mut read, &http::Method::POST) else {
            return Ok(());
        };
        let named: Vec<String> = fields
            .iter()
            .filter(|(n, _, _)| n == "connection")
            .flat_map(|(_, v, _)| v.to_str().unwrap().split(',').map(|t| t.trim().to_ascii_lowercase()).collect::<Vec<_>>())
            .filter(|t| t != "close" && t != "keep-alive")
            .collect();
        let te = fields.iter().any(|(n, _, _)| n == "transfer-encoding");
        let hop = ["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"];
        let want: Vec<(String, Vec<u8>)> = fields
            .iter()
            .filter(|(n, _, _)| !hop.contains(&n.as_str()) && !named.iter().any(|t| t == n.as_str()))
            .filter(|(n, _, _)| !(te && n == "content-length"))
            .map(|(n, v, _)| (n.to_string(), v.as_bytes().trim_ascii().to_vec()))
            .collect();
        let got: Vec<(String, Vec<u8>)> = head
            .fields
            .iter()
            .map(|(n, v)| (String::from_utf8_lossy(n).into_owned(), v.to_vec()))
            .collect();
        prop_assert_eq!(got, want);
    }

    /// The signature name with any non-empty set of its dashes written as
    /// underscores is a lookalike; the name itself is not.
    #[test]
    fn lookalike_any_dash_subset(mask in 0u8..4) {
        let mut name = String::from("x-adsumo-signature");
        let dashes: Vec<usize> = name.match_indices('-').map(|(i, _)| i).collect();
        for (bit, &i) in dashes.iter().enumerate() {
            if mask & (1 << bit) != 0 {
                name.replace_range(i..=i, "_");
            }
        }
        prop_assert_eq!(headers::has_lookalike([name.as_bytes()].into_iter(), &[adsumo_header()]), mask != 0);
    }
}

// ---------------------------------------------------------------------------
// The config loader: TOML text → config or error, never a panic.

fn env() -> HashMap<String, String> {
    [("S".to_string(), "a-secret-of-enough-length".to_string())].into()
}

const TEMPLATE: &str = r#"[server]
listen = "{listen}"
trusted_proxies = ["{proxy}"]

[limits]
request_timeout = "{duration}"
max_body_bytes = 1024

[[route]]
name = "{name}"
path = "{path}"
host = "{host}"
upstream = "{upstream}"
secret = { env = "S" }
methods = ["{method}"]
"#;

proptest! {
    #![proptest_config(config(300))]

    /// Arbitrary text: an error with a position, never a panic.
    #[test]
    fn config_loader_takes_any_text(text in "\\PC{0,300}") {
        if let Err(e) = Config::from_toml_str(&text, Path::new("f.toml"), &env()) {
            for line in e.problems() {
                prop_assert!(line.starts_with("f.toml:"), "{}", line);
            }
        }
    }

    /// Arbitrary bytes, lossily decoded (the loader takes `&str`).
    #[test]
    fn config_loader_takes_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = Config::from_toml_str(&String::from_utf8_lossy(&bytes), Path::new("f.toml"), &env());
    }

    /// A well-formed file whose values are arbitrary strings: loaded or
    /// refused with one line per problem naming the file, never a panic;
    /// upstreams stay on 127.0.0.1 so no DNS lookup is made.
    #[test]
    fn config_loader_takes_any_values(
        listen in "\\PC{0,20}",
        proxy in "\\PC{0,20}",
        duration in "\\PC{0,8}",
        name in "\\PC{0,20}",
        path in "\\PC{0,20}",
        host in "\\PC{0,20}",
        uport in "[0-9a-z]{0,6}",
        upath in "[a-z/?#%@]{0,10}",
        method in "\\PC{0,8}",
    ) {
        let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
        let text = TEMPLATE
            .replace("{listen}", &esc(&listen))
            .replace("{proxy}", &esc(&proxy))
            .replace("{duration}", &esc(&duration))
            .replace("{name}", &esc(&name))
            .replace("{path}", &esc(&path))
            .replace("{host}", &esc(&host))
            .replace("{upstream}", &format!("http://127.0.0.1:{uport}/{upath}"))
            .replace("{method}", &esc(&method));
        if let Err(e) = Config::from_toml_str(&text, Path::new("f.toml"), &env()) {
            for line in e.problems() {
                prop_assert!(line.starts_with("f.toml:"), "{}", line);
            }
        }
    }

    /// Whatever the userinfo of an upstream URL, error messages show it
    /// masked: the password never appears.
    #[test]
    fn upstream_password_never_printed(user in "[a-z]{0,8}", pass in "PW[a-zA-Z0-9:%]{6,12}", tail in "[a-z/ ]{0,10}") {
        let url = format!("http://{user}:{pass}@127.0.0.1:3000/{tail}");
        prop_assert!(!mask_userinfo(&url).contains(&pass));
        let text = TEMPLATE
            .replace("{listen}", "127.0.0.1:0")
            .replace("{proxy}", "10.0.0.0/8")
            .replace("{duration}", "1s")
            .replace("{name}", "a")
            .replace("{path}", "/a")
            .replace("{host}", "h.test")
            .replace("{method}", "POST")
            .replace("{upstream}", &url);
        let err = Config::from_toml_str(&text, Path::new("f.toml"), &env()).unwrap_err();
        prop_assert!(!err.to_string().contains(&pass), "{}", err);
    }
}
