//! Signature verification throughput: the crate's real verify path (the
//! route's prepared keys cloned, signed prefix fed, the body fed frame by
//! frame in 16 KiB frames, header decoded, constant-time compare) next to a
//! raw MAC over the same signed bytes as one contiguous slice, in the same
//! run.
//!
//! Two tables are printed after criterion's report (interleaved timing,
//! median of rounds):
//! - adsumo at 1 KiB .. 1 MiB, with aws-lc's assembly HMAC-SHA256 over the
//!   same contiguous bytes: the hardware's ceiling (SHA-NI);
//! - one row per preset at 1 KiB and 1 MiB: hookgate / raw MAC of the same
//!   signed bytes (HMAC with the `hmac` crate; ed25519 with aws-lc).
//!
//! `cargo bench --bench verify [-- --warm-up-time 1 --measurement-time 2]`
//!
//! `cargo bench --bench verify -- --hmac-rate` skips criterion and both
//! tables and prints only, per body size, the time of one HMAC-SHA256 over
//! the body (the raw contiguous MAC, median of rounds) as machine-readable
//! `HMAC_US` lines: what `benches/load/run.sh` subtracts as the cost nginx
//! does not pay (a few seconds; run it pinned to the proxy's core).

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput};
use hmac::{KeyInit, Mac};
use hookgate::scheme::{self, presets, Key, SignatureCheck};
use http::{HeaderMap, HeaderName, HeaderValue};

const SECRET: &[u8] = b"whsec-bench-0123456789abcdef0123";
const FRAME: usize = 16 * 1024;
const NOW: i64 = 1_700_000_000;
const URL: &str = "https://hooks.example.com/webhooks/twilio";
const SIZES: [(usize, &str); 4] = [
    (1024, "1KiB"),
    (16 * 1024, "16KiB"),
    (256 * 1024, "256KiB"),
    (1024 * 1024, "1MiB"),
];
/// The ed25519 seed of the v1a rows (public key derived with aws-lc).
const ED_SEED: [u8; 32] = [7; 32];

/// The raw baseline: what is signed, and how.
enum Raw {
    Sha1(hmac::Hmac<sha1::Sha1>),
    Sha256(hmac::Hmac<sha2::Sha256>),
    Ed25519([u8; 32]),
}

struct Case {
    name: String,
    check: SignatureCheck,
    headers: HeaderMap,
    query: Option<String>,
    frames: Vec<Bytes>,
    /// The signed bytes, contiguous (prefix + body, or Twilio's URL +
    /// parameters).
    signed: Vec<u8>,
    raw: Raw,
    tag: Vec<u8>,
}

/// A body of `size` bytes. Form-encoded for Twilio (parameter names in
/// sorted order, so the signed bytes are easy to write down), else JSON-ish.
fn body(size: usize, form: bool) -> Vec<u8> {
    if !form {
        return (0..size).map(|i| b'a' + (i * 31 % 26) as u8).collect();
    }
    let mut out = Vec::with_capacity(size + 64);
    let mut i = 0;
    while out.len() < size {
        if !out.is_empty() {
            out.push(b'&');
        }
        out.extend_from_slice(format!("p{i:06}=").as_bytes());
        out.extend(std::iter::repeat_n(b'v', 40));
        i += 1;
    }
    out.truncate(size);
    // The truncated tail stays one parameter (no '&' or '=' cut in half
    // matters: it is just a shorter value or a key without value).
    out
}

