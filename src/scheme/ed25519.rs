//! ed25519 signatures (Standard Webhooks `v1a`), with aws-lc-rs: already
//! built for rustls, so no new crypto crate.

use aws_lc_rs::signature::{UnparsedPublicKey, ED25519};

/// True when `signature` is `public`'s ed25519 signature of `message`.
pub(super) fn verify(public: &[u8; 32], message: &[u8], signature: &[u8]) -> bool {
    UnparsedPublicKey::new(&ED25519, public)
        .verify(message, signature)
        .is_ok()
}
