//! Test harness: a real gateway on 127.0.0.1:0, a recording upstream that
//! captures exactly what reached it on the wire, and raw/hyper clients.
#![allow(dead_code)] // each test crate uses a different part of the harness

pub mod pg;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hookgate::admin::Readiness;
use hookgate::config::Config;
use hookgate::metrics::Metrics;
use hookgate::proxy::Proxy;
use hookgate::spool::{worker, Spool, Store};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

pub const SECRET_A: &str = "whsec-test-a-0123456789abcdef";
pub const SECRET_B: &str = "whsec-test-b-fedcba9876543210";

pub fn env() -> HashMap<String, String> {
    [
        ("SECRET_A".to_string(), SECRET_A.to_string()),
        ("SECRET_B".to_string(), SECRET_B.to_string()),
    ]
    .into()
}

/// Hex HMAC-SHA256 of `body`, computed independently of the gateway's
/// verify path (hmac + sha2 directly).
pub fn sign(secret: &str, body: &[u8]) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

// ---------------------------------------------------------------------------
// Recording upstream.

/// One request as the upstream saw it on the wire.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub target: String,
    /// Header fields in wire order, names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// When the request was complete.
    pub at: tokio::time::Instant,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
    pub fn header_count(&self, name: &str) -> usize {
        self.headers.iter().filter(|(n, _)| n == name).count()
    }
}

#[derive(Debug, Clone, Copy)]
pub enum Behaviour {
    /// Answer 201 with a small JSON body and an `x-upstream` header.
    Respond,
    /// Read the request, never answer.
    Hang,
    /// Answer after a delay.
    Delay(Duration),
    /// Answer like `Respond` (keep-alive), then close the connection.
    RespondThenClose,
    /// Answer the n-th request received (counted over all connections,
    /// from 1) with the n-th status, the last one repeated; otherwise like
    /// `Respond`.
    Script(&'static [u16]),
    /// Write these exact bytes as the answer, then close the connection.
    Reply(&'static [u8]),
    /// Write these exact bytes as the answer and keep the connection for
    /// the next request.
    ReplyKeep(&'static [u8]),
    /// Answer 200 with a body of this many bytes, written as fast as the
    /// gateway takes it; `Upstream::aborted` counts answers whose write
    /// failed (the gateway closed the connection mid-body).
    Large(usize),
    /// Answer this status (empty body), with `Retry-After: secs` if given.
    Status(u16, Option<u64>),
}

pub const UPSTREAM_BODY: &[u8] = br#"{"received":true}"#;

pub struct Upstream {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
    /// Connections accepted so far.
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
    /// `Large` answers cut short because the gateway closed the connection.
    pub aborted: Arc<std::sync::atomic::AtomicUsize>,
    /// Connections this upstream has closed (or seen closed) so far.
    pub closed: Arc<std::sync::atomic::AtomicUsize>,
    behaviour: Arc<Mutex<Behaviour>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An address nothing listens on (a listener bound and closed): connecting
/// is refused until an [`Upstream`] is started there.
pub async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

impl Upstream {
    pub async fn start(behaviour: Behaviour) -> Upstream {
        Upstream::start_at("127.0.0.1:0".parse().unwrap(), behaviour).await
    }

    /// Changes how the following requests are answered.
    pub fn set(&self, behaviour: Behaviour) {
        *self.behaviour.lock().unwrap() = behaviour;
    }

    /// Starts listening on `addr` (e.g. one from [`closed_port`]: the app
    /// "comes back").
    pub async fn start_at(addr: SocketAddr, behaviour: Behaviour) -> Upstream {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let behaviour = Arc::new(Mutex::new(behaviour));
        let shared = behaviour.clone();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let log = requests.clone();
        let accepted = connections.clone();
        let aborted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let cut = aborted.clone();
        let closed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let ended = closed.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = stream.set_nodelay(true);
                let log = log.clone();
                // Connections end with the upstream (JoinSet aborts on drop).
                let served = serve_upstream_conn(stream, log, shared.clone(), cut.clone());
                let ended = ended.clone();
                conns.spawn(async move {
                    served.await;
                    ended.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                });
            }
        });
        Upstream {
            addr,
            requests,
            connections,
            aborted,
            closed,
            behaviour,
            task,
        }
    }

    /// Waits (yielding, no sleep) until this upstream has closed `n`
    /// connections; panics after 5 s.
    pub async fn wait_closed(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.closed.load(std::sync::atomic::Ordering::SeqCst) < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "upstream did not close"
            );
            tokio::task::yield_now().await;
        }
    }

    pub fn received(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}

