//! The spool (SPEC §8) through a real gateway, a real SQLite file and a
//! recording upstream: failures answered 202 after the write, redelivered
//! byte-identical with the same id once the app is back; `always`; what
//! redelivery does with 410, 400 and `Retry-After`; the byte budget.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::*;
use hookgate::spool::Selection;
use tokio::time::Instant;

/// Short steps so a test's whole schedule runs in about a second.
const FAST: &str = r#"retry = ["150ms", "300ms", "600ms"]"#;

fn config(dir: &Path, upstream: SocketAddr, delivery: &str, spool_extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
shutdown_timeout = "5s"

[limits]
request_timeout = "2s"
upstream_timeout = "400ms"

[spool]
{}{spool_extra}

[[route]]
name = "a"
path = "/webhooks/a"
upstream = "http://{upstream}"
secret = {{ env = "SECRET_A" }}
delivery = "{delivery}"
"#,
        spool_store(dir)
    )
}

/// Polls `cond` every 20 ms for up to `within`.
async fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

async fn pending(gw: &Gateway) -> (u64, u64) {
    let stats = gw.store.as_ref().unwrap().stats().await.unwrap();
    stats
        .routes
        .iter()
        .fold((0, 0), |(p, d), r| (p + r.pending, d + r.dead))
}

