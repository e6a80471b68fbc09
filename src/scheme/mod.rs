//! Signature schemes (SPEC §9): how a sender signs a webhook, and the
//! verification of one request against a route's keys.
//!
//! # Layout
//!
//! - this file: the declarative model ([`Scheme`]: headers, format,
//!   encoding, algorithm, signed bytes, timestamp and tolerance), a route's
//!   keys ([`Key`], with rotation windows), the per-route
//!   [`SignatureCheck`] and the per-request [`Verifier`];
//! - [`presets`]: one table row per provider, each from its own docs;
//! - [`config`]: `scheme = "name"` / `[route.scheme]` from the config file;
//! - `signature`: splitting a signature header into candidates (bounded);
//! - [`hmac`]: prepared HMAC states and the fixed-size [`Tag`];
//! - `ed25519`: Standard Webhooks `v1a` (aws-lc-rs, already built for rustls);
//! - `twilio`: Twilio's URL + sorted form parameters;
//! - [`timestamp`]: unix / RFC 3339 timestamps.
//!
//! # Hot-path rules
//!
//! Everything a request needs is prepared at config load: each key's HMAC
//! state is cloned per request, never re-keyed. The signature header is
//! decoded into fixed arrays (no allocation); signed prefixes (timestamp,
//! id) are fed before the body; the body is hashed frame by frame as it
//! arrives. Only the two schemes that cannot stream read the held frames at
//! the end: Twilio (sorted form parameters; the frames are parsed in place,
//! never concatenated) and ed25519 (one contiguous message, as the
//! algorithm needs it). A header carrying many signatures is looked at for
//! at most [`MAX_ITEMS`] items. Every MAC comparison is constant-time
//! ([`Tag::ct_eq`], `subtle`).

pub mod config;
mod ed25519;
pub mod hmac;
pub mod presets;
mod signature;
pub mod timestamp;
mod twilio;

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName};

use crate::fields::Lookup;

pub use self::hmac::{MacKey, MacState, Tag};
pub use self::timestamp::TimestampFormat;

/// Longest MAC or signature handled (HMAC-SHA512, ed25519).
pub const MAX_MAC: usize = 64;
/// Keys per route (`secrets = [...]`): two cover a rotation, four cover
/// overlapping ones. Fixed so the per-request states live in an array.
pub const MAX_KEYS: usize = 4;
/// Signatures kept from one header (Stripe `v1=`, Paddle `h1=`, Standard
/// Webhooks `v1,`/`v1a,`): senders send one per active secret.
pub const MAX_SIGNATURES: usize = 8;
/// Items looked at in one signature header; more is refused (bounded work
/// for a header carrying 1,000 signatures).
pub const MAX_ITEMS: usize = 16;

/// The MAC algorithm of an HMAC scheme, or a plain token compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Sha1,
    Sha256,
    Sha512,
    /// The header carries the secret itself (GitLab); compared as SHA-256
    /// digests in constant time so neither content nor length leaks.
    Token,
}

impl Algorithm {
    /// Length of the MAC in bytes.
    pub fn mac_len(self) -> usize {
        match self {
            Algorithm::Sha1 => 20,
            Algorithm::Sha256 | Algorithm::Token => 32,
            Algorithm::Sha512 => 64,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha1 => "sha1",
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
            Algorithm::Token => "token",
        }
    }
}

/// How the signature bytes are written in the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Hex,
    /// Standard alphabet with padding (RFC 4648 §4).
    Base64,
    /// Not encoded: the header value is the token.
    Token,
}

impl Encoding {
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Hex => "hex",
            Encoding::Base64 => "base64",
            Encoding::Token => "token",
        }
    }
}