async fn serve_upstream_conn(
    mut stream: TcpStream,
    log: Arc<Mutex<Vec<Recorded>>>,
    behaviour: Arc<Mutex<Behaviour>>,
    aborted: Arc<std::sync::atomic::AtomicUsize>,
) {
    let mut buf = Vec::new();
    loop {
        // Read until a full request head is buffered.
        let (head_len, mut rec, content_length) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 128];
            let mut req = httparse::Request::new(&mut headers);
            if let Ok(httparse::Status::Complete(n)) = req.parse(&buf) {
                let headers = lowercase_headers(req.headers);
                let cl = headers
                    .iter()
                    .find(|(n, _)| n == "content-length")
                    .map_or(0, |(_, v)| v.parse::<usize>().unwrap());
                let rec = Recorded {
                    method: req.method.unwrap().to_string(),
                    target: req.path.unwrap().to_string(),
                    headers,
                    body: Vec::new(),
                    at: tokio::time::Instant::now(),
                };
                break (n, rec, cl);
            }
            let mut chunk = [0u8; 16384];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        buf.drain(..head_len);
        while buf.len() < content_length {
            let mut chunk = vec![0u8; 65536];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        rec.body = buf.drain(..content_length).collect();
        rec.at = tokio::time::Instant::now();
        let nth = {
            let mut log = log.lock().unwrap();
            log.push(rec);
            log.len()
        };
        let behaviour = *behaviour.lock().unwrap();
        if let Behaviour::Status(code, retry_after) = behaviour {
            let extra = retry_after.map_or(String::new(), |s| format!("retry-after: {s}\r\n"));
            let head = format!("HTTP/1.1 {code} X\r\n{extra}content-length: 0\r\n\r\n");
            if stream.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            continue;
        }
        match behaviour {
            Behaviour::Hang => {
                // Keep the socket open and silent until the peer goes away.
                let mut sink = [0u8; 1024];
                while let Ok(n) = stream.read(&mut sink).await {
                    if n == 0 {
                        return;
                    }
                }
                return;
            }
            Behaviour::Delay(d) => tokio::time::sleep(d).await,
            Behaviour::Reply(bytes) => {
                let _ = stream.write_all(bytes).await;
                return;
            }
            Behaviour::ReplyKeep(bytes) => {
                if stream.write_all(bytes).await.is_err() {
                    return;
                }
                continue;
            }
            Behaviour::Large(len) => {
                let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\n\r\n");
                let chunk = vec![b'x'; 64 * 1024];
                let mut sent = 0;
                let mut ok = stream.write_all(head.as_bytes()).await.is_ok();
                while ok && sent < len {
                    let n = chunk.len().min(len - sent);
                    ok = stream.write_all(&chunk[..n]).await.is_ok();
                    sent += n;
                }
                if !ok {
                    aborted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    return;
                }
                continue;
            }
            Behaviour::Respond
            | Behaviour::RespondThenClose
            | Behaviour::Script(_)
            | Behaviour::Status(..) => {}
        }
        let status = match behaviour {
            Behaviour::Script(statuses) => statuses.get(nth - 1).or(statuses.last()).copied(),
            _ => None,
        };
        let status_line = match status {
            None | Some(201) => "201 Created".to_string(),
            Some(code) => format!("{code} Scripted"),
        };
        let head = format!(
            "HTTP/1.1 {status_line}\r\ncontent-type: application/json\r\nx-upstream: recorder\r\nconnection: keep-alive\r\ncontent-length: {}\r\n\r\n",
            UPSTREAM_BODY.len()
        );
        if stream.write_all(head.as_bytes()).await.is_err()
            || stream.write_all(UPSTREAM_BODY).await.is_err()
        {
            return;
        }
        if let Behaviour::RespondThenClose = behaviour {
            return;
        }
    }
}

// ---------------------------------------------------------------------------
// Gateway.

