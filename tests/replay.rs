//! Replay defence (SPEC §10) through a real gateway in front of a recording
//! upstream: a delivery reaches the app once per `replay_window`; repeats
//! are answered 200 + `X-Hookgate-Duplicate: true` (recorded) or 409 +
//! `Retry-After: 1` (in flight); a failed first attempt lets the next copy
//! through; invalid requests never touch the store; the store is bounded.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::*;
use hookgate::config::Config;

const BODY: &[u8] = br#"{"event":"generation.completed","generation_id":"550e8400"}"#;

/// `two_routes` with `replay_window = window` on route "a" (SECRET_A,
/// /webhooks/a) and none on "b" (SECRET_B), plus route "c" (SECRET_A too, so
/// the same request is valid on both) with a one-hour window on
/// /webhooks/c; `limits` lines go into `[limits]`.
fn config(upstream: SocketAddr, window: &str, limits: &str) -> String {
    let mut text = two_routes(upstream, &format!("replay_window = \"{window}\""))
        .replace("[limits]\n", &format!("[limits]\n{limits}\n"));
    text.push_str(&format!(
        r#"
[[route]]
name = "c"
path = "/webhooks/c"
upstream = "http://{upstream}"
secret = {{ env = "SECRET_A" }}
replay_window = "1h"
"#
    ));
    text
}

fn signed(path: &str, secret: &str, body: &[u8]) -> Vec<u8> {
    post(path, Some(&sign(secret, body)), body, "")
}

