//! Signature verification throughput: the crate's real verify path (the
//! route's prepared key cloned, the body fed frame by frame in 16 KiB
//! frames, header value decoded, constant-time compare) next to raw
//! `Hmac<Sha256>` over the same bytes as one contiguous slice, in the same
//! run. After criterion's report it prints the ratio per body size, and
//! aws-lc's assembly HMAC-SHA256 over the same contiguous bytes: the
//! hardware's ceiling (SHA-NI), which no proxy verifying HMAC-SHA256 on this
//! CPU can beat.
//!
//! `cargo bench --bench verify`

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput};
use hmac::{KeyInit, Mac};
use hookgate::verify::{parse_signature, Key};

const SECRET: &[u8] = b"whsec-bench-0123456789abcdef0123";
const FRAME: usize = 16 * 1024;
const SIZES: [(usize, &str); 4] = [
    (1024, "1KiB"),
    (16 * 1024, "16KiB"),
    (256 * 1024, "256KiB"),
    (1024 * 1024, "1MiB"),
];

struct Case {
    frames: Vec<Bytes>,
    contiguous: Vec<u8>,
    header: String,
}

fn case(size: usize) -> Case {
    let contiguous: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
    let frames = contiguous
        .chunks(FRAME)
        .map(Bytes::copy_from_slice)
        .collect();
    let header = hex::encode(Key::new(SECRET).sign(&contiguous));
    Case {
        frames,
        contiguous,
        header,
    }
}

/// The gateway's path: parse the header, clone the prepared key, update per
/// frame, compare.
fn hookgate_verify(key: &Key, case: &Case) -> bool {
    let Ok(sig) = parse_signature(case.header.as_bytes()) else {
        return false;
    };
    let mut v = key.verifier();
    for frame in &case.frames {
        v.update(frame);
    }
    v.finish(&sig).is_ok()
}

/// The baseline: a prepared HMAC cloned, one update over one slice.
fn raw_hmac(mac: &hmac::Hmac<sha2::Sha256>, case: &Case) -> bool {
    let mut m = mac.clone();
    m.update(&case.contiguous);
    let expected = hex::decode(&case.header).unwrap_or_default();
    m.verify_slice(&expected).is_ok()
}

fn bench(c: &mut Criterion) {
    let key = Key::new(SECRET);
    let raw = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET).unwrap();
    let mut group = c.benchmark_group("verify");
    for (size, name) in SIZES {
        let case = case(size);
        assert!(hookgate_verify(&key, &case) && raw_hmac(&raw, &case));
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("hookgate_frames", name), &case, |b, c| {
            b.iter(|| hookgate_verify(&key, black_box(c)))
        });
        group.bench_with_input(
            BenchmarkId::new("raw_hmac_contiguous", name),
            &case,
            |b, c| b.iter(|| raw_hmac(&raw, black_box(c))),
        );
    }
    group.finish();
}

/// aws-lc's one-shot HMAC over one slice (a different SHA-256
/// implementation: hand-written assembly), compared like `raw_hmac`.
fn aws_lc_hmac(key: &aws_lc_rs::hmac::Key, case: &Case) -> bool {
    let expected = hex::decode(&case.header).unwrap_or_default();
    aws_lc_rs::hmac::verify(key, &case.contiguous, &expected).is_ok()
}

/// Interleaved timing of the paths, median of rounds, as a ratio.
fn ratios() {
    let key = Key::new(SECRET);
    let raw = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET).unwrap();
    let sha_ni = std::fs::read_to_string("/proc/cpuinfo")
        .map(|s| s.split_whitespace().any(|w| w == "sha_ni"))
        .unwrap_or(false);
    println!("\nCPU advertises sha_ni: {sha_ni} (sha2 selects its SHA-NI backend at run time when it does)");
    let aws = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, SECRET);
    println!("| body | hookgate (frames) MB/s | raw HMAC (contiguous) MB/s | ratio | aws-lc HMAC (contiguous) MB/s |");
    println!("| --- | --- | --- | --- | --- |");
    for (size, name) in SIZES {
        let case = case(size);
        let iters = (64 * 1024 * 1024 / size).max(64);
        let mut ours = Vec::new();
        let mut theirs = Vec::new();
        let mut asm = Vec::new();
        assert!(aws_lc_hmac(&aws, &case));
        for _ in 0..15 {
            ours.push(time(iters, || hookgate_verify(&key, black_box(&case))));
            theirs.push(time(iters, || raw_hmac(&raw, black_box(&case))));
            asm.push(time(iters, || aws_lc_hmac(&aws, black_box(&case))));
        }
        let mbps = |mut v: Vec<Duration>| {
            v.sort();
            (size * iters) as f64 / v[v.len() / 2].as_secs_f64() / 1e6
        };
        let (o, t, a) = (mbps(ours), mbps(theirs), mbps(asm));
        println!("| {name} | {o:.0} | {t:.0} | {:.3} | {a:.0} |", o / t);
    }
}

fn time(iters: usize, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        assert!(black_box(f()));
    }
    start.elapsed()
}

fn main() {
    let mut c = Criterion::default()
        .configure_from_args()
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    bench(&mut c);
    c.final_summary();
    ratios();
}