fn case(preset: &str, size: usize) -> Case {
    let twilio = preset == "twilio";
    let ed = preset == "standard-webhooks-v1a";
    let scheme = presets::preset(if ed { "standard-webhooks" } else { preset }).unwrap();
    let body = body(size, twilio);
    let (secret, raw_key): (Vec<u8>, Vec<u8>) = if scheme.key_format
        == scheme::KeyFormat::StandardWebhooks
    {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        if ed {
            let pair = aws_lc_rs::signature::Ed25519KeyPair::from_seed_unchecked(&ED_SEED).unwrap();
            use aws_lc_rs::signature::KeyPair;
            let public = pair.public_key().as_ref().to_vec();
            (format!("whpk_{}", b64.encode(&public)).into_bytes(), public)
        } else {
            (
                format!("whsec_{}", b64.encode(SECRET)).into_bytes(),
                SECRET.to_vec(),
            )
        }
    } else {
        (SECRET.to_vec(), SECRET.to_vec())
    };
    let key = Key::new(&scheme, "k".into(), &secret, None, None).unwrap();
    let mut headers = HeaderMap::new();
    let (signed, tag, raw);
    if ed {
        let pair = aws_lc_rs::signature::Ed25519KeyPair::from_seed_unchecked(&ED_SEED).unwrap();
        let mut msg = format!("msg_1.{NOW}.").into_bytes();
        msg.extend_from_slice(&body);
        let sig = pair.sign(&msg).as_ref().to_vec();
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        headers.insert("webhook-id", HeaderValue::from_static("msg_1"));
        headers.insert("webhook-timestamp", HeaderValue::from(NOW));
        headers.insert(
            "webhook-signature",
            HeaderValue::from_str(&format!("v1a,{}", b64.encode(&sig))).unwrap(),
        );
        signed = msg;
        tag = sig;
        raw = Raw::Ed25519(raw_key.try_into().unwrap());
    } else {
        let url = twilio.then_some(URL);
        for (n, v) in scheme::sign(&scheme, &key, NOW, "msg_1", url, &body).unwrap() {
            headers.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(&v).unwrap(),
            );
        }
        let mut bytes = Vec::new();
        match preset {
            "stripe" => bytes.extend_from_slice(format!("{NOW}.").as_bytes()),
            "slack" => bytes.extend_from_slice(format!("v0:{NOW}:").as_bytes()),
            "standard-webhooks" => bytes.extend_from_slice(format!("msg_1.{NOW}.").as_bytes()),
            "zendesk" => bytes.extend_from_slice(b"2023-11-14T22:13:20Z"),
            "paddle" => bytes.extend_from_slice(format!("{NOW}:").as_bytes()),
            _ => {}
        }
        if twilio {
            headers.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-www-form-urlencoded"),
            );
            bytes.extend_from_slice(URL.as_bytes());
            for param in body.split(|b| *b == b'&') {
                bytes.extend(param.iter().filter(|b| **b != b'='));
            }
        } else {
            bytes.extend_from_slice(&body);
        }
        raw = if twilio {
            Raw::Sha1(hmac::Hmac::new_from_slice(&raw_key).unwrap())
        } else {
            Raw::Sha256(hmac::Hmac::new_from_slice(&raw_key).unwrap())
        };
        tag = raw_tag(&raw, &bytes);
        signed = bytes;
    }
    let check = SignatureCheck::new(scheme, vec![key], twilio.then(|| URL.to_string()));
    let frames = body.chunks(FRAME).map(Bytes::copy_from_slice).collect();
    Case {
        name: preset.to_string(),
        check,
        headers,
        query: None,
        frames,
        signed,
        raw,
        tag,
    }
}

fn raw_tag(raw: &Raw, bytes: &[u8]) -> Vec<u8> {
    match raw {
        Raw::Sha1(m) => m
            .clone()
            .chain_update(bytes)
            .finalize()
            .into_bytes()
            .to_vec(),
        Raw::Sha256(m) => m
            .clone()
            .chain_update(bytes)
            .finalize()
            .into_bytes()
            .to_vec(),
        Raw::Ed25519(_) => Vec::new(),
    }
}

/// The gateway's path: headers checked and decoded, prepared key cloned,
/// prefix fed, body fed per frame, compared.
fn hookgate_verify(c: &Case) -> bool {
    let Ok(mut v) = c.check.begin(&c.headers, c.query.as_deref(), NOW) else {
        return false;
    };
    for f in &c.frames {
        v.update(f);
    }
    v.finish(&c.frames).is_ok()
}

/// The baseline: one MAC (or ed25519 verify) over the contiguous signed
/// bytes, compared with the expected tag.
fn raw_verify(c: &Case) -> bool {
    match &c.raw {
        Raw::Sha1(m) => m
            .clone()
            .chain_update(&c.signed)
            .verify_slice(&c.tag)
            .is_ok(),
        Raw::Sha256(m) => m
            .clone()
            .chain_update(&c.signed)
            .verify_slice(&c.tag)
            .is_ok(),
        Raw::Ed25519(public) => {
            aws_lc_rs::signature::UnparsedPublicKey::new(&aws_lc_rs::signature::ED25519, public)
                .verify(&c.signed, &c.tag)
                .is_ok()
        }
    }
}

const PRESETS: [&str; 11] = [
    "adsumo",
    "github",
    "stripe",
    "shopify",
    "slack",
    "standard-webhooks",
    "standard-webhooks-v1a",
    "zendesk",
    "paddle",
    "linear",
    "twilio",
];

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("verify");
    for (size, size_name) in [SIZES[0], SIZES[3]] {
        for preset in PRESETS {
            let case = case(preset, size);
            assert!(hookgate_verify(&case) && raw_verify(&case), "{preset}");
            group.throughput(Throughput::Bytes(size as u64));
            group.bench_with_input(
                BenchmarkId::new(format!("{preset}/hookgate"), size_name),
                &case,
                |b, c| b.iter(|| hookgate_verify(black_box(c))),
            );
            group.bench_with_input(
                BenchmarkId::new(format!("{preset}/raw"), size_name),
                &case,
                |b, c| b.iter(|| raw_verify(black_box(c))),
            );
        }
    }
    group.finish();
}

