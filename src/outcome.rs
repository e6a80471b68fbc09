//! What happened to a request: the `outcome` label of
//! `hookgate_requests_total` and the access log's `outcome` field.
//!
//! It lives apart from [`crate::proxy`] (which decides outcomes) and
//! [`crate::metrics`] (which counts them) so that neither imports the other.

/// What happened to a request, as the `outcome` metric label and log field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Forwarded,
    SignatureMissing,
    SignatureInvalid,
    /// The timestamp of a timestamped scheme is missing, unparsable or
    /// outside the tolerance (SPEC §9).
    TimestampInvalid,
    /// Shadow mode (`enforce = false`): the signature failed and the
    /// request was forwarded anyway.
    ShadowInvalid,
    BodyTooLarge,
    MethodNotAllowed,
    Timeout,
    UpstreamError,
    UpstreamTimeout,
    /// 202 after a failed or skipped (circuit open) synchronous try: kept in
    /// the spool (SPEC §8).
    Spooled,
    /// 202 on a `delivery = "always"` route: kept in the spool.
    Queued,
    /// 503: the spool is at `max_bytes`.
    SpoolFull,
    /// 503: the spool could not be written (disk full, I/O error).
    SpoolError,
    /// Malformed request on a matched route (Host, framing). Not in SPEC §6's
    /// list, which has no row for it; kept separate rather than hidden.
    BadRequest,
    /// A repeat of a delivery recorded inside the route's `replay_window`:
    /// answered 200 by the gateway, never forwarded (SPEC §10).
    Duplicate,
    /// A repeat while the first copy is still being forwarded: 409.
    DuplicateInFlight,
    /// No route matched; counted without a route label.
    Unmatched,
}

impl Outcome {
    /// Every outcome a matched route can have (all but `Unmatched`).
    pub const ROUTED: [Outcome; 17] = [
        Outcome::Forwarded,
        Outcome::SignatureMissing,
        Outcome::SignatureInvalid,
        Outcome::TimestampInvalid,
        Outcome::ShadowInvalid,
        Outcome::BodyTooLarge,
        Outcome::MethodNotAllowed,
        Outcome::Timeout,
        Outcome::UpstreamError,
        Outcome::UpstreamTimeout,
        Outcome::Spooled,
        Outcome::Queued,
        Outcome::SpoolFull,
        Outcome::SpoolError,
        Outcome::BadRequest,
        Outcome::Duplicate,
        Outcome::DuplicateInFlight,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Forwarded => "forwarded",
            Outcome::SignatureMissing => "signature_missing",
            Outcome::SignatureInvalid => "signature_invalid",
            Outcome::TimestampInvalid => "timestamp_invalid",
            Outcome::ShadowInvalid => "shadow_invalid",
            Outcome::BodyTooLarge => "body_too_large",
            Outcome::MethodNotAllowed => "method_not_allowed",
            Outcome::Timeout => "timeout",
            Outcome::UpstreamError => "upstream_error",
            Outcome::UpstreamTimeout => "upstream_timeout",
            Outcome::Spooled => "spooled",
            Outcome::Queued => "queued",
            Outcome::SpoolFull => "spool_full",
            Outcome::SpoolError => "spool_error",
            Outcome::BadRequest => "bad_request",
            Outcome::Duplicate => "duplicate",
            Outcome::DuplicateInFlight => "duplicate_in_flight",
            Outcome::Unmatched => "unmatched",
        }
    }
}