/// A body, its signature, and the request carrying them on route "a".
fn webhook(n: usize) -> (Vec<u8>, String, Vec<u8>) {
    let body =
        format!(r#"{{"event":"generation.completed","generation_id":"g-{n}"}}"#).into_bytes();
    let sig = sign(SECRET_A, &body);
    let req = post("/webhooks/a?n=1", Some(&sig), &body, "X-Custom: kept\r\n");
    (body, sig, req)
}

/// Upstream down (closed port): each webhook gets 202 with an id after the
/// write; the first failure opens the circuit, so the second is spooled at
/// once instead of trying; once the app listens again each arrives
/// byte-identical with the id the sender was given.
#[tokio::test]
async fn upstream_down_then_back_delivers_byte_identical_with_same_id() {
    let dir = tempfile::tempdir().unwrap();
    let down = closed_port().await;
    let gw = Gateway::start(&config(dir.path(), down, "on_failure", FAST)).await;

    let mut sent = Vec::new();
    for n in 0..3 {
        let (body, sig, req) = webhook(n);
        let t = Instant::now();
        let (resp, _) = raw(gw.addr, &req).await;
        assert_eq!(resp.status, 202, "{}", resp.head);
        let id = resp.header("x-hookgate-delivery").unwrap().to_string();
        assert_eq!(id.len(), 36);
        sent.push((id, body, sig, t.elapsed()));
    }
    assert_eq!(pending(&gw).await, (3, 0));
    let text = gw.metrics().await;
    assert_eq!(
        sample(
            &text,
            r#"hookgate_requests_total{route="a",outcome="spooled"}"#
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"hookgate_spool_writes_total{route="a",result="ok"}"#
        ),
        Some(3.0)
    );

    let up = Upstream::start_at(down, Behaviour::Respond).await;
    assert!(
        eventually(Duration::from_secs(10), || up.count() >= 3).await,
        "delivered: {}",
        up.count()
    );
    let got = up.received();
    for (id, body, sig, _) in &sent {
        let r = got
            .iter()
            .find(|r| r.header("x-hookgate-delivery") == Some(id))
            .unwrap_or_else(|| panic!("{id} not delivered: {got:#?}"));
        assert_eq!(&r.body, body);
        assert_eq!(r.method, "POST");
        assert_eq!(r.target, "/webhooks/a?n=1");
        assert_eq!(r.header("x-adsumo-signature"), Some(sig.as_str()));
        assert_eq!(r.header("x-custom"), Some("kept"));
        assert_eq!(r.header("host"), Some("hooks.test"));
        assert_eq!(r.header_count("x-hookgate-attempt"), 1);
        assert_eq!(
            r.header("content-length"),
            Some(body.len().to_string().as_str())
        );
    }
    // The first webhook's synchronous try was attempt 1; the redelivery is 2.
    let first = got
        .iter()
        .find(|r| r.header("x-hookgate-delivery") == Some(&sent[0].0))
        .unwrap();
    assert_eq!(first.header("x-hookgate-attempt"), Some("2"));
    assert!(pending_becomes(&gw, Duration::from_secs(5), (0, 0)).await);
    gw.stop().await;
}

/// Polls the store's counts every 20 ms until they are `want` (true) or
/// `within` has passed (false). Async: a database store's connections are
/// driven by this test's runtime.
async fn pending_becomes(gw: &Gateway, within: Duration, want: (u64, u64)) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if pending(gw).await == want {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// 500, 503 and 429 answers and a hanging upstream count as failures: the
/// sender gets 202, the upstream saw attempt 1 with the id, and gets the
/// same request again (attempt 2, same id and bytes) once it answers.
#[tokio::test]
async fn failing_answers_and_hangs_are_spooled_and_redelivered() {
    for behaviour in [
        Behaviour::Status(500, None),
        Behaviour::Status(503, None),
        Behaviour::Status(429, None),
        Behaviour::Hang,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let up = Upstream::start(behaviour).await;
        let gw = Gateway::start(&config(dir.path(), up.addr, "on_failure", FAST)).await;
        let (body, _, req) = webhook(7);
        let (resp, _) = raw(gw.addr, &req).await;
        assert_eq!(resp.status, 202, "{behaviour:?}: {}", resp.head);
        let id = resp.header("x-hookgate-delivery").unwrap().to_string();
        let first = up.received()[0].clone();
        assert_eq!(first.header("x-hookgate-delivery"), Some(id.as_str()));
        assert_eq!(first.header("x-hookgate-attempt"), Some("1"));
        up.set(Behaviour::Respond);
        assert!(
            eventually(Duration::from_secs(10), || up.count() >= 2).await,
            "{behaviour:?}"
        );
        let second = up.received()[1].clone();
        assert_eq!(second.header("x-hookgate-delivery"), Some(id.as_str()));
        assert_eq!(second.header("x-hookgate-attempt"), Some("2"));
        assert_eq!(second.body, body);
        // Everything but the attempt number is the same bytes in the same order.
        let strip = |r: &Recorded| -> Vec<(String, String)> {
            r.headers
                .iter()
                .filter(|(n, _)| n != "x-hookgate-attempt")
                .cloned()
                .collect()
        };
        assert_eq!(strip(&first), strip(&second), "{behaviour:?}");
        gw.stop().await;
    }
}

/// A healthy upstream on an `on_failure` route: the answer is relayed as
/// today (201), nothing is kept, and the request still carries its id.
#[tokio::test]
async fn healthy_upstream_is_relayed_and_nothing_kept() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start(Behaviour::Respond).await;
    let gw = Gateway::start(&config(dir.path(), up.addr, "on_failure", FAST)).await;
    let (_, _, req) = webhook(1);
    let (resp, _) = raw(gw.addr, &req).await;
    assert_eq!(resp.status, 201);
    assert_eq!(resp.body, UPSTREAM_BODY);
    assert!(resp.header("x-hookgate-delivery").is_none());
    let r = &up.received()[0];
    assert_eq!(r.header("x-hookgate-attempt"), Some("1"));
    assert_eq!(r.header("x-hookgate-delivery").map(str::len), Some(36));
    assert_eq!(pending(&gw).await, (0, 0));
    // A 4xx other than 408/429 is the app's answer: relayed, not kept.
    up.set(Behaviour::Status(422, None));
    let (resp, _) = raw(gw.addr, &webhook(2).2).await;
    assert_eq!(resp.status, 422);
    assert_eq!(pending(&gw).await, (0, 0));
    gw.stop().await;
}

/// `always`: 202 (outcome `queued`) once durable, then the worker delivers
/// within milliseconds, as attempt 1.
#[tokio::test]
async fn always_queues_then_delivers() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start(Behaviour::Respond).await;
    let gw = Gateway::start(&config(dir.path(), up.addr, "always", FAST)).await;
    let (body, _, req) = webhook(3);
    let (resp, _) = raw(gw.addr, &req).await;
    assert_eq!(resp.status, 202);
    let id = resp.header("x-hookgate-delivery").unwrap().to_string();
    assert!(eventually(Duration::from_secs(2), || up.count() == 1).await);
    let r = &up.received()[0];
    assert_eq!(r.header("x-hookgate-delivery"), Some(id.as_str()));
    assert_eq!(r.header("x-hookgate-attempt"), Some("1"));
    assert_eq!(r.body, body);
    assert!(pending_becomes(&gw, Duration::from_secs(2), (0, 0)).await);
    let text = gw.metrics().await;
    assert_eq!(
        sample(
            &text,
            r#"hookgate_requests_total{route="a",outcome="queued"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"hookgate_redeliveries_total{route="a",result="delivered"}"#
        ),
        Some(1.0)
    );
    gw.stop().await;
}

