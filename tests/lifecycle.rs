//! Operations (issue 4, SPEC §5 and the limits of §2–3), tested on the real
//! `hookgate run` process: systemd notifications on a Unix datagram socket,
//! SIGHUP reload, SIGTERM drain, slowloris, the connection cap and the
//! header limits.
//!
//! Synchronisation never sleeps on the gateway: start-up is the READY=1
//! datagram plus the "hookgate serving" log line (which carries the bound
//! addresses), a reload is the RELOADING=1 … READY=1 pair, a stop is
//! STOPPING=1 and the process exit. "Eventually" conditions are bounded
//! polling loops.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixDatagram};
use tokio_rustls::TlsConnector;

const BIN: &str = env!("CARGO_BIN_EXE_hookgate");
const BODY: &[u8] = br#"{"event":"generation.completed","generation_id":"lifecycle"}"#;

// ---------------------------------------------------------------------------
// Configuration.

/// The knobs these tests turn; `render` writes the TOML. Route "a"
/// (/webhooks/a, SECRET_A) is always present; `extra` is appended verbatim
/// (more routes).
#[derive(Clone)]
struct Cfg {
    upstream: SocketAddr,
    listen: String,
    shutdown_timeout: &'static str,
    request_timeout: &'static str,
    upstream_timeout: &'static str,
    max_connections: usize,
    tls: Option<(PathBuf, PathBuf)>,
    extra: String,
}

impl Cfg {
    fn new(upstream: SocketAddr) -> Cfg {
        Cfg {
            upstream,
            listen: "127.0.0.1:0".into(),
            shutdown_timeout: "10s",
            request_timeout: "5s",
            upstream_timeout: "5s",
            max_connections: 10000,
            tls: None,
            extra: String::new(),
        }
    }

    fn render(&self) -> String {
        let tls = self.tls.as_ref().map_or(String::new(), |(cert, key)| {
            format!(
                "[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
                cert.display(),
                key.display()
            )
        });
        format!(
            r#"[server]
listen = "{listen}"
shutdown_timeout = "{shutdown}"
{tls}
[admin]
listen = "127.0.0.1:0"

[limits]
request_timeout = "{request}"
upstream_timeout = "{upstream_timeout}"
max_connections = {max}

[[route]]
name = "a"
path = "/webhooks/a"
upstream = "http://{upstream}"
secret = {{ env = "SECRET_A" }}
{extra}"#,
            listen = self.listen,
            shutdown = self.shutdown_timeout,
            request = self.request_timeout,
            upstream_timeout = self.upstream_timeout,
            max = self.max_connections,
            upstream = self.upstream,
            extra = self.extra,
        )
    }
}

/// A second route "b" on /webhooks/b whose secret comes from env var `var`.
fn route_b(upstream: SocketAddr, var: &str) -> String {
    format!(
        "\n[[route]]\nname = \"b\"\npath = \"/webhooks/b\"\nupstream = \"http://{upstream}\"\nsecret = {{ env = \"{var}\" }}\n"
    )
}

fn signed(path: &str, secret: &str, extra: &str) -> Vec<u8> {
    post(path, Some(&sign(secret, BODY)), BODY, extra)
}

// ---------------------------------------------------------------------------
// The gateway process.

struct Hookgate {
    child: Child,
    pid: u32,
    addr: SocketAddr,
    admin: SocketAddr,
    config: PathBuf,
    notify: UnixDatagram,
    /// The first datagram (READY=1 …).
    ready: String,
    log: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Hookgate {
    /// Writes `config`, starts `hookgate run` with NOTIFY_SOCKET pointing at a
    /// datagram socket bound here, and returns once READY=1 has arrived and
    /// the "hookgate serving" line gave the bound addresses.
    async fn start(config: &str) -> Hookgate {
        let dir = tempfile::tempdir().unwrap();
        Hookgate::start_in(dir, config).await
    }

    async fn start_in(dir: tempfile::TempDir, config: &str) -> Hookgate {
        let path = dir.path().join("hookgate.toml");
        std::fs::write(&path, config).unwrap();
        let sock = dir.path().join("notify.sock");
        let notify = UnixDatagram::bind(&sock).unwrap();
        let mut child = Command::new(BIN)
            .args(["run", "--log-format", "json", "--config"])
            .arg(&path)
            .env_clear()
            .env("SECRET_A", SECRET_A)
            .env("SECRET_B", SECRET_B)
            .env("NOTIFY_SOCKET", &sock)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (serving_tx, serving_rx) = tokio::sync::oneshot::channel::<String>();
        {
            let log = log.clone();
            let stderr = child.stderr.take().unwrap();
            std::thread::spawn(move || {
                let mut serving_tx = Some(serving_tx);
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if line.contains("hookgate serving") {
                        if let Some(tx) = serving_tx.take() {
                            let _ = tx.send(line.clone());
                        }
                    }
                    log.lock().unwrap().push(line);
                }
            });
        }
        let ready = match recv_datagram(&notify, Duration::from_secs(10)).await {
            Some(d) => d,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "no READY=1 within 10 s; log:\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
        };
        // READY=1 is sent after the line is written; the reader thread may
        // still be on its way to it.
        let line = tokio::time::timeout(Duration::from_secs(5), serving_rx)
            .await
            .expect("no \"hookgate serving\" line")
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let addr = v["listen"].as_str().unwrap().parse().unwrap();
        let admin = v["admin"].as_str().unwrap().parse().unwrap();
        Hookgate {
            child,
            pid,
            addr,
            admin,
            config: path,
            notify,
            ready,
            log,
            _dir: dir,
        }
    }