pub struct Gateway {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub proxy: Arc<Proxy>,
    /// The spool store (SQLite file or PostgreSQL), when the config has
    /// `[spool]`.
    pub store: Option<Arc<dyn Store>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Gateway {
    /// Starts the gateway on `config` (TOML text) with the test env.
    pub async fn start(config: &str) -> Gateway {
        let config = Config::from_toml_str(config, Path::new("test.toml"), &env())
            .unwrap_or_else(|e| panic!("test config invalid:\n{e}"));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let admin_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = admin_listener.local_addr().unwrap();
        let metrics = Arc::new(Metrics::new());
        metrics.config_loaded(true);
        let store = match &config.spool {
            Some(s) => Some(
                hookgate::spool::open(s, true)
                    .await
                    .unwrap_or_else(|e| panic!("{e}")),
            ),
            None => None,
        };
        let spool = store.clone().map(|s| Arc::new(Spool::new(s)));
        let proxy = Arc::new(Proxy::with_spool(config, metrics.clone(), spool.clone()));
        let ready = Arc::new(Readiness::default());
        ready.set(true);
        let (stop_worker, worker_stop) = tokio::sync::watch::channel(false);
        let mut redelivery = None;
        let mut gauges = None;
        if let Some(spool) = &spool {
            ready.watch_spool(spool.health.clone());
            redelivery = Some(tokio::spawn(worker::run(
                proxy.clone(),
                spool.clone(),
                worker_stop,
            )));
            gauges = Some(tokio::spawn(worker::gauges(proxy.clone(), spool.clone())));
        }
        tokio::spawn(hookgate::admin::serve(admin_listener, metrics, ready));
        let (stop, stopped) = oneshot::channel::<()>();
        let serve = hookgate::server::serve(listener, proxy.clone(), async move {
            let _ = stopped.await;
            let _ = stop_worker.send(true);
        });
        let task = tokio::spawn(async move {
            serve.await;
            if let Some(r) = redelivery {
                let _ = r.await;
            }
            if let Some(g) = gauges {
                g.abort();
            }
        });
        Gateway {
            addr,
            admin,
            proxy,
            store,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// GET `path` from the admin listener: (status, body).
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        admin_get(self.admin, path).await
    }

    /// GET /metrics from the admin listener.
    pub async fn metrics(&self) -> String {
        metrics_at(self.admin).await
    }

    /// Triggers shutdown and waits for `serve` to return.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
        if let Some(store) = self.store.take() {
            tokio::task::spawn_blocking(move || store.close())
                .await
                .unwrap();
        }
    }
}

/// The value of the sample line `name` (with its labels), if present.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Waits until every finished request has been recorded (in-flight back to
/// 0), then returns the exposition.
pub async fn settled_metrics(gw: &Gateway) -> String {
    for _ in 0..100 {
        let text = gw.metrics().await;
        if sample(&text, "hookgate_requests_in_flight") == Some(0.0) {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("requests still in flight");
}

/// GET /metrics from an admin listener (in-process or the binary's).
pub async fn metrics_at(admin: SocketAddr) -> String {
    let (resp, _) = raw(
        admin,
        b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    String::from_utf8(resp.body).unwrap()
}

/// The `[spool]` keys that choose the store for the spool tests, which run
/// once per backend from the same bodies (a matrix, not copies):
/// `tests/spool.rs` on SQLite (a file in `dir`), and `tests/spool_pg.rs`,
/// which includes that file, on PostgreSQL (a fresh database on this
/// binary's throwaway cluster, the URL passed by file like a secret). The
/// test binary's crate name picks. Without PostgreSQL installed the
/// `_pg` binary says so loudly and runs on SQLite.
pub fn spool_store(dir: &Path) -> String {
    if env!("CARGO_CRATE_NAME").ends_with("_pg") {
        if let Some(cluster) = pg::shared() {
            let url_file = dir.join("database-url");
            std::fs::write(&url_file, cluster.database()).unwrap();
            return format!(
                "backend = \"postgres\"\nurl = {{ file = \"{}\" }}\nlease = \"5s\"\n",
                url_file.display()
            );
        }
    }
    format!("path = \"{}\"\n", dir.join("spool.db").display())
}

/// A config with route "a" (SECRET_A) on /webhooks/a and route "b"
/// (SECRET_B) on /webhooks/b, both to `upstream`; `extra` is appended to
/// route "a".
pub fn two_routes(upstream: SocketAddr, extra_a: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
shutdown_timeout = "5s"

[limits]
request_timeout = "2s"
upstream_timeout = "2s"

[[route]]
name = "a"
path = "/webhooks/a"
upstream = "http://{upstream}"
secret = {{ env = "SECRET_A" }}
{extra_a}

[[route]]
name = "b"
path = "/webhooks/b"
upstream = "http://{upstream}"
secret = {{ env = "SECRET_B" }}
"#
    )
}

// ---------------------------------------------------------------------------
// Raw HTTP/1.1 client: full control over what goes on the wire.

#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    /// Status line and header fields as received.
    pub head: String,
    /// The same, byte for byte (obs-text included).
    pub raw_head: Vec<u8>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The header fields in wire order, names and values byte for byte as
    /// received.
    pub fn raw_fields(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut hs = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut hs);
        resp.parse(&self.raw_head).unwrap();
        resp.headers
            .iter()
            .map(|h| (h.name.as_bytes().to_vec(), h.value.to_vec()))
            .collect()
    }
}

/// Reads one response (head + Content-Length or chunked body) from `stream`,
/// panicking if none arrives within 10 s.
pub async fn read_response(stream: &mut TcpStream) -> RawResponse {
    try_read_response(stream, Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Reads one response (head + Content-Length or chunked body) from any
/// stream within `within`; a close, a read error or a timeout is returned
/// as text.
pub async fn try_read_response<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    within: Duration,
) -> Result<RawResponse, String> {
    try_read_buffered(stream, &mut Vec::new(), within).await
}

/// Like [`try_read_response`], keeping what arrived after the response in
/// `buf` (and starting from what it holds): for pipelined responses, and
/// an interim `100 Continue` read together with the final answer.
pub async fn try_read_buffered<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    within: Duration,
) -> Result<RawResponse, String> {
    let deadline = tokio::time::Instant::now() + within;
    let (n, status, headers) = loop {
        let mut hs = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut hs);
        if let Ok(httparse::Status::Complete(n)) = resp.parse(buf) {
            let headers = lowercase_headers(resp.headers);
            break (n, resp.code.unwrap_or(0), headers);
        }
        read_more(stream, buf, deadline, within).await?;
    };
    let raw_head = buf[..n].to_vec();
    let head = String::from_utf8_lossy(&raw_head).into_owned();
    let cl = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok());
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if let Some(cl) = cl {
        while buf.len() < n + cl {
            read_more(stream, buf, deadline, within).await?;
        }
        let body = buf[n..n + cl].to_vec();
        buf.drain(..n + cl);
        body
    } else if chunked {
        let end = loop {
            if let Some(end) = buf[n..].windows(5).position(|w| w == b"0\r\n\r\n") {
                break n + end + 5;
            }
            read_more(stream, buf, deadline, within).await?;
        };
        let body = dechunk(&buf[n..end]);
        buf.drain(..end);
        body
    } else {
        buf.drain(..n);
        Vec::new()
    };
    Ok(RawResponse {
        status,
        head,
        raw_head,
        headers,
        body,
    })
}