/// Redelivery outcomes: 410 is dead at once; 400 is retried on the
/// schedule until it is exhausted, then dead; `Retry-After` holds the next
/// attempt back even when the schedule's step is shorter.
#[tokio::test]
async fn gone_is_dead_bad_request_retried_retry_after_honoured() {
    // 410: one attempt, dead.
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start(Behaviour::Status(410, None)).await;
    let gw = Gateway::start(&config(dir.path(), up.addr, "always", FAST)).await;
    assert_eq!(raw(gw.addr, &webhook(1).2).await.0.status, 202);
    assert!(pending_becomes(&gw, Duration::from_secs(3), (0, 1)).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(up.count(), 1, "a dead record is not tried again");
    let dead = gw
        .store
        .as_ref()
        .unwrap()
        .list(
            Selection::Route {
                route: "a".into(),
                state: None,
            },
            10,
        )
        .await
        .unwrap();
    assert_eq!(dead[0].last_status, Some(410));
    gw.stop().await;

    // 400: attempts 1 + one per step (3), spaced by the steps, then dead.
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start(Behaviour::Status(400, None)).await;
    let gw = Gateway::start(&config(dir.path(), up.addr, "always", FAST)).await;
    assert_eq!(raw(gw.addr, &webhook(2).2).await.0.status, 202);
    assert!(pending_becomes(&gw, Duration::from_secs(5), (0, 1)).await);
    let got = up.received();
    assert_eq!(got.len(), 4);
    let steps = [150u64, 300, 600];
    for (i, step) in steps.iter().enumerate() {
        let gap = got[i + 1].at - got[i].at;
        // ±20 % jitter.
        assert!(
            gap >= Duration::from_millis(step * 8 / 10),
            "gap {i}: {gap:?} < 80% of {step}ms"
        );
        assert_eq!(
            got[i + 1].header("x-hookgate-attempt"),
            Some((i + 2).to_string().as_str())
        );
    }
    let text = gw.metrics().await;
    assert_eq!(
        sample(
            &text,
            r#"hookgate_redeliveries_total{route="a",result="retry"}"#
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"hookgate_redeliveries_total{route="a",result="dead"}"#
        ),
        Some(1.0)
    );
    gw.stop().await;

    // 503 + Retry-After: 1 where the schedule's step is 150 ms: the next
    // try waits the second (the cap, the largest step, is 5 s here).
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start(Behaviour::Status(503, Some(1))).await;
    let schedule = r#"retry = ["150ms", "5s"]"#;
    let gw = Gateway::start(&config(dir.path(), up.addr, "always", schedule)).await;
    assert_eq!(raw(gw.addr, &webhook(3).2).await.0.status, 202);
    assert!(eventually(Duration::from_secs(5), || up.count() >= 1).await);
    up.set(Behaviour::Respond);
    assert!(eventually(Duration::from_secs(5), || up.count() >= 2).await);
    let got = up.received();
    let gap = got[1].at - got[0].at;
    assert!(
        gap >= Duration::from_millis(950),
        "Retry-After ignored: {gap:?}"
    );
    assert!(pending_becomes(&gw, Duration::from_secs(5), (0, 0)).await);
    gw.stop().await;
}

/// The byte budget: once `max_bytes` is reached, 503 + `Retry-After: 60`
/// (outcome `spool_full`), never 202; a sync route keeps forwarding;
/// `/readyz` stays ready (full is not broken); when the app is back the
/// spool drains and 202s resume.
#[tokio::test]
async fn full_spool_answers_503_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let down = closed_port().await;
    let good = Upstream::start(Behaviour::Respond).await;
    let text = config(
        dir.path(),
        down,
        "on_failure",
        &format!("{FAST}\nmax_bytes = \"4KiB\""),
    ) + &format!(
        r#"
[[route]]
name = "b"
path = "/webhooks/b"
upstream = "http://{}"
secret = {{ env = "SECRET_B" }}
delivery = "sync"
"#,
        good.addr
    );
    let gw = Gateway::start(&text).await;
    let body = vec![b'x'; 1000];
    let sig = sign(SECRET_A, &body);
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let (resp, _) = raw(gw.addr, &post("/webhooks/a", Some(&sig), &body, "")).await;
        if resp.status == 503 {
            assert_eq!(resp.header("retry-after"), Some("60"));
        }
        statuses.push(resp.status);
    }
    // Each record is ~1.2 KiB (body + headers): three fit in 4 KiB.
    assert_eq!(statuses, [202, 202, 202, 503, 503, 503, 503, 503]);
    let b_body = b"{}";
    let (resp, _) = raw(
        gw.addr,
        &post("/webhooks/b", Some(&sign(SECRET_B, b_body)), b_body, ""),
    )
    .await;
    assert_eq!(resp.status, 201, "sync route unaffected");
    assert_eq!(gw.admin_get("/readyz").await.0, 200);
    let metrics = gw.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            r#"hookgate_requests_total{route="a",outcome="spool_full"}"#
        ),
        Some(5.0)
    );
    assert_eq!(
        sample(
            &metrics,
            r#"hookgate_spool_writes_total{route="a",result="full"}"#
        ),
        Some(5.0)
    );

    let up = Upstream::start_at(down, Behaviour::Respond).await;
    assert!(pending_becomes(&gw, Duration::from_secs(10), (0, 0)).await);
    assert_eq!(up.count(), 3);
    let (resp, _) = raw(gw.addr, &post("/webhooks/a", Some(&sig), &body, "")).await;
    assert_eq!(resp.status, 201, "the app is back: forwarded again");
    gw.stop().await;
}

