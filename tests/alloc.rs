//! Allocation proof for the zero-copy hot path (SPEC §1): requests go
//! through the full in-process path (listener → verify → forward to a
//! loopback upstream → response) under a counting global allocator.
//!
//! The client and the upstream run in the same process, so the same
//! workload is also sent straight to the upstream, in the same run; the
//! gateway's share is the difference. Bytes allocated per forwarded request
//! must stay within the body size plus a fixed overhead: a second copy of
//! the body would show as twice the body size.
//!
//! `cargo test --release --test alloc -- --nocapture` prints the figures.

mod common;

use std::net::SocketAddr;

use common::*;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

/// Fixed per-request overhead allowed on top of the body: hyper's read and
/// write buffers (the kept body frames pin their read buffers, so hyper
/// allocates fresh ones of up to `MAX_READ_BUF` = 128 KiB; slack at their
/// ends), header maps, the upstream request. Measured 16 KiB (1 KiB bodies)
/// and 133 KiB (1 MiB bodies, release); a second copy of a 1 MiB body would
/// add 1024 KiB.
const OVERHEAD_LIMIT: usize = 256 * 1024;

/// An upstream that allocates nothing per request: it parses the head in a
/// fixed buffer, discards the body, answers 200.
async fn discard_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 * 1024];
                let mut filled = 0;
                loop {
                    // Read until one full request (head + Content-Length body) is in.
                    let (head, len) = loop {
                        let mut hs = [httparse::EMPTY_HEADER; 64];
                        let mut req = httparse::Request::new(&mut hs);
                        if let Ok(httparse::Status::Complete(n)) = req.parse(&buf[..filled]) {
                            let len = req
                                .headers
                                .iter()
                                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                                .and_then(|h| {
                                    std::str::from_utf8(h.value).ok()?.parse::<usize>().ok()
                                })
                                .unwrap_or(0);
                            break (n, len);
                        }
                        match s.read(&mut buf[filled..]).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => filled += n,
                        }
                    };
                    let mut remaining = (head + len).saturating_sub(filled);
                    let mut leftover = filled.saturating_sub(head + len);
                    while remaining > 0 {
                        match s.read(&mut buf[..remaining.min(256 * 1024)]).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                leftover = n.saturating_sub(remaining);
                                remaining = remaining.saturating_sub(n);
                            }
                        }
                    }
                    // This simple upstream expects one request at a time.
                    filled = 0;
                    let _ = leftover;
                    if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Sends `n` copies of `request` on one keep-alive connection, reading each
/// response into a fixed buffer.
async fn drive(addr: SocketAddr, request: &[u8], n: usize) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 4096];
    for _ in 0..n {
        s.write_all(request).await.unwrap();
        let mut filled = 0;
        loop {
            let got = s.read(&mut buf[filled..]).await.unwrap();
            assert!(got > 0, "connection closed");
            filled += got;
            let text = &buf[..filled];
            if let Some(end) = text.windows(4).position(|w| w == b"\r\n\r\n") {
                assert!(
                    text.starts_with(b"HTTP/1.1 200"),
                    "{:?}",
                    String::from_utf8_lossy(text)
                );
                // Every response here has a 2-byte body.
                if filled >= end + 4 + 2 {
                    break;
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct PerRequest {
    allocations: f64,
    bytes: f64,
}

async fn measure(addr: SocketAddr, request: &[u8], n: usize) -> PerRequest {
    drive(addr, request, 20).await; // warm-up: pools, buffers, connections
    let region = Region::new(GLOBAL);
    drive(addr, request, n).await;
    let c = region.change();
    let bytes = c.bytes_allocated as f64 + c.bytes_reallocated.max(0) as f64;
    PerRequest {
        allocations: c.allocations as f64 / n as f64,
        bytes: bytes / n as f64,
    }
}

/// Per forwarded request, the gateway allocates at most the body size plus
/// a fixed overhead, for 1 KiB and 1 MiB bodies.
#[tokio::test(flavor = "current_thread")]
async fn gateway_allocates_at_most_one_body_per_request() {
    let upstream = discard_upstream().await;
    let config = two_routes(upstream, "max_body_bytes = 2097152");
    let gw = Gateway::start(&config).await;
    println!("| body | allocations/req (gateway) | bytes/req (gateway) | bytes/req − body | direct-to-upstream bytes/req |");
    println!("| --- | --- | --- | --- | --- |");
    for size in [1024usize, 1024 * 1024] {
        let body: Vec<u8> = (0..size).map(|i| (i % 253) as u8).collect();
        let req = post("/webhooks/a", Some(&sign(SECRET_A, &body)), &body, "");
        let n = if size > 64 * 1024 { 20 } else { 500 };
        let direct = measure(upstream, &req, n).await;
        let through = measure(gw.addr, &req, n).await;
        let allocations = through.allocations - direct.allocations;
        let bytes = through.bytes - direct.bytes;
        println!(
            "| {} KiB | {allocations:.1} | {bytes:.0} | {:.0} | {:.0} |",
            size / 1024,
            bytes - size as f64,
            direct.bytes
        );
        assert!(
            bytes <= (size + OVERHEAD_LIMIT) as f64,
            "{size}-byte body: {bytes:.0} bytes allocated per request exceeds body + {OVERHEAD_LIMIT}"
        );
    }
    gw.stop().await;
}
