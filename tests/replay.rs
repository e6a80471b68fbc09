//! Replay defence (SPEC §10) through the real `hookgate run` binary in front
//! of a recording upstream: a delivery reaches the app once per
//! `replay_window`; repeats are answered 200 + `X-Hookgate-Duplicate: true`
//! (recorded) or 409 + `Retry-After: 1` (in flight); a failed first attempt
//! lets the next copy through; invalid requests never touch the store; the
//! memory store is bounded; with `[spool]` the records survive a restart.
//!
//! The behaviour tests run once per store (a matrix, not copies): `memory`
//! (no `[spool]`) and `sqlite` (the store in the spool file, routes
//! `delivery = "sync"` so a failed attempt is relayed, not spooled).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;

const BODY: &[u8] = br#"{"event":"generation.completed","generation_id":"550e8400"}"#;

/// Where a test's replay store lives.
enum Store {
    /// No `[spool]`: the bounded in-memory store.
    Memory,
    /// `[spool]` with its SQLite file in this directory.
    Sqlite(tempfile::TempDir),
}

impl Store {
    fn sqlite() -> Store {
        Store::Sqlite(tempfile::tempdir().unwrap())
    }

    /// `two_routes` with `replay_window = window` on route "a" (SECRET_A,
    /// /webhooks/a) and none on "b" (SECRET_B), plus route "c" (SECRET_A
    /// too, so the same request is valid on both) with a one-hour window on
    /// /webhooks/c; `limits` lines go into `[limits]`.
    fn config(&self, upstream: SocketAddr, window: &str, limits: &str) -> String {
        let sync = match self {
            Store::Memory => "",
            Store::Sqlite(_) => "delivery = \"sync\"\n",
        };
        let mut text = two_routes(upstream, &format!("replay_window = \"{window}\"\n{sync}"))
            .replace("[limits]\n", &format!("[limits]\n{limits}\n"));
        text.push_str(&format!(
            r#"
[[route]]
name = "c"
path = "/webhooks/c"
upstream = "http://{upstream}"
secret = {{ env = "SECRET_A" }}
replay_window = "1h"
{sync}
"#
        ));
        if let Store::Sqlite(dir) = self {
            text.push_str(&format!(
                "\n[spool]\npath = \"{}\"\n",
                dir.path().join("spool.db").display()
            ));
        }
        text
    }
}

/// Runs an `async fn(Store)` test once per store.
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn memory() {
                super::$name(super::Store::Memory).await
            }
            #[tokio::test]
            async fn sqlite() {
                super::$name(super::Store::sqlite()).await
            }
        }
    )*};
}

on_both_stores!(
    repeat_after_2xx_is_answered_200_and_never_forwarded,
    identical_requests_at_once_reach_the_upstream_once,
    upstream_503_lets_the_retry_through,
    upstream_down_lets_the_retry_through,
    upstream_timeout_lets_the_retry_through,
    client_gone_lets_the_retry_through,
    entry_older_than_the_window_lets_the_copy_through,
);

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

/// "status outcome" of every access-log line so far.
fn access_outcomes(gw: &BinaryGateway) -> Vec<String> {
    gw.lines
        .lock()
        .unwrap()
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "hookgate::access")
        .map(|v| {
            format!(
                "{} {} {}",
                v["route"].as_str().unwrap_or("?"),
                v["status"],
                v["outcome"].as_str().unwrap_or("?")
            )
        })
        .collect()
}

