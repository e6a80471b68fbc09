//! Several instances on one PostgreSQL database (SPEC §11), against a real
//! throwaway cluster (tests/common/pg.rs): schema migration and refusal,
//! `hookgate check`, a lease taken over after an instance is killed with
//! SIGKILL, and the database stopped under load. The backend-neutral spool
//! behaviour runs on PostgreSQL in tests/spool_pg.rs.
//!
//! Every test skips (loudly, from the cluster helper) only when no
//! `postgres` binary exists; `.ci/run` installs it.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::pg::{self, eventually, Cluster};
use common::*;
use hookgate::config::DatabaseUrl;
use hookgate::spool::postgres::{PgStore, MIGRATIONS};
use hookgate::spool::{NewRecord, Store};
use tokio::time::Instant;

/// The schema version this build writes.
const CURRENT: i32 = MIGRATIONS.len() as i32;

/// A password that must never be printed (trust auth ignores it).
const PASSWORD: &str = "pw-never-printed-7f3a";

fn with_password(url: &str) -> String {
    url.replace("unused-password", PASSWORD)
}

fn db_url(url: &str) -> DatabaseUrl {
    DatabaseUrl::new(with_password(url), "env HOOKGATE_DATABASE_URL".into())
}

fn record(id: &str) -> NewRecord {
    NewRecord {
        id: id.into(),
        route: "a".into(),
        received_ms: 1,
        method: "POST".into(),
        target: "/x".into(),
        headers: b"host: h\r\n".to_vec(),
        body: b"{}".to_vec(),
        attempts: 0,
        next_attempt_ms: 0,
        last_status: None,
        last_error: None,
    }
}

/// A config for the binary: route "a" with `delivery`, the spool on the
/// database in `HOOKGATE_DATABASE_URL` (`retry` short unless `extra` sets it).
fn binary_config(
    dir: &Path,
    upstream: SocketAddr,
    delivery: &str,
    extra: &str,
) -> std::path::PathBuf {
    let retry = if extra.contains("retry") {
        ""
    } else {
        r#"retry = ["200ms", "400ms", "800ms"]"#
    };
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
shutdown_timeout = "2s"

[admin]
listen = "127.0.0.1:0"

[limits]
request_timeout = "2s"
upstream_timeout = "2s"

[spool]
backend = "postgres"
url = {{ env = "HOOKGATE_DATABASE_URL" }}
{retry}
{extra}

[[route]]
name = "a"
path = "/webhooks/a"
upstream = "http://{upstream}"
secret = {{ env = "SECRET_A" }}
delivery = "{delivery}"
"#
    );
    let path = dir.join("hookgate.toml");
    std::fs::write(&path, text).unwrap();
    path
}

async fn hookgate(args: &[&str], url: &str) -> (bool, String, String) {
    pg::hookgate(
        args,
        &[("HOOKGATE_DATABASE_URL", url), ("SECRET_A", SECRET_A)],
    )
    .await
}