/// How one signature header field is laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    /// One signature, after an optional fixed prefix (`sha256=`, `v0=`).
    Single { prefix: String },
    /// `key=value` items separated by `sep`: the timestamp under `ts_key`,
    /// signatures under `sig_key` (Stripe `t=..,v1=..`; Paddle `ts=..;h1=..`).
    Pairs {
        sep: u8,
        ts_key: &'static str,
        sig_key: &'static str,
    },
    /// Space-separated `version,signature` items (Standard Webhooks:
    /// `v1,<base64 HMAC>` and `v1a,<base64 ed25519>`).
    Versioned,
}

/// A piece of the signed bytes that comes before the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Literal(Vec<u8>),
    /// The timestamp exactly as received.
    Timestamp,
    /// The delivery id exactly as received.
    Id,
}

/// What is signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signed {
    /// These parts, then the raw body (`{timestamp}.{body}`).
    Template(Vec<Part>),
    /// Twilio: the public URL (with query), then the form parameters
    /// sorted by name, each name followed by its value; or, when the URL
    /// carries `bodySHA256`, the URL alone plus a SHA-256 check of the body.
    Twilio,
}

/// Header names a scheme reads; some senders have two spellings
/// (`webhook-*` and `svix-*`): the first set whose signature header is
/// present is used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderSet {
    pub signature: HeaderName,
    pub timestamp: Option<HeaderName>,
    pub id: Option<HeaderName>,
}

/// How the configured secrets are turned into keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFormat {
    /// The secret's bytes exactly as stored are the HMAC key (or token).
    Raw,
    /// `whsec_<base64>`: HMAC key (v1); `whpk_<base64 of 32 bytes>`:
    /// ed25519 public key (v1a).
    StandardWebhooks,
}

/// A signing scheme: a preset or a `[route.scheme]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scheme {
    /// Preset name, or "custom".
    pub name: String,
    pub headers: Vec<HeaderSet>,
    pub format: Format,
    pub encoding: Encoding,
    pub algorithm: Algorithm,
    pub signed: Signed,
    /// Present: a timestamp is required (in the timestamp header, or in the
    /// signature header for [`Format::Pairs`]) and checked against
    /// `tolerance`.
    pub timestamp: Option<TimestampFormat>,
    pub tolerance: Option<Duration>,
    pub key_format: KeyFormat,
    /// The header naming the delivery (the replay key, SPEC §10), when the
    /// sender sends one.
    pub delivery_id: Option<HeaderName>,
}

impl Scheme {
    /// Every header name this scheme reads: signature, timestamp and id, in
    /// all spellings, plus the delivery id.
    pub fn header_names(&self) -> Vec<HeaderName> {
        let mut out: Vec<HeaderName> = Vec::new();
        let mut add = |n: &HeaderName| {
            if !out.contains(n) {
                out.push(n.clone());
            }
        };
        for set in &self.headers {
            add(&set.signature);
            if let Some(n) = &set.timestamp {
                add(n);
            }
            if let Some(n) = &set.id {
                add(n);
            }
        }
        if let Some(n) = &self.delivery_id {
            add(n);
        }
        out
    }

    fn signs_id(&self) -> bool {
        matches!(&self.signed, Signed::Template(parts) if parts.contains(&Part::Id))
    }

    /// The signature header names, for messages ("webhook-signature or
    /// svix-signature").
    pub fn signature_header_text(&self) -> String {
        let names: Vec<&str> = self.headers.iter().map(|s| s.signature.as_str()).collect();
        names.join(" or ")
    }

    /// The header name of `field` in the first spelling, for messages.
    pub fn field_header_text(&self, field: Field) -> String {
        let names: Vec<&str> = self
            .headers
            .iter()
            .filter_map(|s| match field {
                Field::Signature => Some(s.signature.as_str()),
                Field::Timestamp => match self.format {
                    Format::Pairs { .. } => Some(s.signature.as_str()),
                    _ => s.timestamp.as_ref().map(HeaderName::as_str),
                },
                Field::Id => s.id.as_ref().map(HeaderName::as_str),
            })
            .collect();
        names.join(" or ")
    }
}