/// Parsed header fields as (lower-case name, value) in wire order.
fn lowercase_headers(headers: &[httparse::Header<'_>]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect()
}

/// A TLS client (aws-lc-rs, like the gateway) that trusts only `cert` and
/// offers `alpn`.
pub fn tls_connector(
    cert: rustls::pki_types::CertificateDer<'static>,
    alpn: &[&[u8]],
) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// Appends what the next read brings; EOF, errors and the deadline are
/// errors.
async fn read_more<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    deadline: tokio::time::Instant,
    within: Duration,
) -> Result<(), String> {
    let mut chunk = [0u8; 8192];
    match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
        Err(_) => Err(format!("no complete response within {within:?}")),
        Ok(Err(e)) => Err(format!("read error: {e}")),
        Ok(Ok(0)) => Err(format!(
            "connection closed; got {:?}",
            String::from_utf8_lossy(buf)
        )),
        Ok(Ok(got)) => {
            buf.extend_from_slice(&chunk[..got]);
            Ok(())
        }
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&data[..line_end]).unwrap().trim(), 16)
                .unwrap();
        data = &data[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// Sends `request` bytes on a new connection and reads one response.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> (RawResponse, TcpStream) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let response = read_response(&mut stream).await;
    (response, stream)
}

/// POSTs `body` signed with `sig` to `path` at `addr` over HTTP/2 with
/// prior knowledge (h2c, hyper's client): status, header fields, body.
pub async fn h2c_post(
    addr: SocketAddr,
    path: &str,
    sig: &str,
    body: &'static [u8],
) -> (u16, http::HeaderMap, bytes::Bytes) {
    use http_body_util::BodyExt;
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = http::Request::post(format!("http://hooks.test{path}"))
        .header("x-adsumo-signature", sig)
        .body(http_body_util::Full::new(bytes::Bytes::from_static(body)))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (parts.status.as_u16(), parts.headers, body)
}