/// Sends one signed webhook to route "a": (status, delivery id).
async fn send(addr: SocketAddr, path: &str, n: usize) -> (u16, Option<String>) {
    let body = format!(r#"{{"event":"generation.completed","n":{n}}}"#).into_bytes();
    let secret = if path.ends_with("/b") {
        SECRET_B
    } else {
        SECRET_A
    };
    let req = post(path, Some(&sign(secret, &body)), &body, "");
    let (resp, _) = raw(addr, &req).await;
    (
        resp.status,
        resp.header("x-hookgate-delivery").map(str::to_string),
    )
}

/// Empty database → schema created at the current version; a re-run changes
/// nothing and keeps the records; two instances starting at once migrate
/// once; a newer schema is refused by the store, `hookgate check` and
/// `hookgate run` with a message naming the versions and the database,
/// its password masked.
#[tokio::test]
async fn schema_is_created_migrated_once_and_newer_refused() {
    let Some(cluster) = pg::shared() else { return };
    let url = cluster.database();
    let db = pg::database_name(&url).to_string();
    let dir = tempfile::tempdir().unwrap();
    let config = binary_config(dir.path(), "127.0.0.1:9".parse().unwrap(), "always", "");

    let (ok, out, err) = hookgate(
        &["check", "--config", config.to_str().unwrap()],
        &with_password(&url),
    )
    .await;
    assert!(ok, "{out}{err}");
    assert!(out.contains("schema not created yet"), "{out}");
    assert!(out.contains("***") && !out.contains(PASSWORD), "{out}");

    // Two instances starting together on the empty database.
    let target = db_url(&url);
    let (a, b) = tokio::join!(
        PgStore::open(&target, 1 << 30, Duration::from_secs(30)),
        PgStore::open(&target, 1 << 30, Duration::from_secs(30)),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.schema_version(), CURRENT);
    assert_eq!(
        cluster
            .psql(&db, "SELECT version FROM hookgate_schema")
            .trim(),
        CURRENT.to_string()
    );
    a.put(record("r1")).await.unwrap();
    a.close();
    b.close();

    // Re-run on an up-to-date schema: nothing changes, the record stays.
    let again = PgStore::open(&db_url(&url), 1 << 30, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(again.stats().await.unwrap().routes[0].pending, 1);
    again.close();
    assert_eq!(
        cluster
            .psql(&db, "SELECT count(*) FROM hookgate_schema")
            .trim(),
        "1"
    );
    let (ok, out, _) = hookgate(
        &["check", "--config", config.to_str().unwrap()],
        &with_password(&url),
    )
    .await;
    assert!(
        ok && out.contains(&format!("schema version {CURRENT} (current)")),
        "{out}"
    );

    // A newer hookgate migrated this database: refuse, never touch it.
    cluster.psql(&db, "UPDATE hookgate_schema SET version = 99");
    let err = PgStore::open(&db_url(&url), 1 << 30, Duration::from_secs(30))
        .await
        .unwrap_err();
    assert!(
        err.contains("version 99")
            && err.contains(&format!(
                "newer than this hookgate reads (version {CURRENT})"
            )),
        "{err}"
    );
    assert!(err.contains("***") && !err.contains(PASSWORD), "{err}");
    let (ok, out, err) = hookgate(
        &["check", "--config", config.to_str().unwrap()],
        &with_password(&url),
    )
    .await;
    assert!(!ok && err.contains("version 99"), "{out}{err}");
    let (ok, out, err) = hookgate(
        &["run", "--config", config.to_str().unwrap()],
        &with_password(&url),
    )
    .await;
    assert!(!ok && err.contains("version 99"), "{out}{err}");
    assert!(!err.contains(PASSWORD) && !out.contains(PASSWORD));
    assert_eq!(
        cluster
            .psql(&db, "SELECT count(*) FROM hookgate_webhook")
            .trim(),
        "1"
    );
}

/// A database left at schema version 1 by an older hookgate, with a
/// record in it, is migrated step by step to the current version at start;
/// the record survives and is delivered as before.
#[tokio::test]
async fn older_schema_is_migrated_and_keeps_its_records() {
    let Some(cluster) = pg::shared() else { return };
    let url = cluster.database();
    let db = pg::database_name(&url).to_string();
    // What a version-1 binary created.
    cluster.psql(&db, MIGRATIONS[0]);
    cluster.psql(
        &db,
        "CREATE TABLE hookgate_schema(version integer NOT NULL); INSERT INTO hookgate_schema VALUES (1);
         INSERT INTO hookgate_webhook(id, route, received_ms, method, target, headers, body, bytes, state, attempts, next_attempt_ms)
         VALUES ('old-1', 'a', 1, 'POST', '/x', 'host: h\r\n'::bytea, '{}'::bytea, 11, 'pending', 0, 0)",
    );
    let store = PgStore::open(&db_url(&url), 1 << 30, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        cluster
            .psql(&db, "SELECT version FROM hookgate_schema")
            .trim(),
        CURRENT.to_string()
    );
    assert_eq!(
        cluster
            .psql(&db, "SELECT to_regclass('hookgate_replay') IS NOT NULL")
            .trim(),
        "t"
    );
    let due = store.due("a", 10, 10, false).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].id, "old-1");
    assert_eq!(due[0].body, b"{}");
    store.close();
}