// ---------------------------------------------------------------------------
// Keys.

/// What a key verifies with.
// A route has at most MAX_KEYS keys: keeping the HMAC state inline (not
// boxed) saves a pointer chase on every request for a few hundred bytes.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
pub enum Material {
    Hmac(MacKey),
    /// An ed25519 public key (32 bytes).
    Ed25519([u8; 32]),
    /// SHA-256 of the token (GitLab).
    Token(Tag),
}

/// One of a route's keys, with its validity window (unix seconds;
/// `not_before` inclusive, `not_after` exclusive).
#[derive(Clone)]
pub struct Key {
    pub id: String,
    pub not_before: Option<i64>,
    pub not_after: Option<i64>,
    pub material: Material,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("id", &self.id)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// Why a secret cannot be a key of this scheme. Messages never contain the
/// secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("a standard-webhooks secret must start with whsec_ (HMAC, v1) or whpk_ (ed25519 public key, v1a); copy it as the sender shows it")]
    NoPrefix,
    #[error(
        "the whsec_ secret is not valid base64 after the prefix; copy it as the sender shows it"
    )]
    WhsecNotBase64,
    #[error("the whpk_ key is not valid base64 after the prefix; copy it as the sender shows it")]
    WhpkNotBase64,
    #[error("the whpk_ key decodes to {0} bytes; an ed25519 public key is 32 bytes")]
    Ed25519Length(usize),
}

impl Key {
    /// Builds a key for `scheme` from the secret's bytes.
    pub fn new(
        scheme: &Scheme,
        id: String,
        secret: &[u8],
        not_before: Option<i64>,
        not_after: Option<i64>,
    ) -> Result<Key, KeyError> {
        let material = key_material(scheme, secret)?;
        Ok(Key {
            id,
            not_before,
            not_after,
            material,
        })
    }

    /// Valid at `now` (unix seconds).
    pub fn valid_at(&self, now: i64) -> bool {
        self.not_before.is_none_or(|nb| now >= nb) && self.not_after.is_none_or(|na| now < na)
    }

    /// The prepared HMAC state, for signing.
    pub fn mac(&self) -> Option<&MacKey> {
        match &self.material {
            Material::Hmac(m) => Some(m),
            _ => None,
        }
    }
}

fn key_material(scheme: &Scheme, secret: &[u8]) -> Result<Material, KeyError> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    match scheme.key_format {
        KeyFormat::Raw => Ok(match MacKey::new(scheme.algorithm, secret) {
            Some(mac) => Material::Hmac(mac),
            None => Material::Token(sha256(&[secret])),
        }),
        KeyFormat::StandardWebhooks => {
            if let Some(rest) = secret.strip_prefix(b"whsec_") {
                let raw = b64.decode(rest).map_err(|_| KeyError::WhsecNotBase64)?;
                let mac = MacKey::new(Algorithm::Sha256, &raw).ok_or(KeyError::WhsecNotBase64)?;
                Ok(Material::Hmac(mac))
            } else if let Some(rest) = secret.strip_prefix(b"whpk_") {
                let raw = b64.decode(rest).map_err(|_| KeyError::WhpkNotBase64)?;
                let key: [u8; 32] = raw
                    .as_slice()
                    .try_into()
                    .map_err(|_| KeyError::Ed25519Length(raw.len()))?;
                Ok(Material::Ed25519(key))
            } else {
                Err(KeyError::NoPrefix)
            }
        }
    }
}

fn sha256(parts: &[&[u8]]) -> Tag {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for p in parts {
        h.update(p);
    }
    Tag::from_slice(&h.finalize()).unwrap_or(Tag {
        bytes: [0; MAX_MAC],
        len: 0,
    })
}

// ---------------------------------------------------------------------------
// Errors and results.

/// Which header a failure is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Signature,
    Timestamp,
    Id,
}