    fn write_config(&self, text: &str) {
        std::fs::write(&self.config, text).unwrap();
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([format!("-{sig}"), self.pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} {} failed", self.pid);
    }

    /// The next notification datagram, within 10 s.
    async fn next_notify(&self) -> String {
        recv_datagram(&self.notify, Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("no notification within 10 s; log:\n{}", self.log_text()))
    }

    /// SIGHUP, then waits for RELOADING=1 (with MONOTONIC_USEC) and READY=1;
    /// returns both datagrams.
    async fn reload(&self) -> (String, String) {
        self.signal("HUP");
        let reloading = self.next_notify().await;
        assert_datagram(&reloading, "RELOADING=1", &["MONOTONIC_USEC"]);
        let ready = self.next_notify().await;
        assert_datagram(&ready, "READY=1", &["STATUS"]);
        (reloading, ready)
    }

    async fn metrics(&self) -> String {
        let (resp, _) = raw(
            self.admin,
            b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(resp.status, 200);
        String::from_utf8(resp.body).unwrap()
    }

    /// The value of one series (`name{labels}` exactly as exposed); 0 when
    /// absent.
    async fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics().await, series)
    }

    /// Waits up to `within` for the process to exit.
    async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "hookgate still running after {within:?}; log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Open file descriptors of the gateway process.
    fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid))
            .unwrap()
            .count()
    }

    fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits (bounded) for a log line containing `needle`.
    async fn wait_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(l) = self.log.lock().unwrap().iter().find(|l| l.contains(needle)) {
                return l.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no log line containing {needle:?}; log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Hookgate {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

async fn recv_datagram(sock: &UnixDatagram, within: Duration) -> Option<String> {
    let mut buf = vec![0u8; 4096];
    match tokio::time::timeout(within, sock.recv(&mut buf)).await {
        Ok(Ok(n)) => Some(String::from_utf8(buf[..n].to_vec()).unwrap()),
        _ => None,
    }
}

/// `KEY=value` fields of a notification datagram, in order.
fn fields(datagram: &str) -> Vec<(&str, &str)> {
    datagram
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.split_once('=').unwrap_or((l, "")))
        .collect()
}

/// The datagram starts with `first` and its other fields are only `others`.
fn assert_datagram(datagram: &str, first: &str, others: &[&str]) {
    let f = fields(datagram);
    assert!(!f.is_empty(), "empty datagram");
    assert_eq!(format!("{}={}", f[0].0, f[0].1), first, "{datagram:?}");
    for (k, _) in &f[1..] {
        assert!(others.contains(k), "unexpected field {k} in {datagram:?}");
    }
}

fn field<'a>(datagram: &'a str, key: &str) -> Option<&'a str> {
    fields(datagram)
        .into_iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

const RELOAD_FAILURES: &str = "hookgate_config_reloads_total{result=\"failure\"}";
const RELOAD_SUCCESSES: &str = "hookgate_config_reloads_total{result=\"success\"}";

// ---------------------------------------------------------------------------
// Clients that report failures instead of panicking.

/// One request on a new connection; any failure is returned as text.
async fn try_request(addr: SocketAddr, request: &[u8]) -> Result<RawResponse, String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .write_all(request)
        .await
        .map_err(|e| format!("write: {e}"))?;
    try_read_response(&mut stream, Duration::from_secs(10)).await
}

/// A valid webhook to /webhooks/a on a new connection; its status.
async fn post_a(addr: SocketAddr) -> u16 {
    let (resp, _) = raw(addr, &signed("/webhooks/a", SECRET_A, "")).await;
    resp.status
}

/// How a connection we expect the server to drop actually ended.
#[derive(Debug, PartialEq)]
enum Ending {
    /// EOF or reset with no byte received.
    ClosedSilently,
    /// Closed after sending these bytes.
    ClosedAfter(String),
    /// Still open after the wait.
    Open,
}

async fn ending<S: AsyncRead + Unpin>(stream: &mut S, within: Duration) -> Ending {
    let deadline = tokio::time::Instant::now() + within;
    let mut got = Vec::new();
    loop {
        let mut buf = [0u8; 4096];
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return Ending::Open,
            Ok(Ok(0)) | Ok(Err(_)) if got.is_empty() => return Ending::ClosedSilently,
            Ok(Ok(0)) | Ok(Err(_)) => {
                return Ending::ClosedAfter(String::from_utf8_lossy(&got).into_owned())
            }
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

// ---------------------------------------------------------------------------
// TLS.

struct TestCert {
    pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

fn make_cert() -> TestCert {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    TestCert {
        pem: ck.cert.pem(),
        key_pem: ck.signing_key.serialize_pem(),
        der: ck.cert.der().clone(),
    }
}

/// A TLS client that trusts only `cert`.
fn connector(cert: &TestCert) -> TlsConnector {
    tls_connector(cert.der.clone(), &[b"http/1.1"])
}

/// A valid webhook to /webhooks/a over a new TLS connection.
async fn tls_post_a(addr: SocketAddr, connector: &TlsConnector) -> Result<u16, String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))?;
    tls.write_all(&signed("/webhooks/a", SECRET_A, "Connection: close\r\n"))
        .await
        .map_err(|e| format!("write: {e}"))?;
    try_read_response(&mut tls, Duration::from_secs(10))
        .await
        .map(|r| r.status)
}

// ---------------------------------------------------------------------------
// 1. systemd notifications.

