//! Twilio's request validation: HMAC-SHA1 over the URL Twilio requested,
//! followed by the POST form parameters sorted by name (each name then its
//! value). When the URL carries `bodySHA256` (JSON bodies), only the URL is
//! signed and the body's SHA-256 must equal that parameter.
//!
//! Form parameters are parsed from the frames already held, in place: the
//! body is never concatenated.

use std::borrow::Cow;

use crate::fields::Lookup;
use bytes::Bytes;

use super::{MacState, Tag, VerifyError, MAX_KEYS};

/// What the end of a Twilio verification needs.
pub(super) struct Context {
    /// The signed URL: the route's `public_url` plus `?query`.
    pub url: String,
    /// `bodySHA256` from the query: the body is not form-encoded.
    body_sha256: Option<Result<Tag, VerifyError>>,
    form: bool,
}

impl Context {
    pub fn new<H: Lookup>(public_url: Option<&str>, query: Option<&str>, headers: &H) -> Context {
        let mut url = public_url.unwrap_or_default().to_string();
        if let Some(q) = query.filter(|q| !q.is_empty()) {
            url.push('?');
            url.push_str(q);
        }
        let body_sha256 = query.and_then(|q| {
            q.split('&').find_map(|p| {
                let v = p.strip_prefix("bodySHA256=")?;
                Some(super::signature::decode(
                    super::Encoding::Hex,
                    v.as_bytes(),
                    32,
                ))
            })
        });
        let form = headers
            .values(&http::header::CONTENT_TYPE)
            .next()
            .and_then(|v| std::str::from_utf8(v).ok())
            .is_some_and(|ct| {
                ct.trim_start()
                    .to_ascii_lowercase()
                    .starts_with("application/x-www-form-urlencoded")
            });
        Context {
            url,
            body_sha256,
            form,
        }
    }

    /// Feeds the sorted parameters (or checks the body hash).
    pub fn finish(
        &self,
        frames: &[Bytes],
        states: &mut [Option<MacState>; MAX_KEYS],
    ) -> Result<(), VerifyError> {
        if let Some(expected) = self.body_sha256 {
            let expected = expected.map_err(|_| VerifyError::BodyHashMismatch)?;
            let parts: Vec<&[u8]> = frames.iter().map(|f| &f[..]).collect();
            if !super::sha256(&parts).ct_eq(&expected) {
                return Err(VerifyError::BodyHashMismatch);
            }
            return Ok(());
        }
        if !self.form {
            return Ok(());
        }
        let params = sorted_params(frames);
        for state in states.iter_mut().flatten() {
            feed(state, &params);
        }
        Ok(())
    }
}

/// Form parameters, decoded, sorted by name then value, exact duplicates
/// removed (as twilio-python's `compute_signature` does). Parameters are
/// borrowed from the frames; only one split across two frames, or one
/// with `%`/`+` escapes, is copied.
fn sorted_params(frames: &[Bytes]) -> Vec<Param<'_>> {
    let mut params = Vec::new();
    // A parameter cut by a frame boundary, carried into the next frame.
    let mut pending: Vec<u8> = Vec::new();
    for frame in frames {
        let mut pieces = frame.split(|b| *b == b'&').peekable();
        while let Some(piece) = pieces.next() {
            let last = pieces.peek().is_none();
            if last {
                // Not terminated by '&' in this frame: may continue.
                pending.extend_from_slice(piece);
                continue;
            }
            if pending.is_empty() {
                push_param(&mut params, Cow::Borrowed(piece));
            } else {
                pending.extend_from_slice(piece);
                push_param(&mut params, Cow::Owned(std::mem::take(&mut pending)));
            }
        }
    }
    if !pending.is_empty() {
        push_param(&mut params, Cow::Owned(pending));
    }
    params.sort();
    params.dedup();
    params
}

type Param<'a> = (Cow<'a, [u8]>, Cow<'a, [u8]>);

/// Feeds name, value, name, value... to `state` through a stack buffer:
/// thousands of few-byte updates would cost more than the hashing.
fn feed(state: &mut MacState, params: &[Param<'_>]) {
    let mut buf = [0u8; 4096];
    let mut len = 0;
    for (k, v) in params {
        for part in [&k[..], &v[..]] {
            if len + part.len() > buf.len() {
                state.update(&buf[..len]);
                len = 0;
            }
            if part.len() > buf.len() {
                state.update(part);
            } else {
                buf[len..len + part.len()].copy_from_slice(part);
                len += part.len();
            }
        }
    }
    state.update(&buf[..len]);
}

fn push_param<'a>(params: &mut Vec<Param<'a>>, raw: Cow<'a, [u8]>) {
    if raw.is_empty() {
        return;
    }
    let (k, v) = match raw {
        Cow::Borrowed(b) => match b.iter().position(|c| *c == b'=') {
            Some(eq) => (Cow::Borrowed(&b[..eq]), Cow::Borrowed(&b[eq + 1..])),
            None => (Cow::Borrowed(b), Cow::Borrowed(&b[..0])),
        },
        Cow::Owned(o) => match o.iter().position(|c| *c == b'=') {
            Some(eq) => (
                Cow::Owned(o[..eq].to_vec()),
                Cow::Owned(o[eq + 1..].to_vec()),
            ),
            None => (Cow::Owned(o), Cow::Owned(Vec::new())),
        },
    };
    params.push((unescape(k), unescape(v)));
}

/// `+` → space and `%XX` → byte; an invalid escape is kept as is (Python's
/// `unquote_plus`). Borrowed when there is nothing to decode.
fn unescape(text: Cow<'_, [u8]>) -> Cow<'_, [u8]> {
    if !text.iter().any(|b| matches!(b, b'%' | b'+')) {
        return text;
    }
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = text.get(i + 1).copied().and_then(hex_val);
                let lo = text.get(i + 2).copied().and_then(hex_val);
                if let (Some(h), Some(l)) = (hi, lo) {
                    out.push(h << 4 | l);
                    i += 2;
                } else {
                    out.push(b'%');
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(out)
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The signature a sender computes for `body` sent to `url` (signing aid).
pub(super) fn sign(mac: &super::MacKey, url: &str, body: &[u8]) -> Tag {
    let mut state = mac.start();
    state.update(url.as_bytes());
    let has_hash = url
        .split_once('?')
        .is_some_and(|(_, q)| q.split('&').any(|p| p.starts_with("bodySHA256=")));
    if !has_hash {
        let frames = [Bytes::copy_from_slice(body)];
        feed(&mut state, &sorted_params(&frames));
    }
    state.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_across_frames_sort_and_decode() {
        let frames = [
            Bytes::from_static(b"To=%2B1800&Cal"),
            Bytes::from_static(b"ler=a+b&Digits=1%"),
            Bytes::from_static(b"32&Digits=1&x=%zz"),
        ];
        let got = sorted_params(&frames);
        let got: Vec<(Vec<u8>, Vec<u8>)> = got
            .into_iter()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let want: Vec<(Vec<u8>, Vec<u8>)> = vec![
            (b"Caller".to_vec(), b"a b".to_vec()),
            (b"Digits".to_vec(), b"1".to_vec()),
            (b"Digits".to_vec(), b"12".to_vec()),
            (b"To".to_vec(), b"+1800".to_vec()),
            (b"x".to_vec(), b"%zz".to_vec()),
        ];
        assert_eq!(got, want);
    }
}
