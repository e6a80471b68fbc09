//! Signature schemes end to end through the `hookgate` binary (SPEC §9):
//! github, stripe, standard-webhooks (v1 HMAC, v1a ed25519, `svix-*`
//! spelling) and twilio, each with its rejections; key rotation windows
//! and the per-key metric; shadow mode; the expiry warning. Signatures are
//! computed here with `hmac`/`sha2`/`sha1` and aws-lc's ed25519, not with
//! the gateway's code. Every rejection is a 401 with 0 bytes upstream.

mod common;

use std::net::SocketAddr;

use base64::Engine;
use common::*;
use hmac::{KeyInit, Mac};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

const GH: &str = "gh-secret-It's a Secret";
const STRIPE: &str = "whsec_stripe_test_secret";
const SW_RAW: &[u8] = b"standard-webhooks-raw-key-32byte";
const TW: &str = "twilio-auth-token-12345";
const NEW: &str = "rotation-new-secret";
const OLD: &str = "rotation-old-secret";
const GONE: &str = "rotation-expired-secret";
const LATER: &str = "rotation-future-secret";
const ED_SEED: [u8; 32] = [9; 32];
const TWILIO_URL: &str = "https://hooks.example.com/webhooks/twilio";

fn sw_secret() -> String {
    format!("whsec_{}", B64.encode(SW_RAW))
}

fn ed_pair() -> aws_lc_rs::signature::Ed25519KeyPair {
    aws_lc_rs::signature::Ed25519KeyPair::from_seed_unchecked(&ED_SEED).unwrap()
}

fn ed_public() -> String {
    use aws_lc_rs::signature::KeyPair;
    format!("whpk_{}", B64.encode(ed_pair().public_key().as_ref()))
}

fn hmac256(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().to_vec()
}

fn hmac1(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut m = hmac::Hmac::<sha1::Sha1>::new_from_slice(key).unwrap();
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().to_vec()
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn rfc3339(unix: i64) -> String {
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix as u64),
    )
    .to_string()
}

fn config(upstream: SocketAddr) -> String {
    let t = now();
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
shutdown_timeout = "2s"

[admin]
listen = "127.0.0.1:0"

[limits]
request_timeout = "5s"
upstream_timeout = "5s"

[[route]]
name = "github"
path = "/gh"
upstream = "http://{upstream}"
scheme = "github"
secret = {{ env = "GH" }}

[[route]]
name = "stripe"
path = "/stripe"
upstream = "http://{upstream}"
scheme = "stripe"
secret = {{ env = "STRIPE" }}

[[route]]
name = "sw"
path = "/sw"
upstream = "http://{upstream}"
scheme = "standard-webhooks"
secrets = [{{ env = "SW", id = "v1" }}, {{ env = "SW_ED", id = "v1a" }}]

[[route]]
name = "twilio"
path = "/twilio"
upstream = "http://{upstream}"
scheme = "twilio"
public_url = "{TWILIO_URL}"
secret = {{ env = "TW" }}

[[route]]
name = "rotate"
path = "/rotate"
upstream = "http://{upstream}"
secrets = [
  {{ env = "NEW", id = "new", not_before = "{nb}" }},
  {{ env = "OLD", id = "old", not_after = "{soon}" }},
  {{ env = "GONE", id = "gone", not_after = "{past}" }},
  {{ env = "LATER", id = "later", not_before = "{future}" }},
]

[[route]]
name = "shadow"
path = "/shadow"
upstream = "http://{upstream}"
scheme = "github"
enforce = false
secret = {{ env = "GH" }}
"#,
        nb = rfc3339(t - 3600),
        soon = rfc3339(t + 3 * 24 * 3600),
        past = rfc3339(t - 60),
        future = rfc3339(t + 3600),
    )
}

struct Env {
    gw: Running,
    upstream: Upstream,
    _dir: tempfile::TempDir,
}

/// The gateway never outlives the test, even one that fails.
impl Drop for Env {
    fn drop(&mut self) {
        let _ = self.gw.child.kill();
        let _ = self.gw.child.wait();
    }
}

