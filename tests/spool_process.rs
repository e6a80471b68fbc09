//! The spool through the real binary: `kill -9` in a loop under load (no
//! acknowledged webhook lost), a file-size limit standing in for a full
//! disk, files that are not this version's spool, SIGHUP with a changed
//! path, SIGTERM while a redelivery hangs, and the `spool` CLI.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use tokio::time::Instant;

const ENV: [(&str, &str); 2] = [("SECRET_A", SECRET_A), ("HOOKGATE_LOG", "info")];

fn write_config(dir: &Path, routes: &str, spool: &str) -> PathBuf {
    let path = dir.join("hookgate.toml");
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
shutdown_timeout = "1s"
[admin]
listen = "127.0.0.1:0"
[limits]
upstream_timeout = "500ms"
[spool]
path = "{}"
{spool}
{routes}
"#,
        dir.join("spool.db").display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn route(name: &str, upstream: SocketAddr, delivery: &str) -> String {
    format!(
        "[[route]]\nname = \"{name}\"\npath = \"/webhooks/{name}\"\nupstream = \"http://{upstream}\"\nsecret = {{ env = \"SECRET_A\" }}\ndelivery = \"{delivery}\"\n"
    )
}

fn hookgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hookgate"))
        .args(args)
        .envs(ENV)
        .output()
        .unwrap()
}

/// Kills the gateway (SIGKILL) when the test ends, passed or not, so a
/// failing assertion never leaves a process behind.
struct Reaper(u32);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", &self.0.to_string()])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

