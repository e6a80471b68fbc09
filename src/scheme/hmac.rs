//! Keyed HMAC states: prepared once per key at config load, cloned per
//! request, updated frame by frame.

use hmac::{Hmac, KeyInit, Mac};

use super::{Algorithm, MAX_MAC};

/// A key's prepared HMAC state (the key schedule done once).
// SHA-512's state (304 bytes, twice SHA-256's) is boxed: a request's
// verifier holds one state per key inline, sized by the largest variant,
// and is moved into the request's future. SHA-1 and SHA-256 (every
// preset; SHA-512 only in a custom scheme) then carry half the bytes, and
// SHA-512 routes pay one allocation per request.
#[derive(Clone)]
pub enum MacKey {
    Sha1(Hmac<sha1::Sha1>),
    Sha256(Hmac<sha2::Sha256>),
    Sha512(Box<Hmac<sha2::Sha512>>),
}

/// HMAC accepts keys of any length; `new_from_slice` only fails for
/// fixed-size keys, which these are not.
fn keyed<M: KeyInit>(secret: &[u8]) -> M {
    match M::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    }
}

impl MacKey {
    /// `None` for algorithms that are not an HMAC (token compare).
    pub fn new(algorithm: Algorithm, secret: &[u8]) -> Option<MacKey> {
        match algorithm {
            Algorithm::Sha1 => Some(MacKey::Sha1(keyed(secret))),
            Algorithm::Sha256 => Some(MacKey::Sha256(keyed(secret))),
            Algorithm::Sha512 => Some(MacKey::Sha512(Box::new(keyed(secret)))),
            Algorithm::Token => None,
        }
    }

    /// A fresh state for one request: a clone, never a new key schedule.
    pub fn start(&self) -> MacState {
        MacState(self.clone())
    }

    /// The MAC of one contiguous message (signing and tests).
    pub fn sign(&self, message: &[u8]) -> Tag {
        let mut s = self.start();
        s.update(message);
        s.finish()
    }
}

impl std::fmt::Debug for MacKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MacKey(..)")
    }
}

/// One request's running HMAC.
#[derive(Clone)]
pub struct MacState(MacKey);

impl MacState {
    pub fn update(&mut self, data: &[u8]) {
        match &mut self.0 {
            MacKey::Sha1(m) => m.update(data),
            MacKey::Sha256(m) => m.update(data),
            MacKey::Sha512(m) => m.update(data),
        }
    }

    pub fn finish(self) -> Tag {
        match self.0 {
            MacKey::Sha1(m) => Tag::from_array(&m.finalize().into_bytes()),
            MacKey::Sha256(m) => Tag::from_array(&m.finalize().into_bytes()),
            MacKey::Sha512(m) => Tag::from_array(&m.finalize().into_bytes()),
        }
    }
}

/// A MAC or signature in a fixed array (no allocation): up to 64 bytes
/// (HMAC-SHA512, ed25519).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Tag {
    pub bytes: [u8; MAX_MAC],
    pub len: u8,
}

impl Tag {
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// From a digest output (at most 64 bytes by construction).
    fn from_array(s: &[u8]) -> Tag {
        let mut t = Tag {
            bytes: [0; MAX_MAC],
            len: 0,
        };
        let n = s.len().min(MAX_MAC);
        t.bytes[..n].copy_from_slice(&s[..n]);
        t.len = n as u8;
        t
    }

    pub fn from_slice(s: &[u8]) -> Option<Tag> {
        if s.len() > MAX_MAC {
            return None;
        }
        let mut t = Tag {
            bytes: [0; MAX_MAC],
            len: s.len() as u8,
        };
        t.bytes[..s.len()].copy_from_slice(s);
        Some(t)
    }

    /// Constant-time equality (`subtle`): the time taken does not depend on
    /// where the first differing byte is. Lengths are public (they follow
    /// from the scheme), so a length difference may return early.
    pub fn ct_eq(&self, other: &Tag) -> bool {
        use subtle::ConstantTimeEq;
        self.len == other.len && bool::from(self.as_slice().ct_eq(other.as_slice()))
    }
}

impl std::fmt::Debug for Tag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tag({} bytes)", self.len)
    }
}