impl Field {
    pub fn as_str(self) -> &'static str {
        match self {
            Field::Signature => "signature",
            Field::Timestamp => "timestamp",
            Field::Id => "delivery id",
        }
    }
}

/// Why a request's signature was refused. No allocation, no secret: the
/// variant is logged (and explained by `hookgate verify`); the client only
/// ever sees 401.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("{} header missing", .0.as_str())]
    Missing(Field),
    #[error("{} header present more than once", .0.as_str())]
    Duplicated(Field),
    #[error("{} header is malformed", .0.as_str())]
    Malformed(Field),
    #[error("signature does not start with the scheme's prefix")]
    WrongPrefix,
    #[error("signature has the wrong length")]
    WrongLength,
    #[error("signature header is not hexadecimal")]
    NotHex,
    #[error("signature header is not base64")]
    NotBase64,
    #[error("signature header carries no signature of a supported version")]
    NoSignature,
    #[error("signature header carries more than {MAX_ITEMS} items")]
    TooManySignatures,
    #[error("timestamp is not parsable")]
    TimestampUnparsable,
    #[error("timestamp is {} s {} the tolerance", .skew.unsigned_abs(), if *.skew > 0 { "older than" } else { "ahead of" })]
    TimestampOutside {
        /// now − timestamp, in seconds (negative: from the future).
        skew: i64,
    },
    #[error("no key of the route is valid at this time")]
    NoKeyValid,
    #[error("the body's SHA-256 does not match the URL's bodySHA256")]
    BodyHashMismatch,
    #[error("signature does not match the body under any valid key")]
    Mismatch,
}

impl VerifyError {
    /// The failure is about the timestamp (outcome `timestamp_invalid`).
    pub fn is_timestamp(self) -> bool {
        matches!(
            self,
            VerifyError::Missing(Field::Timestamp)
                | VerifyError::Duplicated(Field::Timestamp)
                | VerifyError::TimestampUnparsable
                | VerifyError::TimestampOutside { .. }
        )
    }
}

/// A verified request: which key matched, the MAC (or signature) that
/// matched and the signed timestamp. Fixed-size: the replay defence keys on
/// it without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    /// Index into the route's keys.
    pub key: usize,
    pub tag: Tag,
    pub timestamp: Option<i64>,
}

// ---------------------------------------------------------------------------
// Per route and per request.

/// A route's scheme with its keys, prepared at load.
#[derive(Debug)]
pub struct SignatureCheck {
    pub scheme: Scheme,
    pub keys: Vec<Key>,
    /// Twilio: the URL the sender was given for this route.
    pub public_url: Option<String>,
    header_names: Vec<HeaderName>,
}

/// One signature candidate from the header.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Candidate {
    ed25519: bool,
    tag: Tag,
}

/// The candidates of one header, in a fixed array.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Candidates {
    items: [Candidate; MAX_SIGNATURES],
    len: usize,
}

impl Candidates {
    fn new() -> Candidates {
        Candidates {
            items: [Candidate {
                ed25519: false,
                tag: Tag {
                    bytes: [0; MAX_MAC],
                    len: 0,
                },
            }; MAX_SIGNATURES],
            len: 0,
        }
    }

    fn push(&mut self, c: Candidate) -> Result<(), VerifyError> {
        let slot = self
            .items
            .get_mut(self.len)
            .ok_or(VerifyError::TooManySignatures)?;
        *slot = c;
        self.len += 1;
        Ok(())
    }

    fn iter(&self) -> impl Iterator<Item = &Candidate> {
        self.items[..self.len].iter()
    }
}

impl SignatureCheck {
    pub fn new(scheme: Scheme, keys: Vec<Key>, public_url: Option<String>) -> SignatureCheck {
        let header_names = scheme.header_names();
        SignatureCheck {
            scheme,
            keys,
            public_url,
            header_names,
        }
    }