async fn wait_for(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

fn wait_exit(
    child: &mut std::process::Child,
    within: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends one signed webhook on route `name`; the status and delivery id,
/// or None when the connection failed (the gateway was killed).
async fn send(addr: SocketAddr, name: &str, body: &[u8]) -> Option<(u16, Option<String>)> {
    use tokio::io::AsyncWriteExt;
    let req = post(
        &format!("/webhooks/{name}"),
        Some(&sign(SECRET_A, body)),
        body,
        "",
    );
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream.write_all(&req).await.ok()?;
    let resp = try_read_response(&mut stream, Duration::from_secs(10))
        .await
        .ok()?;
    Some((
        resp.status,
        resp.header("x-hookgate-delivery").map(str::to_string),
    ))
}

/// 20 cycles: start the gateway, run 8 concurrent senders against an
/// `always` route, `kill -9` it after 100–300 ms. Then one last start
/// drains the spool. Every webhook that got 202 must reach the upstream
/// (0 lost), duplicates stay within kills × 2 × redelivery_concurrency, and
/// the file passes `PRAGMA integrity_check`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loop_loses_no_acknowledged_webhook() {
    const CYCLES: usize = 20;
    const SENDERS: usize = 8;
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start(Behaviour::Respond).await;
    let config = write_config(
        dir.path(),
        &route("a", up.addr, "always"),
        r#"retry = ["100ms", "200ms", "400ms", "800ms"]"#,
    );
    let acked: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut unanswered = 0usize;
    let started = Instant::now();
    for cycle in 0..CYCLES {
        let mut gw = spawn_run(&config, &ENV);
        let _log = drain_log(&mut gw);
        let _reaper = Reaper(gw.child.id());
        let _reaper = Reaper(gw.child.id());
        let addr = gw.addr;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut senders = Vec::new();
        for s in 0..SENDERS {
            let acked = acked.clone();
            let stop = stop.clone();
            senders.push(tokio::spawn(async move {
                let mut failed = 0usize;
                for n in 0.. {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let body = format!(r#"{{"cycle":{cycle},"sender":{s},"n":{n}}}"#);
                    match send(addr, "a", body.as_bytes()).await {
                        Some((202, Some(id))) => {
                            acked.lock().unwrap().insert(id);
                        }
                        Some((status, _)) => panic!("unexpected status {status}"),
                        None => {
                            failed += 1;
                            break;
                        }
                    }
                }
                failed
            }));
        }
        let pause = 100 + fastrand::u64(0..200);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        gw.child.kill().unwrap(); // SIGKILL
        gw.child.wait().unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for s in senders {
            unanswered += s.await.unwrap();
        }
    }
    let load_time = started.elapsed();
    // The last start drains whatever the kills left pending.
    let mut gw = spawn_run(&config, &ENV);
    let _log = drain_log(&mut gw);
    let _reaper = Reaper(gw.child.id());
    let acked: HashSet<String> = acked.lock().unwrap().clone();
    let delivered_ids = || -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for r in up.received() {
            if let Some(id) = r.header("x-hookgate-delivery") {
                *m.entry(id.to_string()).or_insert(0) += 1;
            }
        }
        m
    };
    wait_for(Duration::from_secs(60), || {
        let d = delivered_ids();
        acked.iter().all(|id| d.contains_key(id))
    })
    .await;
    let drain_time = started.elapsed() - load_time;
    signal(gw.child.id(), "TERM");
    let status = wait_exit(&mut gw.child, Duration::from_secs(5)).expect("exits after SIGTERM");
    assert!(status.success());
    println!("kill -9 loop: {load_time:?} of load and kills, {drain_time:?} to drain the rest");

    let delivered = delivered_ids();
    let lost: Vec<&String> = acked
        .iter()
        .filter(|id| !delivered.contains_key(*id))
        .collect();
    let duplicates: usize = delivered.values().map(|n| n - 1).sum();
    let unacked_delivered = delivered.keys().filter(|id| !acked.contains(*id)).count();
    let integrity = hookgate::spool::sqlite::integrity_check(&dir.path().join("spool.db")).unwrap();
    println!(
        "kill -9 loop: {CYCLES} kills, {} acknowledged (202), {} of them delivered, {} lost, {duplicates} duplicate deliveries, {unacked_delivered} delivered without an acknowledgement (cut off by a kill), {unanswered} requests cut off, integrity_check: {integrity}",
        acked.len(),
        acked.len() - lost.len(),
        lost.len(),
    );
    assert!(acked.len() > CYCLES * 10, "load too light: {}", acked.len());
    assert!(lost.is_empty(), "lost: {lost:?}");
    // Per kill, at most the records delivered and not yet recorded as such:
    // 2 × redelivery_concurrency (4).
    assert!(duplicates <= CYCLES * 8, "{duplicates} duplicates");
    assert_eq!(integrity, "ok");
}

/// A full disk, as a file-size limit (RLIMIT_FSIZE via prlimit, SIGXFSZ
/// ignored, so writes past it fail with EFBIG like a full file system):
/// writes fail → 503 (`spool_error`), never 202; `/readyz` 503; the sync
/// route keeps forwarding; once the limit is lifted the next write
/// succeeds, `/readyz` is 200 again, and every 202 is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_answers_503_keeps_sync_routes_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let down = closed_port().await;
    let good = Upstream::start(Behaviour::Respond).await;
    let steps: Vec<&str> = vec!["\"300ms\""; 100];
    let routes = route("a", down, "on_failure") + &route("b", good.addr, "sync");
    let config = write_config(
        dir.path(),
        &routes,
        &format!("retry = [{}]", steps.join(",")),
    );
    // The limit applies to the files the gateway writes: the spool and its WAL.
    let limit = 256 * 1024;
    let mut gw = spawn_run_via(
        &[
            "sh",
            "-c",
            "trap '' XFSZ; exec \"$@\"",
            "sh",
            "prlimit",
            &format!("--fsize={limit}:unlimited"),
        ],
        &config,
        &ENV,
    );
    let log = drain_log(&mut gw);
    let _reaper = Reaper(gw.child.id());
    let admin = gw.admin;
    let body = vec![b'x'; 4096];
    let mut acked = Vec::new();
    let mut first_503 = None;
    for n in 0..400 {
        let mut b = body.clone();
        b[..8].copy_from_slice(format!("{n:08}").as_bytes());
        let (status, id) = send(gw.addr, "a", &b).await.expect("answered");
        match status {
            202 => acked.push(id.unwrap()),
            503 => {
                first_503 = Some(n);
                break;
            }
            other => panic!("status {other}"),
        }
    }
    let first_503 = first_503.expect("the size limit was never hit");
    assert!(first_503 > 5, "failed too early: {first_503}");
    assert_eq!(admin_get(admin, "/readyz").await.0, 503);
    let metrics = admin_get(admin, "/metrics").await.1;
    assert!(
        metrics.contains(r#"hookgate_requests_total{route="a",outcome="spool_error"} 1"#),
        "{metrics}"
    );
    // Sync routes do not need the spool.
    assert_eq!(send(gw.addr, "b", b"{}").await.unwrap().0, 201);
    // The log is read on another thread: wait for the line.
    let logged = wait_for(Duration::from_secs(5), || {
        log.lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("spool write failed") && l.contains("\"ERROR\""))
    })
    .await;
    assert!(logged, "storage failure logged at error level");

    // Space returns.
    let ok = Command::new("prlimit")
        .args([
            "--pid",
            &gw.child.id().to_string(),
            "--fsize=unlimited:unlimited",
        ])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let (status, id) = send(gw.addr, "a", b"{\"after\":true}").await.unwrap();
    assert_eq!(status, 202);
    acked.push(id.unwrap());
    assert_eq!(admin_get(admin, "/readyz").await.0, 200);
    let up = Upstream::start_at(down, Behaviour::Respond).await;
    let all = wait_for(Duration::from_secs(20), || {
        let got: HashSet<String> = up
            .received()
            .iter()
            .filter_map(|r| r.header("x-hookgate-delivery").map(str::to_string))
            .collect();
        acked.iter().all(|id| got.contains(id))
    })
    .await;
    println!(
        "disk full: {} accepted before the limit, 503 at request {first_503}, all {} acknowledged delivered: {all}",
        acked.len() - 1,
        acked.len()
    );
    assert!(all);
    signal(gw.child.id(), "TERM");
    assert!(wait_exit(&mut gw.child, Duration::from_secs(5)).is_some());
}