/// The replay defence shares the database: the same signed request sent
/// to instance A and then to instance B is forwarded once; B answers it as
/// a duplicate; both count the shared delivery in `hookgate_replay_entries`.
#[tokio::test]
async fn replay_store_is_shared_between_instances() {
    let Some(cluster) = pg::shared() else { return };
    let dir = tempfile::tempdir().unwrap();
    let url_file = dir.path().join("database-url");
    std::fs::write(&url_file, with_password(&cluster.database())).unwrap();
    let up = Upstream::start(Behaviour::Respond).await;
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"

[spool]
backend = "postgres"
url = {{ file = "{}" }}

[[route]]
name = "a"
path = "/webhooks/a"
upstream = "http://{}"
secret = {{ env = "SECRET_A" }}
replay_window = "1h"
"#,
        url_file.display(),
        up.addr
    );
    let a = Gateway::start(&text).await;
    let b = Gateway::start(&text).await;
    let body = br#"{"event":"generation.completed","generation_id":"g-replayed"}"#;
    let req = post("/webhooks/a", Some(&sign(SECRET_A, body)), body, "");
    let (first, _) = raw(a.addr, &req).await;
    assert_eq!(first.status, 201);
    // A records the delivery in the background; until it lands the copy
    // is "in flight" (409 + Retry-After), never forwarded.
    let deadline = Instant::now() + Duration::from_secs(5);
    let second = loop {
        let (resp, _) = raw(b.addr, &req).await;
        if resp.status != 409 || Instant::now() > deadline {
            break resp;
        }
        assert_eq!(resp.header("retry-after"), Some("1"));
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(second.status, 200);
    assert_eq!(second.header("x-hookgate-duplicate"), Some("true"));
    // And back on A: still a duplicate.
    let (third, _) = raw(a.addr, &req).await;
    assert_eq!(third.status, 200);
    assert_eq!(up.count(), 1, "forwarded once");
    // Both instances show the shared table's one delivery in
    // hookgate_replay_entries (counted every 10 s).
    let deadline = Instant::now() + Duration::from_secs(15);
    for gw in [&a, &b] {
        loop {
            let entries = sample(&gw.metrics().await, "hookgate_replay_entries");
            if entries == Some(1.0) {
                break;
            }
            assert!(Instant::now() < deadline, "replay entries {entries:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    a.stop().await;
    b.stop().await;
}

/// A database that cannot be reached: `hookgate check` and `hookgate run`
/// fail with one line naming the database, password masked.
#[tokio::test]
async fn unreachable_database_is_named_without_its_password() {
    let Some(_cluster) = pg::shared() else { return };
    let dir = tempfile::tempdir().unwrap();
    let config = binary_config(dir.path(), "127.0.0.1:9".parse().unwrap(), "always", "");
    let closed = closed_port().await;
    let url = format!("postgres://hookgate:{PASSWORD}@{closed}/nowhere");
    for cmd in ["check", "run"] {
        let (ok, out, err) = hookgate(&[cmd, "--config", config.to_str().unwrap()], &url).await;
        assert!(!ok, "{cmd}: {out}{err}");
        assert!(
            err.contains(&format!("postgres://hookgate:***@{closed}/nowhere")),
            "{cmd}: {err}"
        );
        assert!(
            !err.contains(PASSWORD) && !out.contains(PASSWORD),
            "{cmd}: {err}"
        );
    }
}

/// A server without TLS (this cluster has `ssl = off`): `sslmode=require`
/// never falls back to plain text, the start fails saying so; without an
/// sslmode (libpq's `prefer`) the connection is plain and `hookgate check`
/// says that. TLS itself: tests/pg_tls.rs.
#[tokio::test]
async fn require_never_falls_back_to_plain_text() {
    let Some(cluster) = pg::shared() else { return };
    let dir = tempfile::tempdir().unwrap();
    let config = binary_config(dir.path(), "127.0.0.1:9".parse().unwrap(), "always", "");
    let url = with_password(&cluster.database());
    let require = format!("{url}?sslmode=require");
    for cmd in ["check", "run"] {
        let (ok, out, err) = hookgate(&[cmd, "--config", config.to_str().unwrap()], &require).await;
        assert!(!ok, "{cmd}: {out}{err}");
        assert!(
            err.contains("server does not support TLS")
                && err.contains("the server has ssl = off")
                && err.contains("hookgate:***@")
                && !err.contains(PASSWORD),
            "{cmd}: {err}"
        );
    }
    let (ok, out, err) = hookgate(&["check", "--config", config.to_str().unwrap()], &url).await;
    assert!(ok && out.contains("(no TLS, sslmode=prefer)"), "{out}{err}");
}

/// Instance A spools six webhooks and takes four for delivery (leased)
/// to an app that hangs; A is killed with SIGKILL. Instance B, on the same
/// database, delivers the two A never took at once and the four it had
/// leased only after the lease: every acknowledged webhook delivered,
/// each exactly once with a 2xx.
#[tokio::test]
async fn killed_instance_leases_are_taken_over_after_lease() {
    let Some(cluster) = pg::shared() else { return };
    let url = with_password(&cluster.database());
    let up = Upstream::start(Behaviour::Hang).await;
    let dir = tempfile::tempdir().unwrap();
    let lease = Duration::from_secs(4);
    let config = binary_config(
        dir.path(),
        up.addr,
        "always",
        "lease = \"4s\"\nredelivery_concurrency = 4",
    );
    let env = [
        ("HOOKGATE_DATABASE_URL", url.as_str()),
        ("SECRET_A", SECRET_A),
    ];

    let mut a = spawn_run(&config, &env);
    let mut acked = Vec::new();
    for n in 0..6 {
        let (status, id) = send(a.addr, "/webhooks/a", n).await;
        assert_eq!(status, 202);
        acked.push(id.unwrap());
    }
    // A's worker leases four (its concurrency) and waits on the app.
    assert!(eventually(Duration::from_secs(5), || up.count() >= 4).await);
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let taken_by_a: HashMap<String, Instant> = up
        .received()
        .iter()
        .map(|r| (r.header("x-hookgate-delivery").unwrap().to_string(), r.at))
        .collect();
    assert_eq!(taken_by_a.len(), 4, "A holds four leases");
    let seen_before_b = up.count();
    up.set(Behaviour::Respond);

    let mut b = spawn_run(&config, &env);
    let all: HashSet<String> = acked.iter().cloned().collect();
    let delivered = || -> HashMap<String, Vec<Instant>> {
        let mut by_id: HashMap<String, Vec<Instant>> = HashMap::new();
        for r in up.received().into_iter().skip(seen_before_b) {
            by_id
                .entry(r.header("x-hookgate-delivery").unwrap().to_string())
                .or_default()
                .push(r.at);
        }
        by_id
    };
    assert!(
        eventually(Duration::from_secs(15), || delivered().len() == all.len()).await,
        "not every acknowledged webhook was delivered: {:?}",
        delivered().keys().collect::<Vec<_>>()
    );
    let got = delivered();
    for id in &acked {
        let times = &got[id];
        assert_eq!(times.len(), 1, "{id} delivered {} times by B", times.len());
        if let Some(taken) = taken_by_a.get(id) {
            // Not before A's lease ran out (database clock; 300 ms slack).
            assert!(
                times[0] + Duration::from_millis(300) >= *taken + lease,
                "{id} taken over {:?} after A took it, lease is {lease:?}",
                times[0] - *taken
            );
        }
    }
    let _ = Command::new("kill")
        .args(["-TERM", &b.child.id().to_string()])
        .status();
    assert!(b.child.wait().unwrap().success());
}

/// Under load the database is stopped and started again: every answer on
/// the `always` route is 202 or 503 (never a 2xx without a commit);
/// while it is down, spool-bound requests get 503, `/readyz` says the spool
/// cannot be written, and a `sync` route and an `on_failure` route whose
/// app answers keep working; once it is back the gateway reconnects by
/// itself and everything acknowledged is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_stopped_under_load_never_acknowledges_without_commit() {
    let Some(mut cluster) = Cluster::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url_file = dir.path().join("database-url");
    std::fs::write(&url_file, with_password(&cluster.database())).unwrap();
    let up = Upstream::start(Behaviour::Respond).await;
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
shutdown_timeout = "2s"

[limits]
request_timeout = "2s"
upstream_timeout = "2s"

[spool]
backend = "postgres"
url = {{ file = "{}" }}
lease = "5s"
retry = ["200ms", "400ms"]

[[route]]
name = "a"
path = "/webhooks/a"
upstream = "http://{up}"
secret = {{ env = "SECRET_A" }}
delivery = "always"

[[route]]
name = "b"
path = "/webhooks/b"
upstream = "http://{up}"
secret = {{ env = "SECRET_B" }}
delivery = "sync"

[[route]]
name = "c"
path = "/webhooks/c"
upstream = "http://{up}"
secret = {{ env = "SECRET_A" }}
delivery = "on_failure"
"#,
        url_file.display(),
        up = up.addr
    );
    let gw = Gateway::start(&text).await;
    let addr = gw.addr;

    // Four clients keep sending to the `always` route while the database
    // goes away.
    let stop_load = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for c in 0..4 {
        let stop = stop_load.clone();
        load.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            let mut n = c * 100_000;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && answers.len() < 2000 {
                answers.push(send(addr, "/webhooks/a", n).await);
                n += 1;
            }
            answers
        }));
    }
    assert!(eventually(Duration::from_secs(5), || up.count() >= 20).await);
    let mut cluster = tokio::task::spawn_blocking(move || {
        cluster.stop();
        cluster
    })
    .await
    .unwrap();

    // Down: spool-bound 503, the rest keeps working, /readyz says why.
    for n in 0..5 {
        assert_eq!(send(addr, "/webhooks/a", 900_000 + n).await, (503, None));
    }
    assert_eq!(send(addr, "/webhooks/b", 1).await.0, 201, "sync route");
    let (status, id) = send(addr, "/webhooks/c", 2).await;
    assert_eq!(status, 201, "on_failure route, app answering");
    assert!(id.is_none(), "a relayed answer carries no delivery id");
    let (status, body) = gw.admin_get("/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("spool cannot be written"), "{body}");

    let cluster = tokio::task::spawn_blocking(move || {
        cluster.run();
        cluster
    })
    .await
    .unwrap();
    // Back: the gateway reconnects by itself.
    let mut back = false;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if gw.admin_get("/readyz").await.0 == 200
            && send(addr, "/webhooks/a", 950_000).await.0 == 202
        {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(back, "no 202 within 10 s of the database's return");
    stop_load.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acked = HashSet::new();
    let mut refused = 0;
    for task in load {
        for (status, id) in task.await.unwrap() {
            match status {
                202 => {
                    acked.insert(id.expect("a 202 carries its delivery id"));
                }
                503 => refused += 1,
                other => panic!("answer {other} on a spool-bound route"),
            }
        }
    }
    assert!(refused > 0, "the load saw the outage");
    // Everything acknowledged reaches the app once the database is back.
    let delivered = || -> HashSet<String> {
        up.received()
            .iter()
            .filter_map(|r| r.header("x-hookgate-delivery").map(str::to_string))
            .collect()
    };
    assert!(
        eventually(Duration::from_secs(20), || acked.is_subset(&delivered())).await,
        "{} acknowledged, {} of them delivered",
        acked.len(),
        acked.intersection(&delivered()).count()
    );
    gw.stop().await;
    drop(cluster);
}

/// Two instances on one database, the app down (503): the route's circuit
/// is shared, so after the first failures the app sees one probe per
/// backoff step from the pair, never two (consecutive probes at least a
/// jittered step apart, 1.5 s − 20 %), instead of one per instance. When
/// the app is back, one probe closes the circuit for both and everything
/// either instance acknowledged is delivered.
#[tokio::test]
async fn circuit_is_shared_one_probe_per_step_across_instances() {
    let Some(cluster) = pg::shared() else { return };
    let url = with_password(&cluster.database());
    let up = Upstream::start(Behaviour::Status(503, None)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = std::fs::read_to_string(binary_config(
        dir.path(),
        up.addr,
        "always",
        "lease = \"4s\"\nredelivery_concurrency = 1\nretry = [\"1500ms\", \"1500ms\", \"1500ms\", \"1500ms\", \"1500ms\", \"1500ms\", \"1500ms\", \"1500ms\", \"1500ms\", \"1500ms\"]",
    ))
    .unwrap();
    let env = [("HOOKGATE_DATABASE_URL", url.as_str())];
    // Killed when dropped: a failing assertion leaves no gateway behind.
    let a = BinaryGateway::start_with(&config, &env);
    let b = BinaryGateway::start_with(&config, &env);
    let mut acked = HashSet::new();
    for n in 0..2 {
        for gw in [&a, &b] {
            let (status, id) = send(gw.addr, "/webhooks/a", n).await;
            assert_eq!(status, 202);
            acked.insert(id.unwrap());
        }
    }
    assert!(eventually(Duration::from_secs(5), || up.count() >= 1).await);
    let t0 = up.received()[0].at;
    // Each instance tries at most once while its circuit is still closed
    // (the burst at t0); then only probes, for 6.5 s.
    tokio::time::sleep_until(t0 + Duration::from_millis(7500)).await;
    let seen = up.received();
    let burst = seen
        .iter()
        .filter(|r| r.at < t0 + Duration::from_millis(900))
        .count();
    assert!(burst <= 2, "{burst} attempts before the circuits opened");
    let probes: Vec<Instant> = seen
        .iter()
        .map(|r| r.at)
        .filter(|at| *at >= t0 + Duration::from_millis(900))
        .collect();
    let gaps: Vec<Duration> = probes.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.iter().all(|g| *g >= Duration::from_millis(1150)),
        "two probes within one step: gaps {gaps:?}"
    );
    assert!(
        // At least two even on a loaded machine (a step is 1.2–1.8 s, plus
        // up to a second before an instance notices it is due).
        (2..=6).contains(&probes.len()),
        "{} probes in 6.6 s at one per 1.2–1.8 s step: {gaps:?}",
        probes.len()
    );

    // The app is back: one probe closes the circuit for both instances and
    // both drain (each record ends with one 2xx).
    up.set(Behaviour::Respond);
    let delivered = || -> HashSet<String> {
        let ok_from = seen.len();
        up.received()
            .into_iter()
            .skip(ok_from)
            .filter_map(|r| r.header("x-hookgate-delivery").map(str::to_string))
            .collect()
    };
    assert!(
        eventually(Duration::from_secs(10), || delivered() == acked).await,
        "acknowledged {acked:?}, delivered {:?}",
        delivered()
    );
    for gw in [a, b] {
        assert!(!gw
            .lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(PASSWORD)));
        gw.stop().await;
    }
}