/// Every spool series exists from config load, at zero, for each spooled
/// route (and none for a sync route).
#[tokio::test]
async fn spool_series_present_from_load() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start(Behaviour::Respond).await;
    let gw = Gateway::start(&config(
        dir.path(),
        up.addr,
        "on_failure",
        "max_bytes = 1000000",
    ))
    .await;
    // The gauges are set by the first pass of the gauge task.
    let mut text = gw.metrics().await;
    let deadline = Instant::now() + Duration::from_secs(3);
    while sample(&text, "hookgate_spool_capacity_bytes") != Some(1_000_000.0) {
        assert!(Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
        text = gw.metrics().await;
    }
    for series in [
        r#"hookgate_spool_messages{route="a",state="pending"} 0"#,
        r#"hookgate_spool_messages{route="a",state="dead"} 0"#,
        "hookgate_spool_bytes 0",
        r#"hookgate_spool_writes_total{route="a",result="ok"} 0"#,
        r#"hookgate_spool_writes_total{route="a",result="full"} 0"#,
        r#"hookgate_spool_writes_total{route="a",result="error"} 0"#,
        r#"hookgate_redeliveries_total{route="a",result="delivered"} 0"#,
        r#"hookgate_redeliveries_total{route="a",result="retry"} 0"#,
        r#"hookgate_redeliveries_total{route="a",result="dead"} 0"#,
        r#"hookgate_spool_oldest_pending_age_seconds{route="a"} 0.0"#,
        r#"hookgate_requests_total{route="a",outcome="spooled"} 0"#,
        r#"hookgate_requests_total{route="a",outcome="queued"} 0"#,
        r#"hookgate_requests_total{route="a",outcome="spool_full"} 0"#,
        r#"hookgate_requests_total{route="a",outcome="spool_error"} 0"#,
    ] {
        assert!(
            text.lines().any(|l| l == series),
            "{series} missing:\n{text}"
        );
    }
    gw.stop().await;
}
