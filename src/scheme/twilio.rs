//! Twilio's request validation: HMAC-SHA1 over the URL Twilio requested,
//! followed by the POST form parameters sorted by name (each name then its
//! value). When the URL carries `bodySHA256` (JSON bodies), only the URL is
//! signed and the body's SHA-256 must equal that parameter.
//!
//! Form parameters are parsed from the frames already held, in place: the
//! body is never concatenated.

use bytes::Bytes;
use http::HeaderMap;

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
    pub fn new(public_url: Option<&str>, query: Option<&str>, headers: &HeaderMap) -> Context {
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
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
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
            for (k, v) in &params {
                state.update(k);
                state.update(v);
            }
        }
        Ok(())
    }
}

/// Form parameters, decoded, sorted by name then value, exact duplicates
/// removed (as twilio-python's `compute_signature` does).
fn sorted_params(frames: &[Bytes]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut params = Vec::new();
    let mut key = Vec::new();
    let mut value = Vec::new();
    let mut in_value = false;
    let mut bytes = frames.iter().flat_map(|f| f.iter().copied()).peekable();
    let mut flush = |key: &mut Vec<u8>, value: &mut Vec<u8>, in_value: &mut bool| {
        if !key.is_empty() || !value.is_empty() {
            params.push((std::mem::take(key), std::mem::take(value)));
        }
        *in_value = false;
    };
    while let Some(b) = bytes.next() {
        let out = if in_value { &mut value } else { &mut key };
        match b {
            b'&' => flush(&mut key, &mut value, &mut in_value),
            b'=' if !in_value => in_value = true,
            b'+' => out.push(b' '),
            b'%' => {
                let hi = bytes.next();
                let lo = bytes.next();
                match (hi.and_then(hex_val), lo.and_then(hex_val)) {
                    (Some(h), Some(l)) => out.push(h << 4 | l),
                    // Not a valid escape: kept as is (Python's unquote_plus).
                    _ => {
                        out.push(b'%');
                        out.extend(hi);
                        out.extend(lo);
                    }
                }
            }
            other => out.push(other),
        }
    }
    flush(&mut key, &mut value, &mut in_value);
    params.sort();
    params.dedup();
    params
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
        for (k, v) in sorted_params(&[Bytes::copy_from_slice(body)]) {
            state.update(&k);
            state.update(&v);
        }
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
