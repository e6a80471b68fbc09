//! Signature verification for one webhook: parse the signature header into a
//! fixed array, feed the body to a prepared HMAC as frames arrive, compare in
//! constant time.
//!
//! This module does no I/O and allocates nothing per request: the route's
//! keyed HMAC state is built once at config load ([`Key`]) and cloned for each
//! request ([`Key::verifier`]); the received signature is decoded into a
//! `[u8; 32]` on the stack.

use hmac::{Hmac, KeyInit, Mac};
use http::{HeaderMap, HeaderName};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Length in bytes of an HMAC-SHA256 tag.
pub const MAC_LEN: usize = 32;

/// A signing scheme: which header carries the signature and how it is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `X-Adsumo-Signature: <64 hex digits of HMAC-SHA256(raw body, secret)>`.
    Adsumo,
}

impl Scheme {
    pub fn from_name(name: &str) -> Option<Scheme> {
        match name {
            "adsumo" => Some(Scheme::Adsumo),
            _ => None,
        }
    }

    pub fn header(self) -> HeaderName {
        match self {
            Scheme::Adsumo => HeaderName::from_static("x-adsumo-signature"),
        }
    }
}

/// Why a signature was refused. The variant is logged; the client only ever
/// sees 401.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("signature header missing")]
    Missing,
    #[error("signature header present more than once")]
    Duplicated,
    #[error("signature header is not 64 characters long")]
    WrongLength,
    #[error("signature header is not hexadecimal")]
    NotHex,
    #[error("signature does not match the body")]
    Mismatch,
}

/// A route's keyed HMAC state, prepared once when the config loads.
#[derive(Clone)]
pub struct Key(HmacSha256);

impl Key {
    /// Keys the HMAC with the secret's bytes exactly as stored. HMAC accepts
    /// keys of any length, so this cannot fail for a non-empty secret.
    pub fn new(secret: &[u8]) -> Key {
        // new_from_slice only fails for fixed-size keys; HMAC takes any length.
        match HmacSha256::new_from_slice(secret) {
            Ok(mac) => Key(mac),
            Err(_) => unreachable!("HMAC accepts keys of any length"),
        }
    }

    /// A fresh verifier for one request: a clone of the keyed state, so the
    /// key schedule is never recomputed on the hot path.
    pub fn verifier(&self) -> Verifier {
        Verifier(self.0.clone())
    }

    /// The MAC of a whole body (used by `hookgate sign` and tests).
    pub fn sign(&self, body: &[u8]) -> [u8; MAC_LEN] {
        let mut mac = self.0.clone();
        mac.update(body);
        mac.finalize().into_bytes().into()
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

/// HMAC state for one request body, updated frame by frame.
pub struct Verifier(HmacSha256);

impl Verifier {
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// Compares the full 32-byte MAC with the received one in constant time.
    pub fn finish(self, received: &[u8; MAC_LEN]) -> Result<(), VerifyError> {
        self.0
            .verify_slice(received)
            .map_err(|_| VerifyError::Mismatch)
    }
}

/// Decodes a signature value: 64 hex digits, either case, after trimming the
/// surrounding whitespace an HTTP parser would trim.
pub fn parse_signature(value: &[u8]) -> Result<[u8; MAC_LEN], VerifyError> {
    let value = value.trim_ascii();
    if value.len() != MAC_LEN * 2 {
        return Err(VerifyError::WrongLength);
    }
    let mut out = [0u8; MAC_LEN];
    hex::decode_to_slice(value, &mut out).map_err(|_| VerifyError::NotHex)?;
    Ok(out)
}

/// Finds exactly one signature field among the headers and decodes it.
pub fn signature_from_headers(
    headers: &HeaderMap,
    name: &HeaderName,
) -> Result<[u8; MAC_LEN], VerifyError> {
    let mut values = headers.get_all(name).iter();
    let first = values.next().ok_or(VerifyError::Missing)?;
    if values.next().is_some() {
        return Err(VerifyError::Duplicated);
    }
    parse_signature(first.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4231 test case 2.
    const RFC4231_KEY: &[u8] = b"Jefe";
    const RFC4231_DATA: &[u8] = b"what do ya want for nothing?";
    const RFC4231_MAC: &str = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";

    #[test]
    fn sign_matches_rfc4231_vector() {
        assert_eq!(
            hex::encode(Key::new(RFC4231_KEY).sign(RFC4231_DATA)),
            RFC4231_MAC
        );
    }

    #[test]
    fn frames_give_the_same_mac_as_one_slice() {
        let key = Key::new(RFC4231_KEY);
        let mut v = key.verifier();
        for chunk in RFC4231_DATA.chunks(5) {
            v.update(chunk);
        }
        let sig = parse_signature(RFC4231_MAC.as_bytes()).unwrap();
        assert_eq!(v.finish(&sig), Ok(()));
    }

    #[test]
    fn signature_parsing_table() {
        let upper = RFC4231_MAC.to_uppercase();
        let padded = format!(" {RFC4231_MAC}\t");
        let prefixed = format!("sha256={RFC4231_MAC}");
        let short = &RFC4231_MAC[..63];
        let long = format!("{RFC4231_MAC}0");
        let nonhex = format!("{}g", &RFC4231_MAC[..63]);
        let cases: [(&[u8], Result<(), VerifyError>); 8] = [
            (RFC4231_MAC.as_bytes(), Ok(())),
            (upper.as_bytes(), Ok(())),
            (padded.as_bytes(), Ok(())),
            (b"", Err(VerifyError::WrongLength)),
            (prefixed.as_bytes(), Err(VerifyError::WrongLength)),
            (short.as_bytes(), Err(VerifyError::WrongLength)),
            (long.as_bytes(), Err(VerifyError::WrongLength)),
            (nonhex.as_bytes(), Err(VerifyError::NotHex)),
        ];
        for (input, want) in cases {
            let got = parse_signature(input).map(|_| ());
            assert_eq!(got, want, "input {:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn wrong_mac_is_mismatch() {
        let key = Key::new(RFC4231_KEY);
        let mut v = key.verifier();
        v.update(b"what do ya want for nothing!");
        let sig = parse_signature(RFC4231_MAC.as_bytes()).unwrap();
        assert_eq!(v.finish(&sig), Err(VerifyError::Mismatch));
    }

    #[test]
    fn header_count_rules() {
        let name = Scheme::Adsumo.header();
        let mut h = HeaderMap::new();
        assert_eq!(signature_from_headers(&h, &name), Err(VerifyError::Missing));
        h.append(&name, RFC4231_MAC.parse().unwrap());
        assert!(signature_from_headers(&h, &name).is_ok());
        h.append(&name, RFC4231_MAC.parse().unwrap());
        assert_eq!(
            signature_from_headers(&h, &name),
            Err(VerifyError::Duplicated)
        );
    }

    #[test]
    fn key_debug_is_redacted() {
        assert_eq!(format!("{:?}", Key::new(b"hunter2")), "Key(..)");
    }
}