fn start(upstream: Upstream) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hookgate.toml");
    std::fs::write(&path, config(upstream.addr)).unwrap();
    let sw = sw_secret();
    let ed = ed_public();
    let gw = spawn_run(
        &path,
        &[
            ("GH", GH),
            ("STRIPE", STRIPE),
            ("SW", &sw),
            ("SW_ED", &ed),
            ("TW", TW),
            ("NEW", NEW),
            ("OLD", OLD),
            ("GONE", GONE),
            ("LATER", LATER),
        ],
    );
    Env {
        gw,
        upstream,
        _dir: dir,
    }
}

/// A POST with exactly these header fields (plus Host and Content-Length).
fn request(path: &str, headers: &[(String, String)], body: &[u8]) -> Vec<u8> {
    let mut req = format!("POST {path} HTTP/1.1\r\nHost: hooks.test\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// POSTs `body` with `headers` and returns the status.
async fn send(addr: SocketAddr, path: &str, headers: &[(String, String)], body: &[u8]) -> u16 {
    raw(addr, &request(path, headers, body)).await.0.status
}

fn h(n: &str, v: impl Into<String>) -> (String, String) {
    (n.to_string(), v.into())
}

/// The rejections every preset must refuse, from a valid header set:
/// returns (what, headers) pairs.
fn broken(
    good: &[(String, String)],
    sig_name: &str,
    sig_value: &str,
    filler: (&str, &str),
) -> Vec<(&'static str, Vec<(String, String)>)> {
    let (sep, short) = filler;
    let with = |v: &str| -> Vec<(String, String)> {
        good.iter()
            .map(|(n, x)| {
                (
                    n.clone(),
                    if n == sig_name {
                        v.to_string()
                    } else {
                        x.clone()
                    },
                )
            })
            .collect()
    };
    let without: Vec<_> = good
        .iter()
        .filter(|(n, _)| n != sig_name)
        .cloned()
        .collect();
    let mut twice = good.to_vec();
    twice.push(h(sig_name, sig_value));
    let truncated = &sig_value[..sig_value.len() - 2];
    vec![
        ("missing header", without),
        ("empty value", with("")),
        ("wrong prefix", with(&format!("xx{sig_value}"))),
        ("not in the encoding", with(&format!("{}~~", truncated))),
        ("wrong length", with(truncated)),
        ("two signature fields", twice),
        // 1,000 short entries plus the valid one (1,000 full-length ones
        // exceed the 16 KiB header limit and get 431 before any check).
        (
            "1,000 signatures",
            with(&format!("{}{sep}{sig_value}", vec![short; 999].join(sep))),
        ),
    ]
}

/// Sends every broken variant and the valid one; checks 401s forward
/// nothing and the valid request arrives byte for byte.
async fn exercise(
    env: &Env,
    path: &str,
    good: Vec<(String, String)>,
    sig: &str,
    filler: (&str, &str),
    body: &[u8],
) {
    let sig_value = good.iter().find(|(n, _)| n == sig).unwrap().1.clone();
    let before = env.upstream.count();
    for (what, headers) in broken(&good, sig, &sig_value, filler) {
        assert_eq!(
            send(env.gw.addr, path, &headers, body).await,
            401,
            "{path}: {what}"
        );
    }
    assert_eq!(
        send(env.gw.addr, path, &good, b"{\"other\":\"body\"}").await,
        401,
        "{path}: signature of another body"
    );
    assert_eq!(env.upstream.count(), before, "{path}: nothing forwarded");
    assert_eq!(
        send(env.gw.addr, path, &good, body).await,
        201,
        "{path}: valid"
    );
    let got = env.upstream.received().pop().unwrap();
    assert_eq!(got.body, body, "{path}: body unchanged");
    for (n, v) in &good {
        assert_eq!(
            got.header(&n.to_ascii_lowercase()),
            Some(v.as_str()),
            "{path}: {n} forwarded"
        );
    }
}

#[tokio::test]
async fn presets_end_to_end_through_the_binary() {
    let env = start(Upstream::start(Behaviour::Respond).await);
    let body = br#"{"event":"ping","n":1}"#;
    let t = now();

    // GitHub: sha256=<hex>.
    let sig = format!("sha256={}", hex::encode(hmac256(GH.as_bytes(), &[body])));
    let good = vec![
        h("X-Hub-Signature-256", sig),
        h("X-GitHub-Delivery", "72d3162e"),
    ];
    exercise(
        &env,
        "/gh",
        good,
        "X-Hub-Signature-256",
        (" ", "sha256=00"),
        body,
    )
    .await;

    // Stripe: t=<ts>,v1=<hex of {t}.{body}>.
    let stripe = |ts: i64, b: &[u8]| {
        let mac = hmac256(STRIPE.as_bytes(), &[ts.to_string().as_bytes(), b".", b]);
        format!("t={ts},v1={}", hex::encode(mac))
    };
    let good = vec![h("Stripe-Signature", stripe(t, body))];
    exercise(
        &env,
        "/stripe",
        good,
        "Stripe-Signature",
        (",", "v1=00"),
        body,
    )
    .await;
    let v1 = hex::encode(hmac256(
        STRIPE.as_bytes(),
        &[t.to_string().as_bytes(), b".", body],
    ));
    for (what, value) in [
        ("stale", stripe(t - 400, body)),
        ("future", stripe(t + 400, body)),
        ("unparsable", format!("t=yesterday,v1={v1}")),
        ("v0 only", format!("t={t},v0={v1}")),
    ] {
        let status = send(
            env.gw.addr,
            "/stripe",
            &[h("Stripe-Signature", value)],
            body,
        )
        .await;
        assert_eq!(status, 401, "stripe {what}");
    }

    // Standard Webhooks v1 (HMAC, whsec_), both header spellings.
    let sw = |p: &str, id: &str, ts: i64, b: &[u8]| {
        let mac = hmac256(
            SW_RAW,
            &[id.as_bytes(), b".", ts.to_string().as_bytes(), b".", b],
        );
        vec![
            h(&format!("{p}-id"), id),
            h(&format!("{p}-timestamp"), ts.to_string()),
            h(&format!("{p}-signature"), format!("v1,{}", B64.encode(mac))),
        ]
    };
    let sw_filler = (" ", "v1,AAAA");
    exercise(
        &env,
        "/sw",
        sw("webhook", "msg_1", t, body),
        "webhook-signature",
        sw_filler,
        body,
    )
    .await;
    exercise(
        &env,
        "/sw",
        sw("svix", "msg_2", t, body),
        "svix-signature",
        sw_filler,
        body,
    )
    .await;
    // Standard Webhooks v1a (ed25519, whpk_).
    let v1a = |id: &str, ts: i64, b: &[u8]| {
        let mut msg = format!("{id}.{ts}.").into_bytes();
        msg.extend_from_slice(b);
        vec![
            h("webhook-id", id),
            h("webhook-timestamp", ts.to_string()),
            h(
                "webhook-signature",
                format!("v1a,{}", B64.encode(ed_pair().sign(&msg).as_ref())),
            ),
        ]
    };
    exercise(
        &env,
        "/sw",
        v1a("msg_3", t, body),
        "webhook-signature",
        sw_filler,
        body,
    )
    .await;
    for (what, headers) in [
        ("v1 stale", sw("webhook", "m", t - 301, body)),
        ("v1 future", sw("webhook", "m", t + 400, body)),
        ("v1a stale", v1a("m", t - 400, body)),
        ("v1a future", v1a("m", t + 400, body)),
    ] {
        assert_eq!(
            send(env.gw.addr, "/sw", &headers, body).await,
            401,
            "{what}"
        );
    }
    let mut unparsable = sw("webhook", "m", t, body);
    unparsable[1].1 = "soon".into();
    assert_eq!(send(env.gw.addr, "/sw", &unparsable, body).await, 401);
    // The id is signed: another id under the same signature fails.
    let mut other_id = sw("webhook", "m", t, body);
    other_id[0].1 = "m2".into();
    assert_eq!(send(env.gw.addr, "/sw", &other_id, body).await, 401);

    // Twilio: HMAC-SHA1 over public_url (+ query) + sorted form params.
    let form = b"To=%2B18005551212&From=%2B14158675309&CallSid=CA1234567890ABCDE&Body=hi+there";
    let params: &[&[u8]] = &[
        b"Body",
        b"hi there",
        b"CallSid",
        b"CA1234567890ABCDE",
        b"From",
        b"+14158675309",
        b"To",
        b"+18005551212",
    ];
    let url = format!("{TWILIO_URL}?x=1");
    let mut parts: Vec<&[u8]> = vec![url.as_bytes()];
    parts.extend_from_slice(params);
    let good = vec![
        h(
            "X-Twilio-Signature",
            B64.encode(hmac1(TW.as_bytes(), &parts)),
        ),
        h("Content-Type", "application/x-www-form-urlencoded"),
    ];
    assert_eq!(
        send(env.gw.addr, "/twilio?x=1", &good, form).await,
        201,
        "twilio valid"
    );
    assert_eq!(env.upstream.received().pop().unwrap().body, form);
    // Without the signed query, and with the rejections.
    assert_eq!(send(env.gw.addr, "/twilio", &good, form).await, 401);
    let sig = good[0].1.clone();
    let before = env.upstream.count();
    for (what, headers) in broken(&good, "X-Twilio-Signature", &sig, (" ", "AAAA")) {
        assert_eq!(
            send(env.gw.addr, "/twilio?x=1", &headers, form).await,
            401,
            "twilio {what}"
        );
    }
    assert_eq!(
        send(env.gw.addr, "/twilio?x=1", &good, b"To=%2B1").await,
        401,
        "twilio other body"
    );
    assert_eq!(env.upstream.count(), before);

    // Rotation: both valid keys accepted and counted under their ids; a
    // key past not_after or before not_before is refused.
    let adsumo = |secret: &str| {
        vec![h(
            "X-Adsumo-Signature",
            hex::encode(hmac256(secret.as_bytes(), &[body])),
        )]
    };
    for (secret, status) in [
        (NEW, 201),
        (OLD, 201),
        (OLD, 201),
        (GONE, 401),
        (LATER, 401),
    ] {
        assert_eq!(
            send(env.gw.addr, "/rotate", &adsumo(secret), body).await,
            status,
            "{secret}"
        );
    }

    // Shadow mode: a bad signature is forwarded and counted.
    let n = env.upstream.count();
    let bad = vec![h(
        "X-Hub-Signature-256",
        format!("sha256={}", "0".repeat(64)),
    )];
    assert_eq!(send(env.gw.addr, "/shadow", &bad, body).await, 201);
    assert_eq!(send(env.gw.addr, "/shadow", &[], body).await, 201);
    assert_eq!(env.upstream.count(), n + 2);

    let m = metrics_at(env.gw.admin).await;
    for line in [
        "hookgate_signature_key_matches_total{route=\"rotate\",key=\"new\"} 1",
        "hookgate_signature_key_matches_total{route=\"rotate\",key=\"old\"} 2",
        "hookgate_signature_key_matches_total{route=\"rotate\",key=\"gone\"} 0",
        "hookgate_signature_key_matches_total{route=\"sw\",key=\"v1\"} 2",
        "hookgate_signature_key_matches_total{route=\"sw\",key=\"v1a\"} 1",
        "hookgate_requests_total{route=\"shadow\",outcome=\"shadow_invalid\"} 2",
        // stale, future, unparsable, and the "xx" prefix that hides t=
        "hookgate_requests_total{route=\"stripe\",outcome=\"timestamp_invalid\"} 4",
        "hookgate_requests_total{route=\"sw\",outcome=\"timestamp_invalid\"} 5",
        "hookgate_requests_total{route=\"github\",outcome=\"signature_missing\"} 1",
        "hookgate_requests_total{route=\"github\",outcome=\"forwarded\"} 1",
    ] {
        assert!(m.contains(&format!("{line}\n")), "{line} in:\n{m}");
    }

    // Logs: the shadow warning with its reason and the expiry warning for
    // "old"; no secret anywhere.
    let mut env = env;
    env.gw.child.kill().unwrap();
    env.gw.child.wait().unwrap();
    let mut lines = env.gw.seen.clone();
    lines.extend(env.gw.lines.by_ref().map_while(Result::ok));
    let all = lines.join("\n");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("shadow mode: signature check failed")
                && l.contains("signature does not match")),
        "{all}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("WARN") && l.contains("key \\\"old\\\" expires at")),
        "{all}"
    );
    for secret in [
        GH,
        STRIPE,
        TW,
        NEW,
        OLD,
        GONE,
        LATER,
        &sw_secret(),
        &B64.encode(SW_RAW),
    ] {
        assert!(!all.contains(secret), "secret in logs");
    }
}