    /// Every header name the scheme reads (signature, timestamp, id, in all
    /// spellings). For the hardening of look-alike headers (`_` for `-`).
    pub fn header_names(&self) -> &[HeaderName] {
        &self.header_names
    }

    /// The delivery id the sender put on this request, when the scheme has
    /// one (the replay key, SPEC §10).
    pub fn delivery_id<'h, H: Lookup>(&'h self, headers: &'h H) -> Option<&'h [u8]> {
        self.scheme
            .delivery_id
            .as_ref()
            .and_then(|n| headers.values(n).next())
    }

    /// Everything that can be checked from the headers alone (signature
    /// header shape, timestamp and tolerance, key windows), then a verifier
    /// with the signed prefix already fed. `query` is the request's query
    /// string (Twilio signs it); `now` is unix seconds.
    pub fn begin<H: Lookup>(
        &self,
        headers: &H,
        query: Option<&str>,
        now: i64,
    ) -> Result<Verifier<'_>, VerifyError> {
        let scheme = &self.scheme;
        // The first header spelling whose signature field is present.
        let set = scheme
            .headers
            .iter()
            .find(|s| headers.values(&s.signature).next().is_some())
            .ok_or(VerifyError::Missing(Field::Signature))?;
        let value = one(headers, &set.signature, Field::Signature)?;
        let parsed = signature::parse(scheme, value)?;

        let ts_text: Option<&[u8]> = match (&scheme.format, &set.timestamp) {
            (Format::Pairs { .. }, _) => parsed.timestamp,
            (_, Some(name)) if scheme.timestamp.is_some() => {
                Some(one(headers, name, Field::Timestamp)?)
            }
            _ => None,
        };
        let timestamp = match scheme.timestamp {
            None => None,
            Some(format) => {
                let text = ts_text.ok_or(VerifyError::Missing(Field::Timestamp))?;
                let ts = timestamp::parse(text, format).ok_or(VerifyError::TimestampUnparsable)?;
                if let Some(tolerance) = scheme.tolerance {
                    let skew = now.saturating_sub(ts);
                    let limit = i64::try_from(tolerance.as_secs()).unwrap_or(i64::MAX);
                    if skew.unsigned_abs() > limit.unsigned_abs() {
                        return Err(VerifyError::TimestampOutside { skew });
                    }
                }
                Some(ts)
            }
        };
        let id: Option<&[u8]> = match (&set.id, scheme.signs_id()) {
            (Some(name), true) => Some(one(headers, name, Field::Id)?),
            (None, true) => return Err(VerifyError::Missing(Field::Id)),
            _ => None,
        };

        let mut active = [false; MAX_KEYS];
        for (slot, key) in active.iter_mut().zip(&self.keys) {
            *slot = key.valid_at(now);
        }
        if !active.iter().any(|a| *a) {
            return Err(VerifyError::NoKeyValid);
        }

