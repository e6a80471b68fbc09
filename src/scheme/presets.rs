//! The presets of SPEC §9: one row per provider, each as the provider
//! documents it (source in the comment; the known-answer vectors are in
//! `tests.rs`).

use std::time::Duration;

use http::HeaderName;

use super::{
    Algorithm, Encoding, Format, HeaderSet, KeyFormat, Part, Scheme, Signed, TimestampFormat,
};

/// Every preset name, in the order `hookgate check` lists them.
pub const NAMES: [&str; 11] = [
    "adsumo",
    "github",
    "stripe",
    "shopify",
    "slack",
    "standard-webhooks",
    "zendesk",
    "paddle",
    "linear",
    "twilio",
    "gitlab",
];

const FIVE_MINUTES: Duration = Duration::from_secs(300);

fn h(name: &'static str) -> HeaderName {
    HeaderName::from_static(name)
}

fn single(sig: &'static str) -> Vec<HeaderSet> {
    vec![HeaderSet {
        signature: h(sig),
        timestamp: None,
        id: None,
    }]
}

fn body_only() -> Signed {
    Signed::Template(Vec::new())
}

fn lit(s: &str) -> Part {
    Part::Literal(s.as_bytes().to_vec())
}

/// A copy of the preset called `name`.
pub fn preset(name: &str) -> Option<Scheme> {
    let raw = |headers, format, encoding, algorithm, signed| Scheme {
        name: name.to_string(),
        headers,
        format,
        encoding,
        algorithm,
        signed,
        timestamp: None,
        tolerance: None,
        key_format: KeyFormat::Raw,
        delivery_id: None,
    };
    let no_prefix = || Format::Single {
        prefix: String::new(),
    };
    let scheme = match name {
        // seeds/adsumo-webhooks.md: hex HMAC-SHA256 of the raw body.
        "adsumo" => raw(
            single("x-adsumo-signature"),
            no_prefix(),
            Encoding::Hex,
            Algorithm::Sha256,
            body_only(),
        ),
        // https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries
        "github" => Scheme {
            delivery_id: Some(h("x-github-delivery")),
            ..raw(
                single("x-hub-signature-256"),
                Format::Single {
                    prefix: "sha256=".into(),
                },
                Encoding::Hex,
                Algorithm::Sha256,
                body_only(),
            )
        },
        // https://docs.stripe.com/webhooks#verify-manually: `t=` and every
        // `v1=` (several during a secret roll), signed `{t}.{body}`, 5 min.
        "stripe" => Scheme {
            timestamp: Some(TimestampFormat::Unix),
            tolerance: Some(FIVE_MINUTES),
            ..raw(
                single("stripe-signature"),
                Format::Pairs {
                    sep: b',',
                    ts_key: "t",
                    sig_key: "v1",
                },
                Encoding::Hex,
                Algorithm::Sha256,
                Signed::Template(vec![Part::Timestamp, lit(".")]),
            )
        },
        // https://shopify.dev/docs/apps/build/webhooks/subscribe/https#step-2-validate-the-origin-of-your-webhook-to-ensure-its-coming-from-shopify
        "shopify" => Scheme {
            delivery_id: Some(h("x-shopify-webhook-id")),
            ..raw(
                single("x-shopify-hmac-sha256"),
                no_prefix(),
                Encoding::Base64,
                Algorithm::Sha256,
                body_only(),
            )
        },
        // https://api.slack.com/authentication/verifying-requests-from-slack
        "slack" => Scheme {
            timestamp: Some(TimestampFormat::Unix),
            tolerance: Some(FIVE_MINUTES),
            ..raw(
                vec![HeaderSet {
                    signature: h("x-slack-signature"),
                    timestamp: Some(h("x-slack-request-timestamp")),
                    id: None,
                }],
                Format::Single {
                    prefix: "v0=".into(),
                },
                Encoding::Hex,
                Algorithm::Sha256,
                Signed::Template(vec![lit("v0:"), Part::Timestamp, lit(":")]),
            )
        },
        // https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md
        // (`webhook-*`; Svix sends the same scheme as `svix-*`).
        "standard-webhooks" => Scheme {
            timestamp: Some(TimestampFormat::Unix),
            tolerance: Some(FIVE_MINUTES),
            key_format: KeyFormat::StandardWebhooks,
            delivery_id: Some(h("webhook-id")),
            ..raw(
                vec![
                    HeaderSet {
                        signature: h("webhook-signature"),
                        timestamp: Some(h("webhook-timestamp")),
                        id: Some(h("webhook-id")),
                    },
                    HeaderSet {
                        signature: h("svix-signature"),
                        timestamp: Some(h("svix-timestamp")),
                        id: Some(h("svix-id")),
                    },
                ],
                Format::Versioned,
                Encoding::Base64,
                Algorithm::Sha256,
                Signed::Template(vec![Part::Id, lit("."), Part::Timestamp, lit(".")]),
            )
        },
        // https://developer.zendesk.com/documentation/webhooks/verifying/:
        // base64(HMAC-SHA256(TIMESTAMP + BODY)). Zendesk documents no
        // tolerance; 5 min like the others.
        "zendesk" => Scheme {
            timestamp: Some(TimestampFormat::Rfc3339),
            tolerance: Some(FIVE_MINUTES),
            ..raw(
                vec![HeaderSet {
                    signature: h("x-zendesk-webhook-signature"),
                    timestamp: Some(h("x-zendesk-webhook-signature-timestamp")),
                    id: None,
                }],
                no_prefix(),
                Encoding::Base64,
                Algorithm::Sha256,
                Signed::Template(vec![Part::Timestamp]),
            )
        },
        // https://developer.paddle.com/webhooks/signature-verification:
        // `ts=..;h1=..` (several h1 during a secret rotation), signed
        // `{ts}:{body}`; Paddle's SDKs allow 5 s.
        "paddle" => Scheme {
            timestamp: Some(TimestampFormat::Unix),
            tolerance: Some(Duration::from_secs(5)),
            ..raw(
                single("paddle-signature"),
                Format::Pairs {
                    sep: b';',
                    ts_key: "ts",
                    sig_key: "h1",
                },
                Encoding::Hex,
                Algorithm::Sha256,
                Signed::Template(vec![Part::Timestamp, lit(":")]),
            )
        },
        // https://linear.app/developers/webhooks#securing-webhooks: hex
        // HMAC-SHA256 of the body. (Linear's `webhookTimestamp` is inside
        // the JSON body; the gateway does not parse bodies.)
        "linear" => Scheme {
            delivery_id: Some(h("linear-delivery")),
            ..raw(
                single("linear-signature"),
                no_prefix(),
                Encoding::Hex,
                Algorithm::Sha256,
                body_only(),
            )
        },
        // https://www.twilio.com/docs/usage/security#validating-requests
        "twilio" => Scheme {
            delivery_id: Some(h("i-twilio-idempotency-token")),
            ..raw(
                single("x-twilio-signature"),
                no_prefix(),
                Encoding::Base64,
                Algorithm::Sha1,
                Signed::Twilio,
            )
        },
        // https://docs.gitlab.com/user/project/integrations/webhooks/#validate-requests-with-a-secret-token
        "gitlab" => Scheme {
            delivery_id: Some(h("x-gitlab-event-uuid")),
            ..raw(
                single("x-gitlab-token"),
                no_prefix(),
                Encoding::Token,
                Algorithm::Token,
                body_only(),
            )
        },
        _ => return None,
    };
    Some(scheme)
}