/// Sends `request` `n` times on one keep-alive connection, pipelined in
/// batches, and counts the statuses of the responses (every response must
/// carry a Content-Length, as the gateway's own answers do).
pub async fn pipelined_statuses(addr: SocketAddr, request: &[u8], n: usize) -> HashMap<u16, usize> {
    const BATCH: usize = 64;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut counts = HashMap::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut sent = 0;
    while sent < n {
        let batch = BATCH.min(n - sent);
        stream.write_all(&request.repeat(batch)).await.unwrap();
        sent += batch;
        let mut parsed = 0;
        while parsed < batch {
            let mut hs = [httparse::EMPTY_HEADER; 32];
            let mut resp = httparse::Response::new(&mut hs);
            if let Ok(httparse::Status::Complete(head)) = resp.parse(&buf) {
                let len = resp
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<usize>().ok())
                    .expect("response without Content-Length");
                if buf.len() >= head + len {
                    *counts.entry(resp.code.unwrap_or(0)).or_insert(0) += 1;
                    buf.drain(..head + len);
                    parsed += 1;
                    continue;
                }
            }
            let mut chunk = [0u8; 65536];
            let got = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
                .await
                .expect("no response within 10 s")
                .unwrap();
            assert!(
                got > 0,
                "connection closed after {} of {n} responses",
                sent - batch + parsed
            );
            buf.extend_from_slice(&chunk[..got]);
        }
    }
    counts
}