        let mut v = Verifier {
            check: self,
            active,
            states: [None, None, None, None],
            candidates: parsed.candidates,
            timestamp,
            stream_body: matches!(scheme.signed, Signed::Template(_)),
            ed25519_prefix: None,
            twilio: None,
            token: None,
        };
        match &scheme.signed {
            Signed::Template(parts) => {
                let feed = |state: &mut MacState| {
                    for part in parts {
                        match part {
                            Part::Literal(l) => state.update(l),
                            Part::Timestamp => state.update(ts_text.unwrap_or_default()),
                            Part::Id => state.update(id.unwrap_or_default()),
                        }
                    }
                };
                for (i, key) in self.keys.iter().enumerate() {
                    match &key.material {
                        Material::Hmac(mac) if v.active[i] => {
                            let mut state = mac.start();
                            feed(&mut state);
                            v.states[i] = Some(state);
                        }
                        Material::Token(token)
                            if v.active[i] && v.candidates.iter().any(|c| c.tag.ct_eq(token)) =>
                        {
                            v.token = Some(Verified {
                                key: i,
                                tag: *token,
                                timestamp,
                            });
                        }
                        _ => {}
                    }
                }
                let wants_ed25519 = v.candidates.iter().any(|c| c.ed25519)
                    && self
                        .keys
                        .iter()
                        .any(|k| matches!(k.material, Material::Ed25519(_)));
                if wants_ed25519 {
                    // ed25519 signs one contiguous message (it hashes it
                    // twice internally), so this path cannot stream.
                    let mut prefix = Vec::new();
                    for part in parts {
                        match part {
                            Part::Literal(l) => prefix.extend_from_slice(l),
                            Part::Timestamp => {
                                prefix.extend_from_slice(ts_text.unwrap_or_default())
                            }
                            Part::Id => prefix.extend_from_slice(id.unwrap_or_default()),
                        }
                    }
                    v.ed25519_prefix = Some(prefix);
                }
            }
            Signed::Twilio => {
                let ctx = twilio::Context::new(self.public_url.as_deref(), query, headers);
                for (i, key) in self.keys.iter().enumerate() {
                    if let (Material::Hmac(mac), true) = (&key.material, v.active[i]) {
                        let mut state = mac.start();
                        state.update(ctx.url.as_bytes());
                        v.states[i] = Some(state);
                    }
                }
                v.twilio = Some(Box::new(ctx));
            }
        }
        Ok(v)
    }
}

/// Exactly one field named `name`.
fn one<'h, H: Lookup>(
    headers: &'h H,
    name: &'h HeaderName,
    field: Field,
) -> Result<&'h [u8], VerifyError> {
    let mut values = headers.values(name);
    let first = values.next().ok_or(VerifyError::Missing(field))?;
    if values.next().is_some() {
        return Err(VerifyError::Duplicated(field));
    }
    Ok(first)
}

/// One request's verification, fed the body frame by frame.
pub struct Verifier<'a> {
    check: &'a SignatureCheck,
    /// Keys valid at the request's time, by index.
    active: [bool; MAX_KEYS],
    /// Running HMAC per active HMAC key.
    states: [Option<MacState>; MAX_KEYS],
    candidates: Candidates,
    timestamp: Option<i64>,
    /// Template schemes hash the body as it arrives; Twilio does not.
    stream_body: bool,
    /// Standard Webhooks v1a: the signed prefix, for the one contiguous
    /// message ed25519 needs.
    ed25519_prefix: Option<Vec<u8>>,
    twilio: Option<Box<twilio::Context>>,
    /// Token schemes are decided from the header alone.
    token: Option<Verified>,
}

impl Verifier<'_> {
    /// Feeds one body frame.
    pub fn update(&mut self, data: &[u8]) {
        if self.stream_body {
            for state in self.states.iter_mut().flatten() {
                state.update(data);
            }
        }
    }

    /// Decides, given the frames held (only read by the schemes that
    /// cannot stream).
    pub fn finish(&mut self, frames: &[Bytes]) -> Result<Verified, VerifyError> {
        // By reference, each part taken out as it is used: the verifier is
        // ~2 KB (states sized for SHA-512, eight candidates), and taking it
        // by value copied it on every request.
        let (check, active, timestamp) = (self.check, self.active, self.timestamp);
        if check.scheme.algorithm == Algorithm::Token {
            return self.token.take().ok_or(VerifyError::Mismatch);
        }
        if let Some(ctx) = self.twilio.take() {
            ctx.finish(frames, &mut self.states)?;
        }
        for (i, slot) in self.states.iter_mut().enumerate() {
            let Some(state) = slot.take() else { continue };
            let tag = state.finish();
            if self
                .candidates
                .iter()
                .any(|c| !c.ed25519 && c.tag.ct_eq(&tag))
            {
                return Ok(Verified {
                    key: i,
                    tag,
                    timestamp,
                });
            }
        }
        if let Some(prefix) = self.ed25519_prefix.take() {
            let mut message = prefix;
            for f in frames {
                message.extend_from_slice(f);
            }
            for (i, key) in check.keys.iter().enumerate() {
                let (Material::Ed25519(public), true) = (&key.material, active[i]) else {
                    continue;
                };
                for c in self.candidates.iter().filter(|c| c.ed25519) {
                    if ed25519::verify(public, &message, c.tag.as_slice()) {
                        return Ok(Verified {
                            key: i,
                            tag: c.tag,
                            timestamp,
                        });
                    }
                }
            }
        }
        Err(VerifyError::Mismatch)
    }
}