/// aws-lc's one-shot HMAC over one slice (a different SHA-256
/// implementation: hand-written assembly), compared like `raw_verify`.
fn aws_lc_hmac(key: &aws_lc_rs::hmac::Key, c: &Case) -> bool {
    aws_lc_rs::hmac::verify(key, &c.signed, &c.tag).is_ok()
}

fn median_mbps(size: usize, iters: usize, mut v: Vec<Duration>) -> f64 {
    v.sort();
    (size * iters) as f64 / v[v.len() / 2].as_secs_f64() / 1e6
}

/// Interleaved timing of the paths, median of rounds, as ratios.
fn ratios() {
    let sha_ni = std::fs::read_to_string("/proc/cpuinfo")
        .map(|s| s.split_whitespace().any(|w| w == "sha_ni"))
        .unwrap_or(false);
    println!("\nCPU advertises sha_ni: {sha_ni} (sha2 selects its SHA-NI backend at run time when it does)");
    let aws = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, SECRET);
    println!("| body | hookgate adsumo (frames) MB/s | raw HMAC (contiguous) MB/s | time ratio (hookgate / raw) | aws-lc HMAC (contiguous) MB/s |");
    println!("| --- | --- | --- | --- | --- |");
    for (size, name) in SIZES {
        let case = case("adsumo", size);
        let iters = (64 * 1024 * 1024 / size).max(64);
        let (mut ours, mut theirs, mut asm) = (Vec::new(), Vec::new(), Vec::new());
        assert!(aws_lc_hmac(&aws, &case));
        for _ in 0..15 {
            ours.push(time(iters, || hookgate_verify(black_box(&case))));
            theirs.push(time(iters, || raw_verify(black_box(&case))));
            asm.push(time(iters, || aws_lc_hmac(&aws, black_box(&case))));
        }
        let (o, t, a) = (
            median_mbps(size, iters, ours),
            median_mbps(size, iters, theirs),
            median_mbps(size, iters, asm),
        );
        println!("| {name} | {o:.0} | {t:.0} | {:.3} | {a:.0} |", t / o);
    }
    println!("\n| preset | body | hookgate MB/s | raw MB/s | time ratio (hookgate / raw) |");
    println!("| --- | --- | --- | --- | --- |");
    for (size, name) in [SIZES[0], SIZES[3]] {
        for preset in PRESETS {
            let case = case(preset, size);
            let iters = (16 * 1024 * 1024 / size).max(32);
            let (mut ours, mut theirs) = (Vec::new(), Vec::new());
            for _ in 0..9 {
                ours.push(time(iters, || hookgate_verify(black_box(&case))));
                theirs.push(time(iters, || raw_verify(black_box(&case))));
            }
            let (o, t) = (
                median_mbps(size, iters, ours),
                median_mbps(size, iters, theirs),
            );
            println!(
                "| {} | {name} | {o:.0} | {t:.0} | {:.3} |",
                case.name,
                t / o
            );
        }
    }
}

fn time(iters: usize, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        assert!(black_box(f()));
    }
    start.elapsed()
}

/// `--hmac-rate`: microseconds per body for the raw HMAC and for hookgate's
/// verify path (adsumo, 16 KiB frames), interleaved, median of 15 rounds.
fn hmac_rate() {
    for (size, name) in SIZES {
        let case = case("adsumo", size);
        let iters = (16 * 1024 * 1024 / size).max(64);
        let (mut ours, mut raw) = (Vec::new(), Vec::new());
        for _ in 0..15 {
            raw.push(time(iters, || raw_verify(black_box(&case))));
            ours.push(time(iters, || hookgate_verify(black_box(&case))));
        }
        let us = |mut v: Vec<Duration>| {
            v.sort();
            v[v.len() / 2].as_secs_f64() * 1e6 / iters as f64
        };
        let (r, o) = (us(raw), us(ours));
        println!("HMAC_US {name} {size} {r:.3} {o:.3} {:.0}", size as f64 / r);
    }
}

fn main() {
    if std::env::args().any(|a| a == "--hmac-rate") {
        println!("# HMAC_US label bytes raw_hmac_us hookgate_verify_us raw_MB_per_s");
        hmac_rate();
        return;
    }
    let mut c = Criterion::default()
        .configure_from_args()
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    bench(&mut c);
    c.final_summary();
    ratios();
}