/// `hookgate sign --scheme` prints what the sender sends; `hookgate verify`
/// accepts it, and names the failing check otherwise (never the secret or
/// the expected signature).
#[test]
fn sign_and_verify_cli() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hookgate.toml");
    std::fs::write(
        &config,
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[[route]]\nname = \"stripe\"\npath = \"/s\"\nupstream = \"http://127.0.0.1:9\"\nscheme = \"stripe\"\nsecrets = [{ env = \"STRIPE\", id = \"new\" }, { env = \"OLD\", id = \"old\", not_after = \"2030-01-01T00:00:00Z\" }]\n",
    )
    .unwrap();
    let body = dir.path().join("body.json");
    std::fs::write(&body, br#"{"id":"evt_1"}"#).unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_hookgate"))
            .args(args)
            .env("STRIPE", STRIPE)
            .env("OLD", OLD)
            .output()
            .unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let body_path = body.to_str().unwrap();
    let (code, out, err) = run(&[
        "sign",
        "--scheme",
        "stripe",
        "--secret-env",
        "STRIPE",
        "--timestamp",
        "1700000000",
        body_path,
    ]);
    assert_eq!(code, 0, "{err}");
    let mac = hex::encode(hmac256(
        STRIPE.as_bytes(),
        &[b"1700000000.", br#"{"id":"evt_1"}"#],
    ));
    assert_eq!(out, format!("stripe-signature: t=1700000000,v1={mac}\n"));
    let header = out.trim_end();

    let cfg = config.to_str().unwrap();
    let verify = |at: &str, file: &str| {
        run(&[
            "verify", "--config", cfg, "--route", "stripe", "--header", header, "--at", at, file,
        ])
    };
    let (code, out, _) = verify("1700000010", body_path);
    assert_eq!((code, out.as_str()), (0, "valid (key new)\n"));

    let (code, out, _) = verify("1700000712", body_path);
    assert_eq!(code, 1);
    assert!(
        out.contains("timestamp 712 s old, 412 s outside the 300 s tolerance (header stripe-signature, checked at 2023-11-14T22:25:12Z)"),
        "{out}"
    );

    let other = dir.path().join("other.json");
    std::fs::write(&other, br#"{"id":"evt_2"}"#).unwrap();
    let (code, out, _) = verify("1700000010", other.to_str().unwrap());
    assert_eq!(code, 1);
    assert!(out.contains("header stripe-signature: no key matched among ids [new (valid, no window), old (valid: - .. 2030-01-01T00:00:00Z)]"), "{out}");
    assert!(!out.contains(STRIPE) && !out.contains(&mac[..16]), "{out}");

    let (code, out, _) = run(&[
        "verify",
        "--config",
        cfg,
        "--route",
        "stripe",
        "--header",
        "X-Stripe-Signature: t=1",
        body_path,
    ]);
    assert_eq!(code, 1);
    assert!(
        out.contains("header stripe-signature is missing (scheme stripe)"),
        "{out}"
    );

    // Standard Webhooks: every header, one per line, for curl -H @-.
    let (code, out, err) = std::process::Command::new(env!("CARGO_BIN_EXE_hookgate"))
        .args([
            "sign",
            "--scheme",
            "standard-webhooks",
            "--secret-env",
            "SW",
            "--timestamp",
            "1614265330",
            "--id",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            "-",
        ])
        .env("SW", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin
                .take()
                .unwrap()
                .write_all(br#"{"test": 2432232314}"#)?;
            c.wait_with_output()
        })
        .map(|o| {
            (
                o.status.code().unwrap(),
                String::from_utf8(o.stdout).unwrap(),
                String::from_utf8(o.stderr).unwrap(),
            )
        })
        .unwrap();
    assert_eq!(code, 0, "{err}");
    // The reference library's own vector (see src/scheme/tests.rs).
    assert_eq!(
        out,
        "webhook-id: msg_p5jXN8AQM9LWM0D4loKWxJek\nwebhook-timestamp: 1614265330\nwebhook-signature: v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=\n"
    );
}

/// The replay defence keys on the scheme's delivery id when it has one
/// (SPEC §10): a repeat of `X-GitHub-Delivery` is answered 200 +
/// `X-Hookgate-Duplicate` without forwarding, a new id goes through.
#[tokio::test]
async fn replay_keys_on_the_delivery_id() {
    let upstream = Upstream::start(Behaviour::Respond).await;
    let gw = Gateway::start(&two_routes(
        upstream.addr,
        "scheme = \"github\"\nreplay_window = \"1m\"",
    ))
    .await;
    let body = br#"{"zen":"Design for failure."}"#;
    let sig = format!(
        "sha256={}",
        hex::encode(hmac256(SECRET_A.as_bytes(), &[body]))
    );
    let with_id = |id: &str| {
        vec![
            h("X-Hub-Signature-256", sig.clone()),
            h("X-GitHub-Delivery", id),
        ]
    };
    let first = raw(gw.addr, &request("/webhooks/a", &with_id("d-1"), body))
        .await
        .0;
    assert_eq!(first.status, 201);
    let again = raw(gw.addr, &request("/webhooks/a", &with_id("d-1"), body))
        .await
        .0;
    assert_eq!(
        (again.status, again.header("x-hookgate-duplicate")),
        (200, Some("true"))
    );
    let other = raw(gw.addr, &request("/webhooks/a", &with_id("d-2"), body))
        .await
        .0;
    assert_eq!(other.status, 201);
    assert_eq!(upstream.count(), 2);
    gw.stop().await;
}

/// The look-alike refusal (`_` for `-`) covers every header the scheme
/// reads, not only the signature: a `Stripe_Signature` or an
/// `X_Slack_Request_Timestamp` next to the real fields is 400, unread.
#[tokio::test]
async fn lookalikes_of_every_scheme_header_are_refused() {
    let upstream = Upstream::start(Behaviour::Respond).await;
    let gw = Gateway::start(&two_routes(upstream.addr, "scheme = \"slack\"")).await;
    let body = b"token=x";
    let t = now().to_string();
    let mac = hmac256(SECRET_A.as_bytes(), &[b"v0:", t.as_bytes(), b":", body]);
    let good = vec![
        h("X-Slack-Request-Timestamp", t.clone()),
        h("X-Slack-Signature", format!("v0={}", hex::encode(mac))),
    ];
    assert_eq!(send(gw.addr, "/webhooks/a", &good, body).await, 201);
    for extra in ["X_Slack_Request_Timestamp", "x_slack-signature"] {
        let mut headers = good.clone();
        headers.push(h(extra, t.clone()));
        assert_eq!(
            send(gw.addr, "/webhooks/a", &headers, body).await,
            400,
            "{extra}"
        );
    }
    assert_eq!(upstream.count(), 1);
    gw.stop().await;
}