/// A file that is not a spool, and a spool of another schema version:
/// `run` refuses to start, naming the file, and leaves it as it was; the
/// CLI says the same and exits 1.
#[test]
fn foreign_or_corrupt_spool_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &route("a", "127.0.0.1:9".parse().unwrap(), "on_failure"),
        "",
    );
    let db = dir.path().join("spool.db");
    let junk = b"not sqlite at all\n".repeat(300);
    std::fs::write(&db, &junk).unwrap();
    let out = hookgate(&["run", "--config", config.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&db.display().to_string()) && err.contains("not a readable SQLite spool"),
        "{err}"
    );
    assert_eq!(std::fs::read(&db).unwrap(), junk, "never replaced");

    // Another version's schema.
    std::fs::remove_file(&db).unwrap();
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch(
        "CREATE TABLE webhook(x); PRAGMA application_id = 1751869300; PRAGMA user_version = 3;",
    )
    .unwrap();
    drop(conn);
    let out = hookgate(&["run", "--config", config.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("spool schema version 3 was written by another hookgate version"),
        "{err}"
    );
    let out = hookgate(&["spool", "stats", "--config", config.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains(&db.display().to_string()) && err.contains("schema version 3"),
        "{err}"
    );

    // Some other application's SQLite file.
    std::fs::remove_file(&db).unwrap();
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch("CREATE TABLE accounts(x);").unwrap();
    drop(conn);
    let out = hookgate(&["run", "--config", config.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(err.contains("not a hookgate spool"), "{err}");
}

/// SIGHUP with a different `spool.path` is refused (the old config keeps
/// serving, the new file is not created); SIGTERM while a redelivery hangs
/// exits within shutdown_timeout and the record stays pending, delivered
/// after the restart with the same id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_spool_path_and_sigterm_keeps_inflight_pending() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start(Behaviour::Hang).await;
    let config = write_config(dir.path(), &route("a", up.addr, "always"), "");
    // Long upstream_timeout: the redelivery hangs past shutdown_timeout (1s).
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("upstream_timeout = \"500ms\"", "upstream_timeout = \"30s\"");
    std::fs::write(&config, &text).unwrap();
    let mut gw = spawn_run(&config, &ENV);
    let log = drain_log(&mut gw);
    let _reaper = Reaper(gw.child.id());

    let moved = text.replace("spool.db", "other.db");
    std::fs::write(&config, moved).unwrap();
    signal(gw.child.id(), "HUP");
    assert!(
        wait_for(Duration::from_secs(5), || log.lock().unwrap().iter().any(
            |l| l.contains("reload failed") && l.contains("spool.path changed")
        ))
        .await
    );
    assert!(!dir.path().join("other.db").exists());
    std::fs::write(&config, &text).unwrap();

    let (status, id) = send(gw.addr, "a", b"{\"slow\":1}").await.unwrap();
    assert_eq!(status, 202, "old config still serving");
    let id = id.unwrap();
    assert!(
        wait_for(Duration::from_secs(5), || up.count() == 1).await,
        "redelivery in flight"
    );
    let t = std::time::Instant::now();
    signal(gw.child.id(), "TERM");
    let status = wait_exit(&mut gw.child, Duration::from_secs(5)).expect("exited");
    let took = t.elapsed();
    assert!(status.success());
    assert!(
        took < Duration::from_millis(2500),
        "took {took:?} with shutdown_timeout = 1s"
    );

    let out = hookgate(&[
        "spool",
        "list",
        "--json",
        "--config",
        config.to_str().unwrap(),
    ]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(list[0]["state"], "pending");

    up.set(Behaviour::Respond);
    let mut gw = spawn_run(&config, &ENV);
    let _log = drain_log(&mut gw);
    let _reaper = Reaper(gw.child.id());
    assert!(wait_for(Duration::from_secs(5), || up.count() >= 2).await);
    assert_eq!(
        up.received()[1].header("x-hookgate-delivery"),
        Some(id.as_str())
    );
    signal(gw.child.id(), "TERM");
    assert!(wait_exit(&mut gw.child, Duration::from_secs(5)).is_some());
}

/// The CLI against a running gateway: stats, list, show, retry (picked up
/// within a second), drop; and its errors (unknown id, no database).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_cli_inspects_and_replays_while_running() {
    let dir = tempfile::tempdir().unwrap();
    let gone = Upstream::start(Behaviour::Status(410, None)).await;
    let down = closed_port().await;
    let routes = route("a", gone.addr, "always") + &route("b", down, "on_failure");
    let config = write_config(dir.path(), &routes, r#"retry = ["1h"]"#);
    let cfg = config.to_str().unwrap();
    let mut gw = spawn_run(&config, &ENV);
    let _log = drain_log(&mut gw);
    let _reaper = Reaper(gw.child.id());
    let (_, dead_id) = send(gw.addr, "a", b"{\"dead\":1}").await.unwrap();
    let (_, pending_id) = send(gw.addr, "b", b"{\"pending\":1}").await.unwrap();
    let (dead_id, pending_id) = (dead_id.unwrap(), pending_id.unwrap());
    assert!(wait_for(Duration::from_secs(5), || gone.count() == 1).await);

    let stats = || {
        let out = hookgate(&["spool", "stats", "--json", "--config", cfg]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    assert!(
        wait_for(Duration::from_secs(5), || stats()["routes"][0]["dead"] == 1).await,
        "{}",
        stats()
    );
    let s = stats();
    assert_eq!(s["routes"][0]["route"], "a");
    assert_eq!(s["routes"][1]["route"], "b");
    assert_eq!(s["routes"][1]["pending"], 1);

    let out = hookgate(&[
        "spool", "list", "--state", "dead", "--json", "--config", cfg,
    ]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], dead_id.as_str());
    assert_eq!(list[0]["last_status"], 410);
    let text = hookgate(&["spool", "list", "--config", cfg]);
    assert_eq!(String::from_utf8_lossy(&text.stdout).lines().count(), 2);

    let out = hookgate(&["spool", "show", &dead_id, "--config", cfg]);
    assert!(out.status.success());
    let shown = out.stdout;
    assert!(
        shown.starts_with(b"host: hooks.test\r\n"),
        "{}",
        String::from_utf8_lossy(&shown)
    );
    assert!(shown.ends_with(b"\r\n\r\n{\"dead\":1}"));
    let expected_id = format!("x-hookgate-delivery: {dead_id}\r\n");
    assert!(String::from_utf8_lossy(&shown).contains(&expected_id));

    // Retry the dead one: the app answers now; the gateway picks it up.
    gone.set(Behaviour::Respond);
    let t = Instant::now();
    let out = hookgate(&["spool", "retry", &dead_id, "--config", cfg]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(wait_for(Duration::from_secs(3), || gone.count() == 2).await);
    println!("retry picked up after {:?}", t.elapsed());
    assert!(t.elapsed() < Duration::from_millis(1500));
    assert_eq!(
        gone.received()[1].header("x-hookgate-delivery"),
        Some(dead_id.as_str())
    );

    // Drop: --route needs --state dead; ids work for pending ones.
    let out = hookgate(&["spool", "drop", "--route", "b", "--config", cfg]);
    assert_eq!(out.status.code(), Some(1));
    let out = hookgate(&[
        "spool", "drop", "--route", "b", "--state", "dead", "--config", cfg,
    ]);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("0 record(s) dropped"));
    let out = hookgate(&["spool", "drop", &pending_id, "--config", cfg]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("1 record(s) dropped"));

    // Errors: exit 1 and one clear line.
    let out = hookgate(&["spool", "show", "0190-nope", "--config", cfg]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "hookgate spool: no record with id 0190-nope in the spool\n"
    );
    let out = hookgate(&["spool", "retry", "0190-nope", "--config", cfg]);
    assert_eq!(out.status.code(), Some(1));
    signal(gw.child.id(), "TERM");
    assert!(wait_exit(&mut gw.child, Duration::from_secs(5)).is_some());

    let other = tempfile::tempdir().unwrap();
    let missing = write_config(other.path(), &route("a", down, "on_failure"), "");
    let out = hookgate(&["spool", "stats", "--config", missing.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(err.contains("spool.db: no spool database here"), "{err}");
    assert!(
        !other.path().join("spool.db").exists(),
        "the CLI never creates one"
    );
}