/// Under `Type=notify` the gateway tells systemd the truth, in this exact
/// order: READY=1 (with STATUS) once the listeners are bound; around a
/// SIGHUP, RELOADING=1 with MONOTONIC_USEC (a CLOCK_MONOTONIC reading in µs,
/// checked against our own clock between two reloads) then READY=1 — for a
/// successful reload and for a failed one alike; STOPPING=1 on SIGTERM; then
/// exit 0 with nothing else sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_sequence_ready_reloading_ready_stopping() {
    let upstream = Upstream::start(Behaviour::Respond).await;
    let cfg = Cfg::new(upstream.addr);
    let mut gw = Hookgate::start(&cfg.render()).await;
    assert_datagram(&gw.ready, "READY=1", &["STATUS"]);
    eprintln!("start: {:?}", gw.ready);
    assert_eq!(post_a(gw.addr).await, 201);

    // A successful reload.
    let sent1 = Instant::now();
    let (reloading1, ready1) = gw.reload().await;
    let got1 = Instant::now();
    eprintln!("reload ok: {reloading1:?} then {ready1:?}");
    let usec1: u64 = field(&reloading1, "MONOTONIC_USEC")
        .unwrap()
        .parse()
        .unwrap();
    assert!(usec1 > 0);
    let status = field(&ready1, "STATUS").unwrap_or("");
    assert!(status.contains("ok"), "{ready1:?}");

    // A failed reload is bracketed the same way.
    gw.write_config("[server\nlisten = ");
    let sent2 = Instant::now();
    let (reloading2, ready2) = gw.reload().await;
    let got2 = Instant::now();
    eprintln!("reload failed: {reloading2:?} then {ready2:?}");
    let usec2: u64 = field(&reloading2, "MONOTONIC_USEC")
        .unwrap()
        .parse()
        .unwrap();
    let status = field(&ready2, "STATUS").unwrap_or("");
    assert!(status.to_lowercase().contains("fail"), "{ready2:?}");
    // MONOTONIC_USEC advanced by what our monotonic clock saw, give or take
    // the window between each kill and the datagram's arrival.
    let reported = Duration::from_micros(usec2.checked_sub(usec1).unwrap());
    let min = sent2.duration_since(got1);
    let max = got2.duration_since(sent1);
    assert!(
        reported >= min && reported <= max,
        "MONOTONIC_USEC advanced {reported:?}, expected between {min:?} and {max:?}"
    );
    assert_eq!(post_a(gw.addr).await, 201);

    gw.signal("TERM");
    let stopping = gw.next_notify().await;
    eprintln!("stop: {stopping:?}");
    assert_datagram(&stopping, "STOPPING=1", &["STATUS"]);
    let status = gw.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{}", gw.log_text());
    let mut buf = [0u8; 256];
    match gw.notify.try_recv(&mut buf) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!(
            "unexpected datagram after STOPPING=1: {:?}",
            other.map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
        ),
    }
}

// ---------------------------------------------------------------------------
// 2. Reload.

/// A route added to the file goes live on SIGHUP without a restart: 404
/// before, forwarded (201 from the upstream, which saw /webhooks/b) once
/// READY=1 follows the reload; the success counter moves by one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_brings_a_new_route_live() {
    let upstream = Upstream::start(Behaviour::Respond).await;
    let mut cfg = Cfg::new(upstream.addr);
    let gw = Hookgate::start(&cfg.render()).await;
    let (resp, _) = raw(gw.addr, &signed("/webhooks/b", SECRET_B, "")).await;
    assert_eq!(resp.status, 404);
    let successes = gw.metric(RELOAD_SUCCESSES).await;

    cfg.extra = route_b(upstream.addr, "SECRET_B");
    gw.write_config(&cfg.render());
    gw.reload().await;

    let (resp, _) = raw(gw.addr, &signed("/webhooks/b", SECRET_B, "")).await;
    assert_eq!(resp.status, 201);
    assert_eq!(resp.body, UPSTREAM_BODY);
    let received = upstream.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].target, "/webhooks/b");
    assert_eq!(post_a(gw.addr).await, 201);
    assert_eq!(gw.metric(RELOAD_SUCCESSES).await, successes + 1.0);
    assert_eq!(gw.metric(RELOAD_FAILURES).await, 0.0);
    gw.wait_log("configuration reloaded").await;
}

/// Each broken new config — bad TOML, a secret env var that is not set, a
/// changed `server.listen` — is refused: right after the READY=1 that ends
/// the reload, the old config still forwards a valid webhook, nothing of the
/// new file (its extra route "b") is live, the failure counter moves by one
/// and the log says why in one line. A good file afterwards still reloads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_reloads_keep_the_old_config_serving() {
    let upstream = Upstream::start(Behaviour::Respond).await;
    let cfg = Cfg::new(upstream.addr);
    let gw = Hookgate::start(&cfg.render()).await;
    let last_success = gw
        .metric("hookgate_config_last_reload_success_timestamp_seconds")
        .await;
    assert!(last_success > 0.0);

    let with_b = |var: &str| Cfg {
        extra: route_b(upstream.addr, var),
        ..cfg.clone()
    };
    let bad_toml = with_b("SECRET_B")
        .render()
        .replace("name = \"b\"", "name = \"b");
    let missing_secret = with_b("HOOKGATE_TEST_UNSET_SECRET").render();
    let moved = Cfg {
        listen: "127.0.0.1:1".into(),
        ..with_b("SECRET_B")
    }
    .render();
    let cases = [
        ("bad TOML", bad_toml, "hookgate.toml:"),
        (
            "missing secret env",
            missing_secret,
            "HOOKGATE_TEST_UNSET_SECRET",
        ),
        ("changed server.listen", moved, "restart"),
    ];
    for (i, (name, text, says)) in cases.iter().enumerate() {
        gw.write_config(text);
        let (_, ready) = gw.reload().await;
        assert_eq!(post_a(gw.addr).await, 201, "{name}: old config not serving");
        let (resp, _) = raw(gw.addr, &signed("/webhooks/b", SECRET_B, "")).await;
        assert_eq!(
            resp.status, 404,
            "{name}: part of the broken config went live"
        );
        assert_eq!(
            gw.metric(RELOAD_FAILURES).await,
            (i + 1) as f64,
            "{name}: failure counter"
        );
        let line = gw.wait_log(says).await;
        assert!(line.contains("reload failed"), "{name}: {line}");
        assert!(ready.contains("FAILED"), "{name}: {ready:?}");
        eprintln!("{name}: {line}");
    }
    assert_eq!(
        gw.metric("hookgate_config_last_reload_success_timestamp_seconds")
            .await,
        last_success
    );
    assert_eq!(upstream.count(), cases.len());

    gw.write_config(&with_b("SECRET_B").render());
    gw.reload().await;
    let (resp, _) = raw(gw.addr, &signed("/webhooks/b", SECRET_B, "")).await;
    assert_eq!(resp.status, 201);
}