/// A graceful stop (SIGTERM) returns the instance's leases: instance A
/// takes four records for an app that hangs and is stopped; after its
/// `shutdown_timeout` (1 s) it gives the four back and exits 0, and
/// instance B, started on the same database, delivers all six at once,
/// not after the 30 s lease.
#[tokio::test]
async fn graceful_stop_returns_leases_to_other_instances() {
    let Some(cluster) = pg::shared() else { return };
    let url = with_password(&cluster.database());
    let db = url.rsplit('/').next().unwrap().to_string();
    let up = Upstream::start(Behaviour::Hang).await;
    let dir = tempfile::tempdir().unwrap();
    let config = std::fs::read_to_string(binary_config(
        dir.path(),
        up.addr,
        "always",
        "lease = \"30s\"\nredelivery_concurrency = 4",
    ))
    .unwrap()
    .replace("shutdown_timeout = \"2s\"", "shutdown_timeout = \"1s\"")
    // The hanging deliveries must still be waiting when A stops.
    .replace("upstream_timeout = \"2s\"", "upstream_timeout = \"10s\"");
    let env = [("HOOKGATE_DATABASE_URL", url.as_str())];
    let a = BinaryGateway::start_with(&config, &env);
    let mut acked = HashSet::new();
    for n in 0..6 {
        let (status, id) = send(a.addr, "/webhooks/a", n).await;
        assert_eq!(status, 202);
        acked.insert(id.unwrap());
    }
    assert!(eventually(Duration::from_secs(5), || up.count() >= 4).await);
    assert_eq!(
        cluster
            .psql(
                &db,
                "SELECT count(*) FROM hookgate_webhook WHERE locked_until > now()"
            )
            .trim(),
        "4",
        "A holds four leases"
    );
    let lines = a.lines.clone();
    a.stop().await;
    assert!(
        lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("returned this instance's leases") && l.contains("\"records\":4")),
        "{:#?}",
        lines.lock().unwrap()
    );
    assert_eq!(
        cluster
            .psql(
                &db,
                "SELECT count(*) FROM hookgate_webhook WHERE locked_until > now()"
            )
            .trim(),
        "0"
    );

    let seen_before_b = up.count();
    up.set(Behaviour::Respond);
    let started = Instant::now();
    let b = BinaryGateway::start_with(&config, &env);
    let delivered = || -> HashSet<String> {
        up.received()
            .into_iter()
            .skip(seen_before_b)
            .filter_map(|r| r.header("x-hookgate-delivery").map(str::to_string))
            .collect()
    };
    assert!(
        eventually(Duration::from_secs(5), || delivered() == acked).await,
        "B delivered {} of {} within {:?} (lease 30 s)",
        delivered().len(),
        acked.len(),
        started.elapsed()
    );
    b.stop().await;
}
