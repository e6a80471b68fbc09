//! Prometheus metrics on the admin listener (SPEC §6): exact values after a
//! known mix of requests, one series per route × outcome, and an exposition
//! that promtool accepts.

mod common;

use std::net::SocketAddr;

use common::*;

const BODY: &[u8] = br#"{"event":"generation.completed","generation_id":"m"}"#;
const ROUTES: [&str; 3] = ["a", "b", "c"];
const OUTCOMES: [&str; 15] = [
    "forwarded",
    "signature_missing",
    "signature_invalid",
    "body_too_large",
    "method_not_allowed",
    "timeout",
    "upstream_error",
    "upstream_timeout",
    "spooled",
    "queued",
    "spool_full",
    "spool_error",
    "bad_request",
    "duplicate",
    "duplicate_in_flight",
];

fn config(good: SocketAddr, closed: SocketAddr, hang: SocketAddr) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
[limits]
max_body_bytes = 1024
request_timeout = "300ms"
upstream_timeout = "300ms"
[[route]]
name = "a"
path = "/a"
upstream = "http://{good}"
secret = {{ env = "SECRET_A" }}
[[route]]
name = "b"
path = "/b"
upstream = "http://{closed}"
secret = {{ env = "SECRET_A" }}
[[route]]
name = "c"
path = "/c"
upstream = "http://{hang}"
secret = {{ env = "SECRET_A" }}
"#
    )
}

async fn status_of(addr: SocketAddr, request: &[u8]) -> u16 {
    raw(addr, request).await.0.status
}