/// TLS: a reload whose key no longer matches the certificate (the key of a
/// second generated certificate) is refused; right after it, a new TLS
/// connection still handshakes with the old certificate and gets its webhook
/// forwarded, and the failure counter moves by one. Once the matching
/// certificate is written too, the next reload succeeds and new connections
/// are served with the new certificate only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mismatched_cert_reload_keeps_the_old_certificate() {
    let upstream = Upstream::start(Behaviour::Respond).await;
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let (one, two) = (make_cert(), make_cert());
    std::fs::write(&cert_path, &one.pem).unwrap();
    std::fs::write(&key_path, &one.key_pem).unwrap();
    let cfg = Cfg {
        tls: Some((cert_path.clone(), key_path.clone())),
        ..Cfg::new(upstream.addr)
    };
    let gw = Hookgate::start_in(dir, &cfg.render()).await;
    let (trust_one, trust_two) = (connector(&one), connector(&two));
    assert_eq!(tls_post_a(gw.addr, &trust_one).await, Ok(201));

    std::fs::write(&key_path, &two.key_pem).unwrap();
    let (_, ready) = gw.reload().await;
    assert_eq!(tls_post_a(gw.addr, &trust_one).await, Ok(201));
    assert_eq!(gw.metric(RELOAD_FAILURES).await, 1.0);
    assert!(ready.contains("FAILED"), "{ready:?}");
    let line = gw.wait_log("does not match").await;
    eprintln!("mismatched key: {line}");

    std::fs::write(&cert_path, &two.pem).unwrap();
    gw.reload().await;
    assert_eq!(tls_post_a(gw.addr, &trust_two).await, Ok(201));
    let old = tls_post_a(gw.addr, &trust_one).await;
    assert!(
        matches!(&old, Err(e) if e.starts_with("TLS handshake")),
        "{old:?}"
    );
    assert_eq!(gw.metric(RELOAD_FAILURES).await, 1.0);
    assert_eq!(upstream.count(), 3);
}