/// True when the server closes the connection (EOF or reset) within 5 s.
pub async fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// A signed POST with the given extra header lines (each ending in \r\n).
pub fn post(path: &str, signature: Option<&str>, body: &[u8], extra: &str) -> Vec<u8> {
    let mut req =
        format!("POST {path} HTTP/1.1\r\nHost: hooks.test\r\nContent-Type: application/json\r\n");
    if let Some(sig) = signature {
        req.push_str(&format!("X-Adsumo-Signature: {sig}\r\n"));
    }
    req.push_str(extra);
    req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

// ---------------------------------------------------------------------------
// Prometheus' own binaries.

/// `promtool` or `prometheus`: `$ENV_VAR`, else where `.ci/run` unpacks
/// Debian's prometheus package (/opt/prometheus, or /opt/promtool from
/// before), else `PATH`. `None` if none of them runs `--version`.
pub fn prometheus_tool(env_var: &str, name: &str) -> Option<std::path::PathBuf> {
    let candidates = [
        std::env::var_os(env_var).map(Into::into),
        Some(Path::new("/opt/prometheus").join(name)),
        Some(Path::new("/opt/promtool").join(name)),
        Some(name.into()),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|p: &std::path::PathBuf| {
            std::process::Command::new(p)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
}

/// Like [`prometheus_tool`], but a missing tool is a skip (printed) outside
/// CI and a failure under `CI=true`, where `.ci/run` must have installed it.
pub fn require_prometheus_tool(
    env_var: &str,
    name: &str,
    test: &str,
) -> Option<std::path::PathBuf> {
    let found = prometheus_tool(env_var, name);
    if found.is_none() {
        assert!(
            std::env::var("CI").is_err(),
            "{test}: {name} is required when CI=true (.ci/run installs it)"
        );
        eprintln!("SKIP {test}: {name} not found (set {env_var} or run .ci/run)");
    }
    found
}

// ---------------------------------------------------------------------------
// Certificates.

/// A self-signed `localhost` certificate and its key as PEM files.
pub struct CertFiles {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    pub der: rustls::pki_types::CertificateDer<'static>,
}

/// Writes `{name}.crt` and `{name}.key` into `dir`: a self-signed
/// certificate for `localhost` whose notAfter is midnight UTC of the given
/// date.
pub fn write_cert(dir: &Path, name: &str, not_after: (i32, u8, u8)) -> CertFiles {
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let files = CertFiles {
        cert: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
        der: cert.der().clone(),
    };
    std::fs::write(&files.cert, cert.pem()).unwrap();
    std::fs::write(&files.key, key.serialize_pem()).unwrap();
    files
}

// ---------------------------------------------------------------------------
// The real binary.

/// A `hookgate run --log-format json` process that is listening (text
/// logs when started by [`spawn_run_text`]).
pub struct Running {
    pub child: std::process::Child,
    /// The bound data-plane address, from the "hookgate serving" line.
    pub addr: SocketAddr,
    /// The bound admin address, from the same line.
    pub admin: SocketAddr,
    /// The rest of stderr.
    pub lines: std::io::Lines<std::io::BufReader<std::process::ChildStderr>>,
    /// The lines read before the process was listening.
    pub seen: Vec<String>,
}

/// The `hookgate` binary the tests run: this crate's build, or the file
/// named by `HOOKGATE_TEST_BIN` when set. The override is test-only; it
/// exists to show a test fails against another build (e.g. one from before
/// a fix): `HOOKGATE_TEST_BIN=/tmp/old/debug/hookgate cargo test --test reject`.
pub fn hookgate_bin() -> std::path::PathBuf {
    std::env::var_os("HOOKGATE_TEST_BIN")
        .map_or_else(|| env!("CARGO_BIN_EXE_hookgate").into(), Into::into)
}

/// Starts the binary on `config` with `env` and waits for the line that
/// says it is listening.
pub fn spawn_run(config: &Path, env: &[(&str, &str)]) -> Running {
    spawn_run_via(&[], config, env)
}

/// Like [`spawn_run`], started through `wrapper` (a command that execs its
/// arguments, e.g. `prlimit --fsize=...`), so the gateway keeps the pid.
pub fn spawn_run_via(wrapper: &[&str], config: &Path, env: &[(&str, &str)]) -> Running {
    spawn_run_as("json", wrapper, config, env)
}

/// Like [`spawn_run`] with `--log-format text`, what an operator reading
/// stderr (or journald) sees.
pub fn spawn_run_text(config: &Path, env: &[(&str, &str)]) -> Running {
    spawn_run_as("text", &[], config, env)
}

fn spawn_run_as(
    log_format: &str,
    wrapper: &[&str],
    config: &Path,
    env: &[(&str, &str)],
) -> Running {
    use std::io::BufRead;
    let bin = hookgate_bin();
    let mut command = match wrapper.split_first() {
        None => std::process::Command::new(bin),
        Some((first, rest)) => {
            let mut c = std::process::Command::new(first);
            c.args(rest).arg(bin);
            c
        }
    };
    let mut child = command
        .args(["run", "--log-format", log_format, "--config"])
        .arg(config)
        .envs(env.iter().copied())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    let (addr, admin) = loop {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("exited before listening: {seen:#?}"))
            .unwrap();
        seen.push(line.clone());
        if line.contains("hookgate serving") {
            let addr = |key: &str| -> SocketAddr {
                if log_format == "json" {
                    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                    v[key].as_str().unwrap().parse().unwrap()
                } else {
                    let field = format!("{key}=");
                    let value = line.split(' ').find_map(|t| t.strip_prefix(&field));
                    value.unwrap().parse().unwrap()
                }
            };
            break (addr("listen"), addr("admin"));
        }
    };
    Running {
        child,
        addr,
        admin,
        lines,
        seen,
    }
}

/// GET `path` from an admin listener: (status, body).
pub async fn admin_get(admin: SocketAddr, path: &str) -> (u16, String) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    let (resp, _) = raw(admin, req.as_bytes()).await;
    (
        resp.status,
        String::from_utf8_lossy(&resp.body).into_owned(),
    )
}

/// Reads the rest of a [`Running`] gateway's stderr on a thread (so a
/// busy gateway never blocks on a full pipe), collecting the lines.
pub fn drain_log(running: &mut Running) -> Arc<Mutex<Vec<String>>> {
    let lines = std::mem::replace(
        &mut running.lines,
        std::io::BufRead::lines(std::io::BufReader::new(std::process::ChildStderr::from(
            std::os::fd::OwnedFd::from(std::fs::File::open("/dev/null").unwrap()),
        ))),
    );
    let log = Arc::new(Mutex::new(running.seen.clone()));
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    log
}

/// `hookgate run` serving `config` (TOML text, as for [`Gateway::start`];
/// an `[admin]` listener on 127.0.0.1:0 is added when the text has none)
/// with the test env. The process is killed when dropped, so a failing test
/// leaves nothing running; [`BinaryGateway::stop`] is the clean way out.
pub struct BinaryGateway {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// `None` once [`BinaryGateway::stop`] has reaped it.
    child: Option<std::process::Child>,
    /// Every stderr line so far (drained by a thread so the pipe never
    /// fills and blocks the gateway's logging).
    pub lines: Arc<Mutex<Vec<String>>>,
    dir: tempfile::TempDir,
}

impl BinaryGateway {
    pub fn start(config: &str) -> BinaryGateway {
        BinaryGateway::start_with(config, &[])
    }

    /// Like [`BinaryGateway::start`], with more environment variables
    /// (e.g. `HOOKGATE_LOG`).
    pub fn start_with(config: &str, env: &[(&str, &str)]) -> BinaryGateway {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hookgate.toml");
        std::fs::write(&path, with_admin(config)).unwrap();
        let mut all = vec![("SECRET_A", SECRET_A), ("SECRET_B", SECRET_B)];
        all.extend_from_slice(env);
        let mut running = spawn_run(&path, &all);
        let lines = drain_log(&mut running);
        BinaryGateway {
            addr: running.addr,
            admin: running.admin,
            child: Some(running.child),
            lines,
            dir,
        }
    }

    /// GET /metrics from the binary's admin listener.
    pub async fn metrics(&self) -> String {
        metrics_at(self.admin).await
    }

    /// Waits until every finished request has been counted (in-flight back
    /// to 0), then returns the exposition.
    pub async fn settled_metrics(&self) -> String {
        for _ in 0..250 {
            let text = self.metrics().await;
            if sample(&text, "hookgate_requests_in_flight") == Some(0.0) {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("requests still in flight");
    }

    /// Waits (up to 10 s) until at least `n` stderr lines satisfy `keep`:
    /// lines reach `lines` through a reader thread, so a line the gateway
    /// wrote before answering may still be on its way when the answer is.
    pub async fn wait_lines(&self, n: usize, keep: impl Fn(&str) -> bool) {
        for _ in 0..500 {
            let have = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .filter(|l| keep(l))
                .count();
            if have >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("fewer than {n} matching log lines within 10 s");
    }

    /// Rewrites the config file with `config` and sends SIGHUP; waits (up
    /// to 10 s) for the reload's log line. True when it was applied.
    pub async fn reload(&self, config: &str) -> bool {
        let done = |l: &String| l.contains("configuration reloaded") || l.contains("reload failed");
        let before = self
            .lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| done(l))
            .count();
        std::fs::write(self.dir.path().join("hookgate.toml"), with_admin(config)).unwrap();
        let pid = self.child.as_ref().expect("running").id().to_string();
        assert!(std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success());
        for _ in 0..500 {
            let outcome = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .filter(|l| done(l))
                .nth(before)
                .map(|line| line.contains("configuration reloaded"));
            if let Some(applied) = outcome {
                return applied;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no reload line within 10 s");
    }

    /// SIGTERM; the process must then exit 0 (within its shutdown timeout).
    pub async fn stop(mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let kill = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
        let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
            .await
            .unwrap();
        assert_eq!(
            status.code(),
            Some(0),
            "hookgate run exited with {status}; stderr: {:#?}",
            self.lines.lock().unwrap()
        );
    }
}

/// `config` with an `[admin]` listener on 127.0.0.1:0 when it has none.
fn with_admin(config: &str) -> String {
    let mut config = config.to_string();
    if !config.contains("[admin]") {
        config.push_str("\n[admin]\nlisten = \"127.0.0.1:0\"\n");
    }
    config
}

impl Drop for BinaryGateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