/// Polls (bounded) until the upstream has received `n` requests.
async fn upstream_reaches(up: &Upstream, n: usize) {
    for _ in 0..400 {
        if up.count() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(up.count(), n);
}

/// A repeat after the upstream's 2xx is answered by the gateway (200, the
/// duplicate header, never forwarded); the same request on another route,
/// or on a route without a window, is not a repeat. The access log names
/// the outcome.
async fn repeat_after_2xx_is_answered_200_and_never_forwarded(store: Store) {
    let up = Upstream::start(Behaviour::Respond).await;
    let gw = BinaryGateway::start(&store.config(up.addr, "1h", ""));
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

    let text = gw.settled_metrics().await;
    assert_eq!(requests_total(&text, "a", "forwarded"), Some(1.0));
    assert_eq!(requests_total(&text, "a", "duplicate"), Some(2.0));
    assert_eq!(requests_total(&text, "c", "duplicate"), Some(1.0));
    assert_eq!(requests_total(&text, "b", "duplicate"), Some(0.0));
    assert_eq!(sample(&text, "hookgate_replay_entries"), Some(2.0));
    gw.wait_lines(7, |l| l.contains("hookgate::access")).await;
    assert_eq!(
        access_outcomes(&gw),
        [
            "a 201 forwarded",
            "a 200 duplicate",
            "a 200 duplicate",
            "c 201 forwarded",
            "c 200 duplicate",
            "b 201 forwarded",
            "b 201 forwarded"
        ]
    );
    gw.stop().await;
}

/// 50 identical valid requests at once: exactly one reaches the upstream;
/// the others are answered 409 + Retry-After while it is in flight, or 200
/// + the duplicate header once it was recorded.
async fn identical_requests_at_once_reach_the_upstream_once(store: Store) {
    let up = Upstream::start(Behaviour::Delay(Duration::from_millis(300))).await;
    let gw = BinaryGateway::start(&store.config(up.addr, "1h", ""));
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

    let text = gw.settled_metrics().await;
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
async fn upstream_503_lets_the_retry_through(store: Store) {
    let up = Upstream::start(Behaviour::Script(&[503, 404, 201])).await;
    let gw = BinaryGateway::start(&store.config(up.addr, "1h", ""));
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

/// The upstream is down (502), then comes back (the config file points the
/// route at a live one, SIGHUP): the same delivery is forwarded, not
/// refused as in flight. The store outlives the reload.
async fn upstream_down_lets_the_retry_through(store: Store) {
    let down = closed_port().await;
    let gw = BinaryGateway::start(&store.config(down, "1h", ""));
    let a = signed("/webhooks/a", SECRET_A, BODY);
    assert_eq!(raw(gw.addr, &a).await.0.status, 502);

    let up = Upstream::start(Behaviour::Respond).await;
    assert!(gw.reload(&store.config(up.addr, "1h", "")).await);
    assert_eq!(raw(gw.addr, &a).await.0.status, 201);
    assert_eq!(raw(gw.addr, &a).await.0.status, 200);
    assert_eq!(up.count(), 1);
    // Another reload: what was recorded stays recorded, and so does the
    // gauge that counts it.
    assert!(gw.reload(&store.config(up.addr, "1h", "")).await);
    assert_eq!(raw(gw.addr, &a).await.0.status, 200);
    assert_eq!(up.count(), 1);
    let text = gw.settled_metrics().await;
    assert_eq!(sample(&text, "hookgate_replay_entries"), Some(1.0));
    gw.stop().await;
}

/// An upstream that never answers (504 at upstream_timeout) is a failed
/// attempt: the in-flight mark is dropped and the next copy is forwarded.
async fn upstream_timeout_lets_the_retry_through(store: Store) {
    let hang = Upstream::start(Behaviour::Hang).await;
    let cfg = store
        .config(hang.addr, "1h", "")
        .replace("upstream_timeout = \"2s\"", "upstream_timeout = \"300ms\"");
    let gw = BinaryGateway::start(&cfg);
    let a = signed("/webhooks/a", SECRET_A, BODY);
    assert_eq!(raw(gw.addr, &a).await.0.status, 504);
    assert_eq!(raw(gw.addr, &a).await.0.status, 504);
    assert_eq!(hang.count(), 2);
    let text = gw.settled_metrics().await;
    assert_eq!(sample(&text, "hookgate_replay_entries"), Some(0.0));
    gw.stop().await;
}

/// The client goes away while its delivery waits for the upstream: the
/// request is cancelled, the in-flight mark with it, and the sender's next
/// copy is forwarded instead of being answered 409 until upstream_timeout.
async fn client_gone_lets_the_retry_through(store: Store) {
    let hang = Upstream::start(Behaviour::Hang).await;
    let cfg = store
        .config(hang.addr, "1h", "")
        .replace("upstream_timeout = \"2s\"", "upstream_timeout = \"30s\"");
    let gw = BinaryGateway::start(&cfg);
    let a = signed("/webhooks/a", SECRET_A, BODY);

    let mut first = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut first, &a)
        .await
        .unwrap();
    // Wait (bounded) until the upstream holds the first copy.
    upstream_reaches(&hang, 1).await;
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
    // The held copies are cut by the shutdown, not by a kill.
    drop(gw);
}

/// An entry older than the window no longer counts: the copy goes through
/// (and is recorded again).
async fn entry_older_than_the_window_lets_the_copy_through(store: Store) {
    let up = Upstream::start(Behaviour::Respond).await;
    let gw = BinaryGateway::start(&store.config(up.addr, "1s", ""));
    let a = signed("/webhooks/a", SECRET_A, BODY);
    assert_eq!(raw(gw.addr, &a).await.0.status, 201);
    let recorded = std::time::Instant::now();
    assert_eq!(raw(gw.addr, &a).await.0.status, 200);
    // The window is the only input here: wait it out.
    tokio::time::sleep(Duration::from_millis(1100).saturating_sub(recorded.elapsed())).await;
    assert_eq!(raw(gw.addr, &a).await.0.status, 201);
    assert_eq!(raw(gw.addr, &a).await.0.status, 200);
    assert_eq!(up.count(), 2);
    gw.stop().await;
}

/// 100,000 requests with a wrong signature (keep-alive, pipelined, on 4
/// connections) leave the store as it was: nothing added, nothing evicted,
/// the recorded deliveries still refused as duplicates.
#[tokio::test]
async fn invalid_signatures_never_enter_the_store() {
    let up = Upstream::start(Behaviour::Respond).await;
    // 100,000 access-log lines would cost more than the requests.
    let gw = BinaryGateway::start_with(
        &Store::Memory.config(up.addr, "1h", "replay_max_entries = 5"),
        &[("HOOKGATE_LOG", "info,hookgate::access=off")],
    );
    for n in 0..3 {
        assert_eq!(raw(gw.addr, &delivery(n)).await.0.status, 201);
    }
    let before = gw.settled_metrics().await;
    assert_eq!(sample(&before, "hookgate_replay_entries"), Some(3.0));

    // Right length, right format, wrong MAC: only the comparison refuses it.
    let bad_sig = sign(SECRET_B, BODY);
    let bad = post("/webhooks/a", Some(&bad_sig), BODY, "");
    let started = std::time::Instant::now();
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
    eprintln!(
        "100,000 invalid requests answered in {:?}",
        started.elapsed()
    );

    let after = gw.settled_metrics().await;
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
/// Memory only: the SQLite store is bounded by the window, not a count.
#[tokio::test]
async fn memory_store_is_bounded_and_evicts_the_oldest() {
    let up = Upstream::start(Behaviour::Respond).await;
    let gw = BinaryGateway::start(&Store::Memory.config(up.addr, "1h", "replay_max_entries = 10"));
    for n in 0..25 {
        assert_eq!(raw(gw.addr, &delivery(n)).await.0.status, 201);
    }
    let text = gw.settled_metrics().await;
    assert_eq!(sample(&text, "hookgate_replay_entries"), Some(10.0));
    assert_eq!(sample(&text, "hookgate_replay_evictions_total"), Some(15.0));

    assert_eq!(raw(gw.addr, &delivery(24)).await.0.status, 200);
    assert_eq!(raw(gw.addr, &delivery(15)).await.0.status, 200);
    assert_eq!(raw(gw.addr, &delivery(14)).await.0.status, 201);
    assert_eq!(raw(gw.addr, &delivery(0)).await.0.status, 201);
    assert_eq!(up.count(), 27);
    gw.stop().await;
}

/// Without `[spool]` the store is memory only (documented in the README):
/// after a restart of the binary the same delivery is forwarded once more.
#[tokio::test]
async fn without_spool_a_restart_forgets_the_store() {
    let up = Upstream::start(Behaviour::Respond).await;
    let text = Store::Memory.config(up.addr, "1h", "");
    let a = signed("/webhooks/a", SECRET_A, BODY);

    let gw = BinaryGateway::start(&text);
    assert_eq!(raw(gw.addr, &a).await.0.status, 201);
    assert_eq!(raw(gw.addr, &a).await.0.status, 200);
    gw.stop().await;

    let gw = BinaryGateway::start(&text);
    assert_eq!(raw(gw.addr, &a).await.0.status, 201);
    assert_eq!(raw(gw.addr, &a).await.0.status, 200);
    assert_eq!(up.count(), 2);
    gw.stop().await;
}

/// `[spool]` keeps the replay store in the spool's SQLite file: after a
/// restart of the binary a repeat inside the window is still answered 200 +
/// the header and not forwarded (on a `sync`, an `on_failure` and an
/// `always` route), and an entry whose window passed lets the copy through.
#[tokio::test]
async fn with_spool_a_restart_keeps_the_store() {
    let up = Upstream::start(Behaviour::Respond).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("spool.db");
    let route = |name: &str, delivery: &str, window: &str| {
        format!(
            "[[route]]\nname = \"{name}\"\npath = \"/webhooks/{name}\"\nupstream = \"http://{}\"\nsecret = {{ env = \"SECRET_A\" }}\ndelivery = \"{delivery}\"\nreplay_window = \"{window}\"\n",
            up.addr
        )
    };
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nshutdown_timeout = \"2s\"\n[spool]\npath = \"{}\"\n{}{}{}{}",
        db.display(),
        route("a", "sync", "1h"),
        route("o", "on_failure", "1h"),
        route("q", "always", "1h"),
        route("s", "sync", "1s"),
    );
    let a = signed("/webhooks/a", SECRET_A, BODY);
    let o = signed("/webhooks/o", SECRET_A, BODY);
    let q = signed("/webhooks/q", SECRET_A, BODY);
    let s = signed("/webhooks/s", SECRET_A, BODY);

    let gw = BinaryGateway::start(&text);
    assert_eq!(raw(gw.addr, &a).await.0.status, 201);
    assert_eq!(raw(gw.addr, &o).await.0.status, 201);
    assert_eq!(raw(gw.addr, &q).await.0.status, 202);
    let s_recorded = std::time::Instant::now();
    assert_eq!(raw(gw.addr, &s).await.0.status, 201);
    // Before the restart too: repeats never reach the upstream.
    for req in [&a, &o, &q] {
        let (dup, _) = raw(gw.addr, req).await;
        assert_eq!(dup.status, 200);
        assert_eq!(dup.header("x-hookgate-duplicate"), Some("true"));
    }
    // The `always` route delivers from the spool in the background.
    upstream_reaches(&up, 4).await;
    gw.stop().await;
    // Each delivery is a row of the spool file's replay table.
    let rows: i64 = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("SELECT count(*) FROM hookgate_replay", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 4);

    let gw = BinaryGateway::start(&text);
    for req in [&a, &o, &q] {
        let (dup, _) = raw(gw.addr, req).await;
        assert_eq!(dup.status, 200);
        assert_eq!(dup.header("x-hookgate-duplicate"), Some("true"));
    }
    // s's one-second window is the only input here: wait it out.
    tokio::time::sleep(Duration::from_millis(1100).saturating_sub(s_recorded.elapsed())).await;
    assert_eq!(raw(gw.addr, &s).await.0.status, 201);
    assert_eq!(raw(gw.addr, &s).await.0.status, 200);
    let text = gw.settled_metrics().await;
    for route in ["a", "o", "q"] {
        assert_eq!(requests_total(&text, route, "duplicate"), Some(1.0));
    }
    upstream_reaches(&up, 5).await;
    gw.stop().await;
}

/// `limits.replay_max_entries` does not bound the spool's replay store:
/// with `[spool]` it is a warning naming the line (`check` exits 0,
/// `--strict` 1), not a silently ignored key; without `[spool]` it is what
/// bounds the store, and `--strict` passes.
#[test]
fn replay_max_entries_with_spool_is_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hookgate.toml");
    let memory = two_routes("127.0.0.1:9".parse().unwrap(), "replay_window = \"1h\"")
        .replace("[limits]\n", "[limits]\nreplay_max_entries = 5\n");
    let spooled = format!(
        "{memory}\n[spool]\npath = \"{}\"\n",
        dir.path().join("spool.db").display()
    );
    let check = |text: &str, strict: &[&str]| {
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new(hookgate_bin())
            .arg("check")
            .args(strict)
            .arg("--config")
            .arg(&path)
            .envs([("SECRET_A", SECRET_A), ("SECRET_B", SECRET_B)])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let line = memory
        .lines()
        .position(|l| l.starts_with("replay_max_entries"))
        .unwrap()
        + 1;
    let (code, err) = check(&spooled, &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains(&format!("hookgate.toml:{line}:22: warning: limits.replay_max_entries bounds the in-memory replay store only")),
        "{err}"
    );
    assert_eq!(check(&spooled, &["--strict"]).0, Some(1));
    let (code, err) = check(&memory, &["--strict"]);
    assert_eq!(code, Some(0), "{err}");
}