/// A request in flight across a reload finishes on the config it started
/// with: the upstream holds it for 1 s, meanwhile a reload removes its
/// route (a new request to it now gets 404), and the in-flight one still
/// gets the upstream's 201.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_in_flight_across_a_reload_completes() {
    let upstream = Upstream::start(Behaviour::Delay(Duration::from_secs(1))).await;
    let cfg = Cfg::new(upstream.addr);
    let gw = Hookgate::start(&cfg.render()).await;
    let addr = gw.addr;
    let in_flight =
        tokio::spawn(async move { try_request(addr, &signed("/webhooks/a", SECRET_A, "")).await });
    let deadline = Instant::now() + Duration::from_secs(5);
    while upstream.count() < 1 {
        assert!(
            Instant::now() < deadline,
            "request never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // The new config has only route "b" (path-swapped text of the same file).
    let only_b = cfg
        .render()
        .replace("name = \"a\"", "name = \"b\"")
        .replace("/webhooks/a", "/webhooks/b")
        .replace("SECRET_A", "SECRET_B");
    gw.write_config(&only_b);
    let reloaded = Instant::now();
    gw.reload().await;
    eprintln!("reload took {:?}", reloaded.elapsed());
    assert!(
        !in_flight.is_finished(),
        "the in-flight request ended early"
    );
    let (resp, _) = raw(gw.addr, &signed("/webhooks/a", SECRET_A, "")).await;
    assert_eq!(resp.status, 404, "the reload did not apply");

    let resp = in_flight.await.unwrap().unwrap();
    assert_eq!(resp.status, 201);
    assert_eq!(resp.body, UPSTREAM_BODY);
    assert_eq!(upstream.count(), 1);
}

/// 50 SIGHUPs in a row (each awaited to its READY=1), alternating between
/// two valid configs, while a client keeps sending valid webhooks — on new
/// connections and on keep-alive ones — give no non-2xx and no dropped
/// connection; all 50 reloads count as successes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_reloads_under_traffic_drop_nothing() {
    let upstream = Upstream::start(Behaviour::Respond).await;
    let cfg_a = Cfg::new(upstream.addr);
    let cfg_b = Cfg {
        upstream_timeout: "4s",
        extra: route_b(upstream.addr, "SECRET_B"),
        ..cfg_a.clone()
    };
    let gw = Hookgate::start(&cfg_a.render()).await;
    let successes = gw.metric(RELOAD_SUCCESSES).await;

    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let (stop, addr) = (stop.clone(), gw.addr);
        tokio::spawn(async move {
            let mut outcomes: Vec<Result<u16, String>> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                // Five requests on one keep-alive connection.
                let mut stream = match TcpStream::connect(addr).await {
                    Ok(s) => s,
                    Err(e) => {
                        outcomes.push(Err(format!("connect: {e}")));
                        continue;
                    }
                };
                for _ in 0..5 {
                    let sent = stream
                        .write_all(&signed("/webhooks/a", SECRET_A, ""))
                        .await
                        .map_err(|e| format!("write: {e}"));
                    let outcome = match sent {
                        Ok(()) => try_read_response(&mut stream, Duration::from_secs(5))
                            .await
                            .map(|r| r.status),
                        Err(e) => Err(e),
                    };
                    let failed = outcome.is_err();
                    outcomes.push(outcome);
                    if failed {
                        break;
                    }
                }
            }
            outcomes
        })
    };
    // Let the client get going before the first HUP.
    let deadline = Instant::now() + Duration::from_secs(5);
    while upstream.count() < 5 {
        assert!(Instant::now() < deadline, "client never got going");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let started = Instant::now();
    for i in 0..50 {
        let next = if i % 2 == 0 { &cfg_b } else { &cfg_a };
        gw.write_config(&next.render());
        let before = upstream.count();
        gw.reload().await;
        // At least one webhook between this reload and the next.
        let deadline = Instant::now() + Duration::from_secs(5);
        while upstream.count() == before {
            assert!(Instant::now() < deadline, "client stalled after reload {i}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let outcomes = client.await.unwrap();
    let bad: Vec<_> = outcomes.iter().filter(|o| **o != Ok(201)).collect();
    eprintln!(
        "50 reloads in {took:?}; {} webhooks sent meanwhile, {} not 201",
        outcomes.len(),
        bad.len()
    );
    assert!(bad.is_empty(), "{bad:?}");
    assert!(
        outcomes.len() >= 50,
        "too little traffic: {}",
        outcomes.len()
    );
    assert_eq!(upstream.count(), outcomes.len());
    assert_eq!(gw.metric(RELOAD_SUCCESSES).await, successes + 50.0);
    assert_eq!(gw.metric(RELOAD_FAILURES).await, 0.0);
}

// ---------------------------------------------------------------------------
// 3. Drain.

/// SIGTERM with 5 requests in flight to an upstream that answers after 2 s
/// (and one idle keep-alive connection, and one connection that has sent
/// nothing yet): STOPPING=1 at once, a new connection is refused (or closed
/// without a response), all 5 complete with the upstream's 201 and
/// `Connection: close`, the idle and the silent connections are closed, and
/// the process exits 0 shortly after the last response — far from the 10 s
/// shutdown_timeout and request_timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_then_exits() {
    const N: usize = 5;
    let upstream = Upstream::start(Behaviour::Delay(Duration::from_secs(2))).await;
    let cfg = Cfg {
        shutdown_timeout: "10s",
        ..Cfg::new(upstream.addr)
    };
    let mut gw = Hookgate::start(&cfg.render()).await;

    // An idle keep-alive connection (its request forwarded, answered).
    let (resp, mut idle) = raw(gw.addr, &signed("/webhooks/a", SECRET_A, "")).await;
    assert_eq!(resp.status, 201);
    // Connected, not a byte sent: HTTP/1 or HTTP/2 is not known yet.
    let mut silent = TcpStream::connect(gw.addr).await.unwrap();

    let clients: Vec<_> = (0..N)
        .map(|_| {
            let addr = gw.addr;
            tokio::spawn(async move {
                let r = try_request(addr, &signed("/webhooks/a", SECRET_A, "")).await;
                (r, Instant::now())
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    while upstream.count() < N + 1 {
        assert!(
            Instant::now() < deadline,
            "requests never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let in_flight = gw.metric("hookgate_requests_in_flight").await;

    let term = Instant::now();
    gw.signal("TERM");
    let stopping = gw.next_notify().await;
    assert_datagram(&stopping, "STOPPING=1", &["STATUS"]);

    // A new connection after STOPPING=1 is never served.
    let newcomer = match TcpStream::connect(gw.addr).await {
        Err(e) => format!("refused ({e})"),
        Ok(mut s) => {
            let _ = s.write_all(&signed("/webhooks/a", SECRET_A, "")).await;
            match ending(&mut s, Duration::from_secs(5)).await {
                Ending::ClosedSilently => "accepted by the kernel, closed without response".into(),
                other => panic!("a connection made after SIGTERM got {other:?}"),
            }
        }
    };
    let idle_end = ending(&mut idle, Duration::from_secs(5)).await;
    let idle_closed_after = term.elapsed();
    let silent_end = ending(&mut silent, Duration::from_secs(5)).await;
    let silent_closed_after = term.elapsed();

    let mut completed = 0;
    let mut last_response = term;
    for c in clients {
        let (r, at) = c.await.unwrap();
        let resp = r.unwrap_or_else(|e| panic!("in-flight request failed: {e}"));
        assert_eq!(resp.status, 201);
        assert_eq!(resp.body, UPSTREAM_BODY);
        assert_eq!(resp.header("connection"), Some("close"), "{}", resp.head);
        completed += 1;
        last_response = last_response.max(at);
    }
    let status = gw.wait_exit(Duration::from_secs(12)).await;
    let exited = term.elapsed();
    eprintln!(
        "drain: {in_flight} requests in flight at SIGTERM (upstream answers after 2 s, \
         shutdown_timeout 10s); {completed}/{N} completed with 201, last at {:?} after SIGTERM; \
         new connection: {newcomer}; idle keep-alive: {idle_end:?} after {idle_closed_after:?}; \
         silent: {silent_end:?} after {silent_closed_after:?}; exit {:?} at {exited:?} after SIGTERM",
        last_response.duration_since(term),
        status.code()
    );
    assert_eq!(in_flight, N as f64);
    assert_eq!(completed, N);
    assert_eq!(idle_end, Ending::ClosedSilently);
    assert!(
        idle_closed_after < Duration::from_secs(1),
        "{idle_closed_after:?}"
    );
    assert_eq!(silent_end, Ending::ClosedSilently);
    assert!(
        silent_closed_after < Duration::from_secs(1),
        "{silent_closed_after:?}"
    );
    assert_eq!(status.code(), Some(0));
    assert!(exited < Duration::from_secs(5), "exit took {exited:?}");
    assert_eq!(upstream.count(), N + 1);
    gw.wait_log("hookgate stopped").await;
}

/// SIGTERM while requests wait on an upstream that never answers
/// (upstream_timeout 30s, shutdown_timeout 1s): the process does not wait
/// for them; it exits 0 at about the 1 s deadline and the stuck clients'
/// connections are closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_hung_upstream_exits_at_the_deadline() {
    const N: usize = 2;
    let upstream = Upstream::start(Behaviour::Hang).await;
    let cfg = Cfg {
        shutdown_timeout: "1s",
        upstream_timeout: "30s",
        ..Cfg::new(upstream.addr)
    };
    let mut gw = Hookgate::start(&cfg.render()).await;
    let clients: Vec<_> = (0..N)
        .map(|_| {
            let addr = gw.addr;
            tokio::spawn(async move {
                let r = try_request(addr, &signed("/webhooks/a", SECRET_A, "")).await;
                (r, Instant::now())
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    while upstream.count() < N {
        assert!(
            Instant::now() < deadline,
            "requests never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let in_flight = gw.metric("hookgate_requests_in_flight").await;
    let term = Instant::now();
    gw.signal("TERM");
    let status = gw.wait_exit(Duration::from_secs(10)).await;
    let exited = term.elapsed();
    let mut endings = Vec::new();
    for c in clients {
        let (r, at) = c.await.unwrap();
        endings.push((r.map(|resp| resp.status), at.duration_since(term)));
    }
    eprintln!(
        "drain with hung upstream: {in_flight} in flight at SIGTERM, shutdown_timeout 1s; \
         exit {:?} at {exited:?} after SIGTERM; clients: {endings:?}",
        status.code()
    );
    assert_eq!(in_flight, N as f64);
    assert_eq!(status.code(), Some(0), "{}", gw.log_text());
    assert!(
        exited >= Duration::from_millis(900) && exited < Duration::from_secs(3),
        "exit at {exited:?}, deadline 1 s"
    );
    for (r, _) in &endings {
        assert!(!matches!(r, Ok(s) if (200..300).contains(s)), "{endings:?}");
    }
    gw.wait_log("shutdown_timeout reached").await;
}

// ---------------------------------------------------------------------------
// 4. Slowloris.

/// 200 connections dribbling a request head one byte per second are each
/// closed around request_timeout (2 s) after their first byte, while a
/// normal client sends 10 valid webhooks during the attack and all are
/// forwarded; none of the slow requests reaches the upstream, and the
/// gateway's open file descriptors return to their pre-attack count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_are_cut_while_honest_traffic_flows() {
    const SLOW: usize = 200;
    let upstream = Upstream::start(Behaviour::Respond).await;
    let cfg = Cfg {
        request_timeout: "2s",
        ..Cfg::new(upstream.addr)
    };
    let gw = Hookgate::start(&cfg.render()).await;
    // Warm up: the pooled upstream connection is part of the baseline.
    assert_eq!(post_a(gw.addr).await, 201);
    let baseline = gw.fd_count();

    let attack_start = Instant::now();
    let slow: Vec<_> = (0..SLOW)
        .map(|_| {
            let addr = gw.addr;
            tokio::spawn(async move {
                let mut stream = TcpStream::connect(addr).await.unwrap();
                let opened = Instant::now();
                let head = signed("/webhooks/a", SECRET_A, "");
                let mut got = Vec::new();
                let mut sent = 0;
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    let mut buf = [0u8; 1024];
                    tokio::select! {
                        r = stream.read(&mut buf) => match r {
                            Ok(0) | Err(_) => return (opened.elapsed(), sent, got),
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        },
                        _ = tick.tick() => {
                            if opened.elapsed() > Duration::from_secs(12) {
                                return (Duration::MAX, sent, got);
                            }
                            if sent < head.len() && stream.write_all(&head[sent..sent + 1]).await.is_ok() {
                                sent += 1;
                            }
                        }
                    }
                }
            })
        })
        .collect();

    // Honest traffic during the attack.
    let mut honest = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let r = try_request(gw.addr, &signed("/webhooks/a", SECRET_A, "")).await;
        honest.push((r.map(|r| r.status), t.elapsed()));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let peak = gw.fd_count();

    let mut lifetimes = Vec::new();
    let mut answered = Vec::new();
    for s in slow {
        let (alive, sent, got) = s.await.unwrap();
        lifetimes.push(alive);
        if !got.is_empty() {
            answered.push((sent, String::from_utf8_lossy(&got).into_owned()));
        }
    }
    lifetimes.sort();
    let (min, max) = (lifetimes[0], lifetimes[SLOW - 1]);

    let deadline = Instant::now() + Duration::from_secs(5);
    let mut fds = gw.fd_count();
    while fds > baseline && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        fds = gw.fd_count();
    }
    eprintln!(
        "slowloris: {SLOW} connections closed after {min:?}..{max:?} (request_timeout 2s); \
         {} got bytes before the close (first: {:?}); honest: {honest:?}; \
         fds baseline {baseline}, peak {peak}, after {fds}; attack lasted {:?}",
        answered.len(),
        answered.first(),
        attack_start.elapsed()
    );
    for (r, took) in &honest {
        assert_eq!(r, &Ok(201), "honest webhook during the attack ({took:?})");
    }
    assert!(
        min >= Duration::from_millis(1900),
        "a slow connection was cut before request_timeout: {min:?}"
    );
    // 1 s until the second byte tells HTTP/1.1 from an HTTP/2 preface,
    // then request_timeout.
    assert!(
        max <= Duration::from_millis(3500),
        "a slow connection outlived request_timeout: {max:?}"
    );
    assert_eq!(upstream.count(), 11, "a slow request reached the upstream");
    assert!(
        fds <= baseline,
        "fds did not return to baseline: {baseline} before, {fds} after"
    );
}

/// A client too slow to send its headers (a head dribbled one byte every
/// 500 ms, request_timeout 1s) has its connection closed at request_timeout
/// with nothing forwarded. No 408 is written: hyper's header timeout closes
/// the connection without a response, as nginx does for
/// client_header_timeout (a departure from SPEC §2's "408", noted in the
/// README). Slow *bodies* do get 408 (reject.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_closed_at_request_timeout() {
    let upstream = Upstream::start(Behaviour::Respond).await;
    let cfg = Cfg {
        request_timeout: "1s",
        ..Cfg::new(upstream.addr)
    };
    let gw = Hookgate::start(&cfg.render()).await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let opened = Instant::now();
    let head = signed("/webhooks/a", SECRET_A, "");
    let mut sent = 0;
    let mut got = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let closed = loop {
        let mut buf = [0u8; 1024];
        tokio::select! {
            r = stream.read(&mut buf) => match r {
                Ok(0) | Err(_) => break opened.elapsed(),
                Ok(n) => got.extend_from_slice(&buf[..n]),
            },
            _ = tick.tick() => {
                assert!(opened.elapsed() < Duration::from_secs(8), "never closed");
                if stream.write_all(&head[sent..sent + 1]).await.is_ok() {
                    sent += 1;
                }
            }
        }
    };
    let got = String::from_utf8_lossy(&got);
    eprintln!("slow headers: closed after {closed:?}, {sent} bytes sent, received {got:?}");
    assert!(got.is_empty(), "closed after {closed:?} with {got:?}");
    assert!(
        closed >= Duration::from_millis(900) && closed <= Duration::from_millis(2500),
        "closed after {closed:?}, request_timeout is 1s"
    );
    assert_eq!(upstream.count(), 0);
}

/// Idle connections are closed at request_timeout (1 s here) whatever
/// stage they idle in, so none can hold a connection slot and a file
/// descriptor forever: (a) connected, nothing sent; (b) one byte "P" (a
/// possible HTTP/2 preface); (c) the HTTP/2 preface and an empty SETTINGS
/// frame, then no stream; (d) HTTP/1.1 keep-alive after one answered
/// webhook. Each must be closed within 4 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_at_request_timeout() {
    let upstream = Upstream::start(Behaviour::Respond).await;
    let cfg = Cfg {
        request_timeout: "1s",
        ..Cfg::new(upstream.addr)
    };
    let gw = Hookgate::start(&cfg.render()).await;
    let mut h2_hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    h2_hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    let variants: [(&str, Vec<u8>); 4] = [
        ("(a) nothing sent", Vec::new()),
        ("(b) one byte \"P\"", b"P".to_vec()),
        ("(c) HTTP/2 preface + SETTINGS, no stream", h2_hello),
        (
            "(d) HTTP/1.1 keep-alive after a webhook",
            signed("/webhooks/a", SECRET_A, ""),
        ),
    ];
    let tasks: Vec<_> = variants
        .into_iter()
        .map(|(name, bytes)| {
            let addr = gw.addr;
            tokio::spawn(async move {
                let mut stream = TcpStream::connect(addr).await.unwrap();
                stream.write_all(&bytes).await.unwrap();
                let opened = Instant::now();
                if name.starts_with("(d)") {
                    let resp = read_response(&mut stream).await;
                    assert_eq!(resp.status, 201);
                }
                let end = ending(&mut stream, Duration::from_secs(4)).await;
                (name, end, opened.elapsed())
            })
        })
        .collect();
    let mut still_open = Vec::new();
    for t in tasks {
        let (name, end, after) = t.await.unwrap();
        eprintln!("idle {name}: {end:?} after {after:?}");
        if end == Ending::Open {
            still_open.push(name);
        }
    }
    assert!(
        still_open.is_empty(),
        "still open 4 s after connect with request_timeout 1s: {still_open:?}"
    );
}

// ---------------------------------------------------------------------------
// 5. Connection cap.

/// With max_connections = 50 and 50 idle connections held open, the 51st
/// (sending a valid webhook) is closed at once without a response and
/// without reaching the upstream, and `hookgate_connections_rejected_total`
/// is 1; once the 50 are closed, new connections get their webhook
/// forwarded again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cap_closes_the_51st_and_recovers() {
    let upstream = Upstream::start(Behaviour::Respond).await;
    let cfg = Cfg {
        max_connections: 50,
        request_timeout: "10s",
        ..Cfg::new(upstream.addr)
    };
    let gw = Hookgate::start(&cfg.render()).await;
    let mut held = Vec::new();
    for _ in 0..50 {
        held.push(TcpStream::connect(gw.addr).await.unwrap());
    }
    // The accept loop takes connections in order: by the time it reaches
    // the 51st, the 50 before it hold every slot.
    let mut extra = TcpStream::connect(gw.addr).await.unwrap();
    let t = Instant::now();
    let _ = extra.write_all(&signed("/webhooks/a", SECRET_A, "")).await;
    let end = ending(&mut extra, Duration::from_secs(3)).await;
    let took = t.elapsed();
    eprintln!("51st connection: {end:?} after {took:?}");
    assert_eq!(end, Ending::ClosedSilently);
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert_eq!(gw.metric("hookgate_connections_rejected_total").await, 1.0);
    // The held connections are untouched.
    for s in held.iter_mut().take(3) {
        assert_eq!(ending(s, Duration::from_millis(100)).await, Ending::Open);
    }
    assert_eq!(upstream.count(), 0);

    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut attempts = 0;
    loop {
        attempts += 1;
        match try_request(gw.addr, &signed("/webhooks/a", SECRET_A, "")).await {
            Ok(resp) => {
                assert_eq!(resp.status, 201);
                break;
            }
            Err(e) => assert!(Instant::now() < deadline, "service did not resume: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("service resumed after {attempts} attempt(s)");
    assert_eq!(upstream.count(), 1);
}

// ---------------------------------------------------------------------------
// 6. Header limits.

/// 101 header fields → 431, a 17000-byte header value (head over 16 KiB) →
/// 431, both before anything is forwarded and with the connection closed;
/// the limits are limits, not lower: exactly 100 fields and a head just
/// under 16 KiB are forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_limits_answer_431() {
    let upstream = Upstream::start(Behaviour::Respond).await;
    let gw = Hookgate::start(&Cfg::new(upstream.addr).render()).await;
    // post() writes Host, Content-Type, X-Adsumo-Signature, Content-Length.
    let fillers =
        |n: usize| -> String { (0..n).map(|i| format!("X-Filler-{i}: {i}\r\n")).collect() };
    let cases: [(&str, String); 2] = [
        ("101 fields", fillers(97)),
        (
            "17000-byte value",
            format!("X-Big: {}\r\n", "v".repeat(17000)),
        ),
    ];
    for (name, extra) in &cases {
        let request = signed("/webhooks/a", SECRET_A, extra);
        let mut stream = TcpStream::connect(gw.addr).await.unwrap();
        stream.write_all(&request).await.unwrap();
        let resp = try_read_response(&mut stream, Duration::from_secs(5)).await;
        let end = ending(&mut stream, Duration::from_secs(3)).await;
        eprintln!(
            "{name} ({} bytes): {:?}, then {end:?}",
            request.len(),
            resp.as_ref().map(|r| r.head.clone())
        );
        assert_eq!(resp.map(|r| r.status), Ok(431), "{name}");
        assert_eq!(end, Ending::ClosedSilently, "{name}: connection not closed");
    }
    assert_eq!(upstream.count(), 0, "an oversized head was forwarded");

    let head_len = |extra: &str| signed("/webhooks/a", SECRET_A, extra).len() - BODY.len();
    let base = head_len("X-Big: \r\n");
    let just_under = format!("X-Big: {}\r\n", "v".repeat(16 * 1024 - 64 - base));
    let controls = [
        ("100 fields", fillers(96)),
        ("head just under 16 KiB", just_under),
    ];
    for (name, extra) in &controls {
        let r = try_request(gw.addr, &signed("/webhooks/a", SECRET_A, extra)).await;
        eprintln!(
            "{name} ({} byte head): {:?}",
            head_len(extra),
            r.as_ref().map(|r| r.status)
        );
        assert_eq!(r.map(|r| r.status), Ok(201), "{name}");
    }
    assert_eq!(upstream.count(), controls.len());
}

// ---------------------------------------------------------------------------
// 7. Descriptor exhaustion.

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the ")" of the command name: utime is the 12th, stime the 13th.
    let rest = stat.rsplit_once(')').unwrap().1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Sets the soft descriptor limit only: lowering the hard one could not be
/// undone without CAP_SYS_RESOURCE.
fn set_nofile(pid: u32, limit: usize) {
    let ok = Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--nofile={limit}:")])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "prlimit failed");
}

/// When accept() fails with EMFILE (descriptor limit reached), the accept
/// loop backs off instead of spinning: over one second with connections
/// waiting in the backlog the process uses little CPU, says why in the log,
/// and serves again once descriptors are free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptor_exhaustion_backs_off_and_recovers() {
    if Command::new("prlimit").arg("--version").output().is_err() {
        assert!(
            std::env::var("CI").is_err(),
            "prlimit (util-linux) is required in CI"
        );
        eprintln!("skipping: prlimit not found");
        return;
    }
    let upstream = Upstream::start(Behaviour::Respond).await;
    let gw = Hookgate::start(&Cfg::new(upstream.addr).render()).await;
    assert_eq!(post_a(gw.addr).await, 201);
    let baseline = gw.fd_count();
    set_nofile(gw.pid, baseline + 3);
    // More clients than descriptors left: the kernel completes their
    // handshakes; hookgate's accept() then fails with EMFILE.
    let mut held = Vec::new();
    for _ in 0..12 {
        held.push(TcpStream::connect(gw.addr).await.unwrap());
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !gw
        .log
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("accept failed"))
    {
        assert!(Instant::now() < deadline, "no \"accept failed\" line");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = cpu_ticks(gw.pid);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let used = cpu_ticks(gw.pid) - before;
    eprintln!("CPU while accept() fails with EMFILE: {used} ticks in 1 s");
    assert!(used < 30, "accept loop spun: {used} ticks (1/100 s) in 1 s");

    drop(held);
    set_nofile(gw.pid, 1024);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match try_request(gw.addr, &signed("/webhooks/a", SECRET_A, "")).await {
            Ok(r) if r.status == 201 => break,
            other => assert!(Instant::now() < deadline, "not serving again: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