/// A distinct valid delivery for route "a".
fn delivery(n: usize) -> Vec<u8> {
    let body = format!(r#"{{"event":"generation.completed","generation_id":"{n:08}"}}"#);
    signed("/webhooks/a", SECRET_A, body.as_bytes())
}

fn requests_total(text: &str, route: &str, outcome: &str) -> Option<f64> {
    sample(
        text,
        &format!("hookgate_requests_total{{route=\"{route}\",outcome=\"{outcome}\"}}"),
    )
}

/// A repeat after the upstream's 2xx is answered by the gateway (200, the
/// duplicate header, never forwarded); the same request on another route,
/// or on a route without a window, is not a repeat.
#[tokio::test]
async fn repeat_after_2xx_is_answered_200_and_never_forwarded() {
    let up = Upstream::start(Behaviour::Respond).await;
    let gw = Gateway::start(&config(up.addr, "1h", "")).await;
    let a = signed("/webhooks/a", SECRET_A, BODY);

    let (first, _) = raw(gw.addr, &a).await;
    assert_eq!(first.status, 201);
    assert_eq!(first.header("x-hookgate-duplicate"), None);
    assert_eq!(up.count(), 1);

    // Twice more, the second time on the same keep-alive connection: a 200
    // answer keeps the connection usable.
    let (second, mut conn) = raw(gw.addr, &a).await;
    assert_eq!(second.status, 200);
    assert_eq!(second.header("x-hookgate-duplicate"), Some("true"));
    assert_eq!(second.body, b"200 OK\n");
    assert_eq!(second.header("connection"), None);
    tokio::io::AsyncWriteExt::write_all(&mut conn, &a)
        .await
        .unwrap();
    let third = read_response(&mut conn).await;
    assert_eq!(third.status, 200);
    assert_eq!(up.count(), 1, "a repeat reached the upstream");

    // Same bytes, same MAC, another route with a window: its first delivery.
    let c = signed("/webhooks/c", SECRET_A, BODY);
    assert_eq!(raw(gw.addr, &c).await.0.status, 201);
    assert_eq!(raw(gw.addr, &c).await.0.status, 200);
    // A route without replay_window forwards every copy.
    let b = signed("/webhooks/b", SECRET_B, BODY);
    assert_eq!(raw(gw.addr, &b).await.0.status, 201);
    assert_eq!(raw(gw.addr, &b).await.0.status, 201);
    assert_eq!(up.count(), 4);

    let text = settled_metrics(&gw).await;
    assert_eq!(requests_total(&text, "a", "forwarded"), Some(1.0));
    assert_eq!(requests_total(&text, "a", "duplicate"), Some(2.0));
    assert_eq!(requests_total(&text, "c", "duplicate"), Some(1.0));
    assert_eq!(requests_total(&text, "b", "duplicate"), Some(0.0));
    assert_eq!(sample(&text, "hookgate_replay_entries"), Some(2.0));
    gw.stop().await;
}

/// 50 identical valid requests at once: exactly one reaches the upstream;
/// the others are answered 409 + Retry-After while it is in flight, or 200
/// + the duplicate header once it was recorded.
#[tokio::test]
async fn identical_requests_at_once_reach_the_upstream_once() {
    let up = Upstream::start(Behaviour::Delay(Duration::from_millis(300))).await;
    let gw = Gateway::start(&config(up.addr, "1h", "")).await;
    let a = signed("/webhooks/a", SECRET_A, BODY);

    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (addr, req) = (gw.addr, a.clone());
        tasks.push(tokio::spawn(async move { raw(addr, &req).await.0 }));
    }
    let (mut forwarded, mut in_flight, mut duplicate) = (0, 0, 0);
    for t in tasks {
        let resp = t.await.unwrap();
        match resp.status {
            201 => forwarded += 1,
            409 => {
                assert_eq!(resp.header("retry-after"), Some("1"));
                in_flight += 1;
            }
            200 => {
                assert_eq!(resp.header("x-hookgate-duplicate"), Some("true"));
                duplicate += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(forwarded, 1);
    assert_eq!(in_flight + duplicate, 49);
    assert_eq!(up.count(), 1);

    let text = settled_metrics(&gw).await;
    assert_eq!(
        requests_total(&text, "a", "duplicate_in_flight"),
        Some(f64::from(in_flight))
    );
    assert_eq!(
        requests_total(&text, "a", "duplicate"),
        Some(f64::from(duplicate))
    );
    gw.stop().await;
}

/// The first attempt fails at the app (503, relayed on a sync route):
/// nothing is recorded and the retry is forwarded; so is the next after a
/// 404 (any non-2xx is "not accepted"); once one got a 2xx, the next copy
/// is a duplicate.
#[tokio::test]
async fn upstream_503_lets_the_retry_through() {
    let up = Upstream::start(Behaviour::Script(&[503, 404, 201])).await;
    let gw = Gateway::start(&config(up.addr, "1h", "")).await;
    let a = signed("/webhooks/a", SECRET_A, BODY);

    assert_eq!(raw(gw.addr, &a).await.0.status, 503);
    assert_eq!(raw(gw.addr, &a).await.0.status, 404);
    assert_eq!(raw(gw.addr, &a).await.0.status, 201);
    let (dup, _) = raw(gw.addr, &a).await;
    assert_eq!(dup.status, 200);
    assert_eq!(dup.header("x-hookgate-duplicate"), Some("true"));
    assert_eq!(up.count(), 3);
    gw.stop().await;
}

/// The upstream is down (502), then comes back (a reload points the route
/// at a live one): the same delivery is forwarded, not refused as in
/// flight. The store outlives the reload.
#[tokio::test]
async fn upstream_down_lets_the_retry_through() {
    let down = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let gw = Gateway::start(&config(down, "1h", "")).await;
    let a = signed("/webhooks/a", SECRET_A, BODY);
    assert_eq!(raw(gw.addr, &a).await.0.status, 502);

    let up = Upstream::start(Behaviour::Respond).await;
    let reloaded =
        Config::from_toml_str(&config(up.addr, "1h", ""), Path::new("test.toml"), &env()).unwrap();
    gw.proxy.replace_config(reloaded);
    assert_eq!(raw(gw.addr, &a).await.0.status, 201);
    assert_eq!(raw(gw.addr, &a).await.0.status, 200);
    assert_eq!(up.count(), 1);
    gw.stop().await;
}

/// An upstream that never answers (504 at upstream_timeout) is a failed
/// attempt: the in-flight mark is dropped and the next copy is forwarded.
#[tokio::test]
async fn upstream_timeout_lets_the_retry_through() {
    let hang = Upstream::start(Behaviour::Hang).await;
    let cfg = config(hang.addr, "1h", "")
        .replace("upstream_timeout = \"2s\"", "upstream_timeout = \"300ms\"");
    let gw = Gateway::start(&cfg).await;
    let a = signed("/webhooks/a", SECRET_A, BODY);
    assert_eq!(raw(gw.addr, &a).await.0.status, 504);
    assert_eq!(raw(gw.addr, &a).await.0.status, 504);
    assert_eq!(hang.count(), 2);
    let text = settled_metrics(&gw).await;
    assert_eq!(sample(&text, "hookgate_replay_entries"), Some(0.0));
    gw.stop().await;
}

/// The client goes away while its delivery waits for the upstream: the
/// request is cancelled, the in-flight mark with it, and the sender's next
/// copy is forwarded instead of being answered 409 until upstream_timeout.
#[tokio::test]
async fn client_gone_lets_the_retry_through() {
    let hang = Upstream::start(Behaviour::Hang).await;
    let cfg = config(hang.addr, "1h", "")
        .replace("upstream_timeout = \"2s\"", "upstream_timeout = \"30s\"");
    let gw = Gateway::start(&cfg).await;
    let a = signed("/webhooks/a", SECRET_A, BODY);

    let mut first = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut first, &a)
        .await
        .unwrap();
    // Wait (bounded) until the upstream holds the first copy.
    for _ in 0..200 {
        if hang.count() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(hang.count(), 1);
    drop(first);
    // The gateway notices the close asynchronously: send copies until one
    // is forwarded (it must not stay 409 for the 30 s timeout).
    let mut statuses = Vec::new();
    'copies: for _ in 0..50 {
        let mut conn = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut conn, &a)
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            match try_read_response(&mut conn, Duration::from_millis(100)).await {
                Ok(resp) => {
                    statuses.push(resp.status);
                    break;
                }
                // No answer: the upstream holds this copy.
                Err(_) if hang.count() == 2 => break 'copies,
                Err(e) => assert!(tokio::time::Instant::now() < deadline, "{e}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(statuses.iter().all(|s| *s == 409), "{statuses:?}");
    assert_eq!(hang.count(), 2, "after {statuses:?}");
    gw.stop().await;
}

/// 100,000 requests with a wrong signature (keep-alive, pipelined) leave the
/// store as it was: nothing added, nothing evicted, the recorded deliveries
/// still refused as duplicates.
#[tokio::test]
async fn invalid_signatures_never_enter_the_store() {
    let up = Upstream::start(Behaviour::Respond).await;
    let gw = Gateway::start(&config(up.addr, "1h", "replay_max_entries = 5")).await;
    for n in 0..3 {
        assert_eq!(raw(gw.addr, &delivery(n)).await.0.status, 201);
    }
    let before = settled_metrics(&gw).await;
    assert_eq!(sample(&before, "hookgate_replay_entries"), Some(3.0));

    // Right length, right format, wrong MAC: only the comparison refuses it.
    let bad_sig = sign(SECRET_B, BODY);
    let bad = post("/webhooks/a", Some(&bad_sig), BODY, "");
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (addr, req) = (gw.addr, bad.clone());
        tasks.push(tokio::spawn(async move {
            pipelined_statuses(addr, &req, 25_000).await
        }));
    }
    for t in tasks {
        let counts = t.await.unwrap();
        assert_eq!(counts.get(&401), Some(&25_000), "{counts:?}");
    }

    let after = settled_metrics(&gw).await;
    assert_eq!(
        requests_total(&after, "a", "signature_invalid"),
        Some(100_000.0)
    );
    assert_eq!(sample(&after, "hookgate_replay_entries"), Some(3.0));
    assert_eq!(sample(&after, "hookgate_replay_evictions_total"), Some(0.0));
    for n in 0..3 {
        assert_eq!(raw(gw.addr, &delivery(n)).await.0.status, 200);
    }
    assert_eq!(up.count(), 3);
    gw.stop().await;
}

/// More distinct deliveries than `replay_max_entries`: the store stays at
/// the bound, every eviction is counted, and the oldest go first (an
/// evicted delivery is forwarded again, a recent one is still refused).
#[tokio::test]
async fn store_is_bounded_and_evicts_the_oldest() {
    let up = Upstream::start(Behaviour::Respond).await;
    let gw = Gateway::start(&config(up.addr, "1h", "replay_max_entries = 10")).await;
    for n in 0..25 {
        assert_eq!(raw(gw.addr, &delivery(n)).await.0.status, 201);
    }
    let text = settled_metrics(&gw).await;
    assert_eq!(sample(&text, "hookgate_replay_entries"), Some(10.0));
    assert_eq!(sample(&text, "hookgate_replay_evictions_total"), Some(15.0));

    assert_eq!(raw(gw.addr, &delivery(24)).await.0.status, 200);
    assert_eq!(raw(gw.addr, &delivery(15)).await.0.status, 200);
    assert_eq!(raw(gw.addr, &delivery(14)).await.0.status, 201);
    assert_eq!(raw(gw.addr, &delivery(0)).await.0.status, 201);
    assert_eq!(up.count(), 27);
    gw.stop().await;
}

/// An entry older than the window no longer counts: the copy goes through
/// (and is recorded again).
#[tokio::test]
async fn entry_older_than_the_window_lets_the_copy_through() {
    let up = Upstream::start(Behaviour::Respond).await;
    let gw = Gateway::start(&config(up.addr, "1s", "")).await;
    let a = signed("/webhooks/a", SECRET_A, BODY);
    assert_eq!(raw(gw.addr, &a).await.0.status, 201);
    assert_eq!(raw(gw.addr, &a).await.0.status, 200);
    // The window is the only input here: wait it out.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(raw(gw.addr, &a).await.0.status, 201);
    assert_eq!(raw(gw.addr, &a).await.0.status, 200);
    assert_eq!(up.count(), 2);
    gw.stop().await;
}

/// The binary itself: `hookgate run` with a replay route answers a repeat
/// 200 with the header, and the access log names the outcome.
#[tokio::test]
async fn binary_answers_repeats_and_logs_the_outcome() {
    let up = Upstream::start(Behaviour::Respond).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hookgate.toml");
    let text = config(up.addr, "1h", "")
        .replace("[limits]", "[admin]\nlisten = \"127.0.0.1:0\"\n\n[limits]");
    std::fs::write(&path, text).unwrap();
    let mut run = spawn_run(&path, &[("SECRET_A", SECRET_A), ("SECRET_B", SECRET_B)]);
    let a = signed("/webhooks/a", SECRET_A, BODY);
    assert_eq!(raw(run.addr, &a).await.0.status, 201);
    let (dup, _) = raw(run.addr, &a).await;
    assert_eq!(dup.status, 200);
    assert_eq!(dup.header("x-hookgate-duplicate"), Some("true"));
    assert_eq!(up.count(), 1);

    let pid = run.child.id().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let status = run.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let mut lines = run.seen.clone();
    lines.extend(run.lines.by_ref().map_while(Result::ok));
    let outcomes: Vec<String> = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "hookgate::access")
        .map(|v| format!("{} {}", v["status"], v["outcome"].as_str().unwrap_or("?")))
        .collect();
    assert_eq!(outcomes, ["201 forwarded", "200 duplicate"], "{lines:#?}");
}

/// `[spool]` keeps the replay store in the spool's SQLite file: after a
/// restart of the binary a repeat inside the window is still answered 200 +
/// the header and not forwarded (sync route and `always` route alike), and
/// an entry whose window passed lets the copy through.
#[tokio::test]
async fn spool_database_keeps_records_across_a_restart() {
    let up = Upstream::start(Behaviour::Respond).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hookgate.toml");
    let db = dir.path().join("spool.db");
    let route = |name: &str, delivery: &str, window: &str| {
        format!(
            "[[route]]\nname = \"{name}\"\npath = \"/webhooks/{name}\"\nupstream = \"http://{}\"\nsecret = {{ env = \"SECRET_A\" }}\ndelivery = \"{delivery}\"\nreplay_window = \"{window}\"\n",
            up.addr
        )
    };
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nshutdown_timeout = \"2s\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[spool]\npath = \"{}\"\n{}{}{}",
        db.display(),
        route("a", "sync", "1h"),
        route("q", "always", "1h"),
        route("s", "sync", "1s"),
    );
    std::fs::write(&path, text).unwrap();
    let env = [("SECRET_A", SECRET_A)];
    let a = signed("/webhooks/a", SECRET_A, BODY);
    let q = signed("/webhooks/q", SECRET_A, BODY);
    let s = signed("/webhooks/s", SECRET_A, BODY);
    let stop = |mut run: Running| {
        let pid = run.child.id().to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        let status = run.child.wait().unwrap();
        assert!(status.success(), "{status:?}");
    };
    let forwards_reach = |n: usize| {
        let up = &up;
        async move {
            // The `always` route delivers from the spool in the background.
            for _ in 0..200 {
                if up.count() >= n {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            assert_eq!(up.count(), n);
        }
    };

    let run = spawn_run(&path, &env);
    assert_eq!(raw(run.addr, &a).await.0.status, 201);
    assert_eq!(raw(run.addr, &q).await.0.status, 202);
    let s_recorded = std::time::Instant::now();
    assert_eq!(raw(run.addr, &s).await.0.status, 201);
    // Before the restart too: repeats never reach the upstream (a copy
    // arriving before the record's group commit landed is answered 409).
    for req in [&a, &q] {
        let repeat = raw(run.addr, req).await.0.status;
        assert!(repeat == 200 || repeat == 409, "{repeat}");
    }
    forwards_reach(3).await;
    stop(run);

    let run = spawn_run(&path, &env);
    for req in [&a, &q] {
        let (dup, _) = raw(run.addr, req).await;
        assert_eq!(dup.status, 200);
        assert_eq!(dup.header("x-hookgate-duplicate"), Some("true"));
    }
    // s's one-second window is the only input here: wait it out.
    let passed = s_recorded.elapsed();
    if passed < Duration::from_millis(1100) {
        tokio::time::sleep(Duration::from_millis(1100) - passed).await;
    }
    assert_eq!(raw(run.addr, &s).await.0.status, 201);
    assert_eq!(raw(run.addr, &s).await.0.status, 200);
    let text = metrics_at(run.admin).await;
    assert_eq!(requests_total(&text, "a", "duplicate"), Some(1.0));
    assert_eq!(requests_total(&text, "q", "duplicate"), Some(1.0));
    forwards_reach(4).await;
    stop(run);
}