/// After a known mix of requests on three routes, every counter,
/// histogram count and gauge has exactly the expected value, and every
/// route × outcome pair is its own series.
#[tokio::test]
async fn counters_match_a_known_mix_of_requests() {
    let good = Upstream::start(Behaviour::Respond).await;
    let hang = Upstream::start(Behaviour::Hang).await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let gw = Gateway::start(&config(good.addr, closed, hang.addr)).await;
    let sig = sign(SECRET_A, BODY);
    let a = gw.addr;

    assert_eq!(status_of(a, &post("/a", Some(&sig), BODY, "")).await, 201);
    assert_eq!(status_of(a, &post("/a", Some(&sig), BODY, "")).await, 201);
    assert_eq!(status_of(a, &post("/a", None, BODY, "")).await, 401);
    assert_eq!(
        status_of(a, &post("/a", Some(&sign(SECRET_B, BODY)), BODY, "")).await,
        401
    );
    assert_eq!(status_of(a, &post("/a", Some("zz"), BODY, "")).await, 401);
    let dup = format!("X-Adsumo-Signature: {sig}\r\n");
    assert_eq!(status_of(a, &post("/a", Some(&sig), BODY, &dup)).await, 401);
    assert_eq!(
        status_of(a, &post("/a", Some(&sig), &[b'x'; 2000], "")).await,
        413
    );
    assert_eq!(
        status_of(a, b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n").await,
        405
    );
    let stalled = format!(
        "POST /a HTTP/1.1\r\nHost: h\r\nX-Adsumo-Signature: {sig}\r\nContent-Length: 10\r\n\r\nabc"
    );
    assert_eq!(status_of(a, stalled.as_bytes()).await, 408);
    let no_host =
        format!("POST /a HTTP/1.1\r\nX-Adsumo-Signature: {sig}\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(status_of(a, no_host.as_bytes()).await, 400);
    assert_eq!(
        status_of(a, &post("/nope", Some(&sig), BODY, "")).await,
        404
    );
    assert_eq!(status_of(a, &post("/a/", Some(&sig), BODY, "")).await, 404);
    assert_eq!(status_of(a, &post("/b", Some(&sig), BODY, "")).await, 502);
    assert_eq!(status_of(a, &post("/c", Some(&sig), BODY, "")).await, 504);

    let text = settled_metrics(&gw).await;
    let want: &[(&str, &str, f64)] = &[
        ("a", "forwarded", 2.0),
        ("a", "signature_missing", 1.0),
        ("a", "signature_invalid", 3.0),
        ("a", "body_too_large", 1.0),
        ("a", "method_not_allowed", 1.0),
        ("a", "timeout", 1.0),
        ("a", "bad_request", 1.0),
        ("b", "upstream_error", 1.0),
        ("c", "upstream_timeout", 1.0),
    ];
    // Every route × outcome is exactly one series; unlisted pairs are 0.
    for route in ROUTES {
        for outcome in OUTCOMES {
            let series =
                format!("hookgate_requests_total{{route=\"{route}\",outcome=\"{outcome}\"}}");
            let lines = text
                .lines()
                .filter(|l| l.starts_with(&format!("{series} ")))
                .count();
            assert_eq!(lines, 1, "{series} appears {lines} times");
            let expected = want
                .iter()
                .find(|(r, o, _)| *r == route && *o == outcome)
                .map_or(0.0, |w| w.2);
            assert_eq!(sample(&text, &series), Some(expected), "{series}");
        }
    }
    let checks: &[(&str, f64)] = &[
        ("hookgate_unmatched_requests_total", 2.0),
        ("hookgate_requests_in_flight", 0.0),
        ("hookgate_request_duration_seconds_count{route=\"a\"}", 10.0),
        ("hookgate_request_duration_seconds_count{route=\"b\"}", 1.0),
        ("hookgate_request_duration_seconds_count{route=\"c\"}", 1.0),
        ("hookgate_upstream_duration_seconds_count{route=\"a\"}", 2.0),
        ("hookgate_upstream_duration_seconds_count{route=\"b\"}", 0.0),
        ("hookgate_upstream_duration_seconds_count{route=\"c\"}", 0.0),
        (
            "hookgate_upstream_responses_total{route=\"a\",code=\"2xx\"}",
            2.0,
        ),
        (
            "hookgate_upstream_responses_total{route=\"a\",code=\"5xx\"}",
            0.0,
        ),
        // Bodies read: two forwarded and the one with the wrong MAC.
        ("hookgate_request_body_bytes_count{route=\"a\"}", 3.0),
        (
            "hookgate_request_body_bytes_sum{route=\"a\"}",
            3.0 * BODY.len() as f64,
        ),
        ("hookgate_request_body_bytes_count{route=\"b\"}", 1.0),
        ("hookgate_tls_handshake_errors_total", 0.0),
        ("hookgate_connections_rejected_total", 0.0),
        // No route has replay_window: the store stays empty.
        ("hookgate_replay_entries", 0.0),
        ("hookgate_replay_evictions_total", 0.0),
        ("hookgate_config_reloads_total{result=\"success\"}", 1.0),
        ("hookgate_config_reloads_total{result=\"failure\"}", 0.0),
        (
            &format!(
                "hookgate_build_info{{version=\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            ),
            1.0,
        ),
    ];
    for (series, value) in checks {
        assert_eq!(sample(&text, series), Some(*value), "{series}\n{text}");
    }
    let ts = sample(
        &text,
        "hookgate_config_last_reload_success_timestamp_seconds",
    )
    .unwrap();
    assert!(ts > 1.7e9, "timestamp {ts}");
    assert_eq!(good.count(), 2);
    gw.stop().await;
}

/// `/healthz`, `/readyz` answer on the admin listener; `/metrics` is never
/// served by the data-plane listener.
#[tokio::test]
async fn admin_endpoints_and_data_plane_separation() {
    let good = Upstream::start(Behaviour::Respond).await;
    let gw = Gateway::start(&two_routes(good.addr, "")).await;
    for (path, status) in [("/healthz", 200), ("/readyz", 200), ("/other", 404)] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        assert_eq!(status_of(gw.admin, req.as_bytes()).await, status, "{path}");
    }
    let req = b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n";
    assert_eq!(status_of(gw.addr, req).await, 404);
    assert_eq!(good.count(), 0);
    gw.stop().await;
}

/// The exposition, with ten routes and traffic on them, passes
/// `promtool check metrics` (lint included). Prints the page size.
#[tokio::test]
async fn exposition_passes_promtool() {
    let Some(promtool) = prometheus_tool("PROMTOOL", "promtool") else {
        assert!(
            std::env::var("CI").is_err(),
            "promtool is required when CI=true (.ci/run installs it)"
        );
        eprintln!("skipping: promtool not found (set PROMTOOL or run .ci/run)");
        return;
    };
    let good = Upstream::start(Behaviour::Respond).await;
    // With a spool, so its series (SPEC §8) are linted too.
    let dir = tempfile::tempdir().unwrap();
    let mut config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[spool]\npath = \"{}\"\n",
        dir.path().join("spool.db").display()
    );
    for i in 0..10 {
        config.push_str(&format!(
            "[[route]]\nname = \"route-{i}\"\npath = \"/r{i}\"\nupstream = \"http://{}\"\nsecret = {{ env = \"SECRET_A\" }}\n",
            good.addr
        ));
    }
    let gw = Gateway::start(&config).await;
    let sig = sign(SECRET_A, BODY);
    for i in 0..10 {
        assert_eq!(
            status_of(gw.addr, &post(&format!("/r{i}"), Some(&sig), BODY, "")).await,
            201
        );
    }
    let text = settled_metrics(&gw).await;
    eprintln!(
        "/metrics with 10 routes: {} bytes, {} lines",
        text.len(),
        text.lines().count()
    );
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    gw.stop().await;
}