/// Verifies a whole captured delivery at once (`hookgate verify`, tests).
pub fn verify_whole(
    check: &SignatureCheck,
    headers: &HeaderMap,
    query: Option<&str>,
    body: &[u8],
    now: i64,
) -> Result<Verified, VerifyError> {
    let mut v = check.begin(headers, query, now)?;
    v.update(body);
    v.finish(&[Bytes::copy_from_slice(body)])
}

// ---------------------------------------------------------------------------
// Signing (`hookgate sign`, tests).

/// Why `hookgate sign` cannot produce headers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    #[error("an ed25519 (whpk_) key is a public key and cannot sign; sign v1a with the sender's private key")]
    PublicKey,
    #[error("the twilio scheme signs the public URL; pass --url https://...")]
    NeedsUrl,
    #[error(
        "this scheme sends the secret itself as the header value; there is no signature to compute"
    )]
    Token,
}

/// The header fields a sender would send for `body`, as (name, value).
pub fn sign(
    scheme: &Scheme,
    key: &Key,
    timestamp: i64,
    id: &str,
    url: Option<&str>,
    body: &[u8],
) -> Result<Vec<(String, String)>, SignError> {
    use base64::Engine;
    let set = &scheme.headers[0];
    let ts_text = match scheme.timestamp {
        Some(TimestampFormat::Rfc3339) => timestamp::format(timestamp),
        _ => timestamp.to_string(),
    };
    let mac = match (&key.material, &scheme.signed) {
        (Material::Token(_), _) => return Err(SignError::Token),
        (Material::Ed25519(_), _) => return Err(SignError::PublicKey),
        (Material::Hmac(mac), Signed::Template(parts)) => {
            let mut s = mac.start();
            for part in parts {
                match part {
                    Part::Literal(l) => s.update(l),
                    Part::Timestamp => s.update(ts_text.as_bytes()),
                    Part::Id => s.update(id.as_bytes()),
                }
            }
            s.update(body);
            s.finish()
        }
        (Material::Hmac(mac), Signed::Twilio) => {
            let url = url.ok_or(SignError::NeedsUrl)?;
            twilio::sign(mac, url, body)
        }
    };
    let encoded = match scheme.encoding {
        Encoding::Hex => hex::encode(mac.as_slice()),
        Encoding::Base64 | Encoding::Token => {
            base64::engine::general_purpose::STANDARD.encode(mac.as_slice())
        }
    };
    let value = match &scheme.format {
        Format::Single { prefix } => format!("{prefix}{encoded}"),
        Format::Pairs {
            sep,
            ts_key,
            sig_key,
        } => format!("{ts_key}={ts_text}{}{sig_key}={encoded}", *sep as char),
        Format::Versioned => format!("v1,{encoded}"),
    };
    let mut out = Vec::new();
    if scheme.signs_id() {
        if let Some(n) = &set.id {
            out.push((n.to_string(), id.to_string()));
        }
    }
    if let (Some(n), Some(_), false) = (
        &set.timestamp,
        scheme.timestamp,
        matches!(scheme.format, Format::Pairs { .. }),
    ) {
        out.push((n.to_string(), ts_text));
    }
    out.push((set.signature.to_string(), value));
    Ok(out)
}

#[cfg(test)]
mod tests;
