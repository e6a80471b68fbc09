//! TLS termination (SPEC §3 `[server.tls]`): HTTP/1.1 and HTTP/2 over ALPN,
//! handshake failures counted and closed, load errors that name the file.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const BODY: &[u8] = br#"{"event":"generation.completed","generation_id":"tls"}"#;

/// A self-signed certificate for `localhost` written to `dir`.
struct TestCert {
    cert: PathBuf,
    key: PathBuf,
    der: CertificateDer<'static>,
}

fn make_cert(dir: &Path, name: &str) -> TestCert {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    TestCert {
        cert,
        key,
        der: ck.cert.der().clone(),
    }
}

fn tls_config(upstream: SocketAddr, cert: &TestCert, extra_limits: &str) -> String {
    two_routes(upstream, "")
        .replace(
            "shutdown_timeout = \"5s\"",
            &format!(
                "shutdown_timeout = \"5s\"\n[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
                cert.cert.display(),
                cert.key.display()
            ),
        )
        .replace("[limits]\n", &format!("[limits]\n{extra_limits}\n"))
}

fn connector(cert: &TestCert, alpn: &[&[u8]]) -> TlsConnector {
    tls_connector(cert.der.clone(), alpn)
}

async fn tls_connect(
    addr: SocketAddr,
    connector: &TlsConnector,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

fn signed(secret: &str) -> http::Request<Full<Bytes>> {
    http::Request::post("https://localhost/webhooks/a")
        .header("host", "localhost")
        .header("x-adsumo-signature", sign(secret, BODY))
        .body(Full::new(Bytes::from_static(BODY)))
        .unwrap()
}

/// An HTTP/1.1 client (ALPN offers only http/1.1) gets HTTP/1.1, its valid
/// webhook forwarded and an invalid one rejected with 401.
#[tokio::test]
async fn http1_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let cert = make_cert(dir.path(), "gw");
    let upstream = Upstream::start(Behaviour::Respond).await;
    let gw = Gateway::start(&tls_config(upstream.addr, &cert, "")).await;
    let stream = tls_connect(gw.addr, &connector(&cert, &[b"http/1.1"])).await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = sender.send_request(signed(SECRET_A)).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_11);
    assert_eq!(resp.status(), 201);
    resp.into_body().collect().await.unwrap();
    let resp = sender.send_request(signed(SECRET_B)).await.unwrap();
    assert_eq!(resp.status(), 401);
    let got = upstream.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body, BODY);
    assert_eq!(got[0].header("x-forwarded-proto"), Some("https"));
    gw.stop().await;
}

/// An HTTP/2 client (ALPN h2) gets HTTP/2, its valid webhook forwarded and
/// an invalid one rejected with 401.
#[tokio::test]
async fn http2_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let cert = make_cert(dir.path(), "gw");
    let upstream = Upstream::start(Behaviour::Respond).await;
    let gw = Gateway::start(&tls_config(upstream.addr, &cert, "")).await;
    let stream = tls_connect(gw.addr, &connector(&cert, &[b"h2", b"http/1.1"])).await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let resp = sender.send_request(signed(SECRET_A)).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), 201);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], UPSTREAM_BODY);
    let resp = sender.send_request(signed(SECRET_B)).await.unwrap();
    assert_eq!(resp.status(), 401);
    let got = upstream.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body, BODY);
    assert_eq!(got[0].header("host"), Some("localhost"));
    gw.stop().await;
}

fn handshake_errors(metrics: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("hookgate_tls_handshake_errors_total "))
        .unwrap()
        .parse()
        .unwrap()
}

/// Plain-text HTTP sent to the TLS port: the connection is closed, nothing
/// is forwarded, and hookgate_tls_handshake_errors_total counts it.
#[tokio::test]
async fn plain_http_to_tls_port_is_closed_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let cert = make_cert(dir.path(), "gw");
    let upstream = Upstream::start(Behaviour::Respond).await;
    let gw = Gateway::start(&tls_config(upstream.addr, &cert, "")).await;
    assert_eq!(handshake_errors(&gw.metrics().await), 0);
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(&post("/webhooks/a", Some(&sign(SECRET_A, BODY)), BODY, ""))
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf))
        .await
        .expect("connection not closed");
    // rustls may answer with a TLS alert record before closing; never HTTP.
    assert!(read.is_err() || !buf.starts_with(b"HTTP/"), "{buf:?}");
    assert_eq!(upstream.count(), 0);
    assert_eq!(handshake_errors(&gw.metrics().await), 1);
    gw.stop().await;
}

/// A TCP connection that never sends a ClientHello is closed at
/// handshake_timeout and counted.
#[tokio::test]
async fn silent_connection_closed_at_handshake_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let cert = make_cert(dir.path(), "gw");
    let upstream = Upstream::start(Behaviour::Respond).await;
    let gw = Gateway::start(&tls_config(
        upstream.addr,
        &cert,
        "handshake_timeout = \"300ms\"",
    ))
    .await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let started = Instant::now();
    assert!(closed_by_server(&mut stream).await);
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(250),
        "closed too early: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(3),
        "closed too late: {elapsed:?}"
    );
    assert_eq!(handshake_errors(&gw.metrics().await), 1);
    gw.stop().await;
}

/// `hookgate_tls_certificate_expiry_timestamp_seconds` is the served
/// leaf's notAfter, labelled with its path; a reload onto a renewed
/// certificate moves it (and drops the old path's series), a failed reload
/// leaves it as it was.
#[tokio::test]
async fn certificate_expiry_metric_follows_reloads() {
    const NAME: &str = "hookgate_tls_certificate_expiry_timestamp_seconds";
    let dir = tempfile::tempdir().unwrap();
    // Midnight UTC of 2031-05-17 and of 2032-01-02.
    let old = write_cert(dir.path(), "old", (2031, 5, 17));
    let new = write_cert(dir.path(), "new", (2032, 1, 2));
    let as_test_cert = |c: &CertFiles| TestCert {
        cert: c.cert.clone(),
        key: c.key.clone(),
        der: c.der.clone(),
    };
    let upstream = Upstream::start(Behaviour::Respond).await;
    let config = tls_config(upstream.addr, &as_test_cert(&old), "");
    let gw = Gateway::start(&config).await;
    let series = |c: &CertFiles| format!("{NAME}{{path=\"{}\"}} ", c.cert.display());
    let text = gw.metrics().await;
    assert!(
        text.contains(&format!("{}1936742400\n", series(&old))),
        "{text}"
    );

    let path = dir.path().join("hookgate.toml");
    std::fs::write(&path, tls_config(upstream.addr, &as_test_cert(&new), "")).unwrap();
    hookgate::lifecycle::reload(&gw.proxy, &path, &env()).unwrap();
    let text = gw.metrics().await;
    assert!(
        text.contains(&format!("{}1956614400\n", series(&new))),
        "{text}"
    );
    assert!(!text.contains(&series(&old)), "{text}");

    // The old certificate with the new key: refused, the metric stays.
    let mismatched = TestCert {
        key: new.key.clone(),
        ..as_test_cert(&old)
    };
    std::fs::write(&path, tls_config(upstream.addr, &mismatched, "")).unwrap();
    assert!(hookgate::lifecycle::reload(&gw.proxy, &path, &env()).is_err());
    let text = gw.metrics().await;
    assert!(
        text.contains(&format!("{}1956614400\n", series(&new))),
        "{text}"
    );
    gw.stop().await;
}

/// Plain HTTP exposes no expiry series (a 0 would read as "expired").
#[tokio::test]
async fn no_certificate_expiry_series_without_tls() {
    let upstream = Upstream::start(Behaviour::Respond).await;
    let gw = Gateway::start(&two_routes(upstream.addr, "")).await;
    let text = gw.metrics().await;
    assert!(
        !text.contains("hookgate_tls_certificate_expiry_timestamp_seconds{"),
        "{text}"
    );
    gw.stop().await;
}

fn check_message(config: &str) -> String {
    hookgate::config::Config::from_toml_str(config, Path::new("tls.toml"), &env())
        .unwrap_err()
        .to_string()
}

/// Certificate problems are refused at load, each naming the file and what
/// is wrong: missing file, empty PEM, no key, a key that does not match.
#[test]
fn certificate_load_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let good = make_cert(dir.path(), "good");
    let other = make_cert(dir.path(), "other");
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let upstream: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let with = |cert: &Path, key: &Path| {
        tls_config(
            upstream,
            &TestCert {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
                der: good.der.clone(),
            },
            "",
        )
    };
    let missing = dir.path().join("missing.pem");
    let cases = [
        (
            with(&missing, &good.key),
            format!(
                "TLS cert file {}: No such file or directory",
                missing.display()
            ),
        ),
        (
            with(&empty, &good.key),
            format!(
                "TLS cert file {}: no PEM certificate found",
                empty.display()
            ),
        ),
        (
            with(&good.cert, &empty),
            format!("TLS key file {}: no PEM private key found", empty.display()),
        ),
        (
            with(&good.cert, &good.cert),
            format!(
                "TLS key file {}: no PEM private key found",
                good.cert.display()
            ),
        ),
        (
            with(&good.cert, &other.key),
            format!(
                "TLS key file {} does not match the certificate in {}",
                other.key.display(),
                good.cert.display()
            ),
        ),
    ];
    let key_text = std::fs::read_to_string(&other.key).unwrap();
    let key_line = key_text.lines().nth(1).unwrap();
    for (config, want) in cases {
        let msg = check_message(&config);
        assert!(msg.contains(&want), "want {want:?} in {msg:?}");
        assert!(msg.starts_with("tls.toml:"), "{msg}");
        assert_eq!(msg.lines().count(), 1, "{msg}");
        assert!(!msg.contains(key_line), "key material in message");
    }
}

/// The server's cipher order decides: a client that lists weaker suites
/// first (AES-128 before AES-256 for TLS 1.3, and for TLS 1.2) still gets
/// the server's first choice among the suites it offers. Through the
/// `hookgate run` binary.
#[tokio::test]
async fn server_cipher_order_wins() {
    use rustls::crypto::aws_lc_rs::cipher_suite as cs;
    let dir = tempfile::tempdir().unwrap();
    let cert = make_cert(dir.path(), "gw");
    let upstream = Upstream::start(Behaviour::Respond).await;
    let gw = BinaryGateway::start(&tls_config(upstream.addr, &cert, ""));
    let cases = [
        (
            &rustls::version::TLS13,
            vec![
                cs::TLS13_AES_128_GCM_SHA256,
                cs::TLS13_CHACHA20_POLY1305_SHA256,
                cs::TLS13_AES_256_GCM_SHA384,
            ],
            cs::TLS13_AES_256_GCM_SHA384,
        ),
        (
            &rustls::version::TLS12,
            vec![
                cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
                cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
                cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            ],
            cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        ),
    ];
    for (version, client_order, want) in cases {
        let mut provider = rustls::crypto::aws_lc_rs::default_provider();
        provider.cipher_suites = client_order;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.der.clone()).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(provider))
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let stream = tls_connect(gw.addr, &TlsConnector::from(std::sync::Arc::new(config))).await;
        let got = stream.get_ref().1.negotiated_cipher_suite().unwrap();
        assert_eq!(got.suite(), want.suite(), "{version:?}");
    }
    gw.stop().await;
}

/// testssl.sh (Debian's package) against the TLS listener, a targeted
/// check rather than a full scan: protocols (only TLS 1.2 and 1.3 offered)
/// and server preference ("Has server cipher order?" must be yes). Skipped
/// when testssl.sh is missing, except under CI=true (`.ci/run` installs it).
/// Against the `hookgate run` binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn testssl_protocols_and_server_cipher_order() {
    let testssl = ["testssl", "testssl.sh"].into_iter().find(|cmd| {
        std::process::Command::new(cmd)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let Some(testssl) = testssl else {
        assert!(
            std::env::var("CI").is_err(),
            "testssl.sh is required when CI=true (.ci/run installs it)"
        );
        eprintln!("skipping: testssl.sh not installed (apt-get install testssl.sh)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cert = make_cert(dir.path(), "gw");
    let upstream = Upstream::start(Behaviour::Respond).await;
    let gw = BinaryGateway::start(&tls_config(upstream.addr, &cert, ""));
    let json = dir.path().join("testssl.json");
    let target = format!("localhost:{}", gw.addr.port());
    let args = [
        "--quiet",
        "--color",
        "0",
        "--warnings",
        "off",
        "--ip",
        "127.0.0.1",
        "--protocols",
        "--server-preference",
        "--jsonfile",
    ];
    let out = {
        let json = json.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(testssl)
                .args(args)
                .arg(&json)
                .arg(&target)
                .output()
                .unwrap()
        })
        .await
        .unwrap()
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let findings: Vec<serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(&json).unwrap_or_else(|e| panic!("no JSON ({e}):\n{stdout}")),
    )
    .unwrap();
    let finding = |id: &str| {
        findings
            .iter()
            .find(|f| f["id"] == id)
            .and_then(|f| f["finding"].as_str())
            .unwrap_or_else(|| panic!("no {id} in {findings:#?}"))
            .to_string()
    };
    for old in ["SSLv2", "SSLv3", "TLS1", "TLS1_1"] {
        assert!(
            finding(old).starts_with("not offered"),
            "{old}: {}",
            finding(old)
        );
    }
    for new in ["TLS1_2", "TLS1_3"] {
        assert!(
            finding(new).starts_with("offered"),
            "{new}: {}",
            finding(new)
        );
    }
    let order = finding("cipher_order");
    assert!(!order.contains("NOT ok"), "cipher order: {order}\n{stdout}");
    assert!(
        order.starts_with("server"),
        "cipher order: {order}\n{stdout}"
    );
    gw.stop().await;
}

/// Large bodies over TLS arrive upstream byte for byte: a body spans dozens
/// of TLS records, which the gateway reads ahead of rustls in 64 KiB socket
/// reads (`read_ahead`); three on one keep-alive connection, so a read that
/// ends inside a record, or takes the start of the next request, is carried
/// over correctly.
#[tokio::test]
async fn large_bodies_over_tls_arrive_intact() {
    let dir = tempfile::tempdir().unwrap();
    let cert = make_cert(dir.path(), "gw");
    let upstream = Upstream::start(Behaviour::Respond).await;
    let gw = Gateway::start(&tls_config(upstream.addr, &cert, "")).await;
    let stream = tls_connect(gw.addr, &connector(&cert, &[b"http/1.1"])).await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let bodies: Vec<Vec<u8>> = [700_001usize, 16_385, 262_144]
        .iter()
        .enumerate()
        .map(|(k, &n)| (0..n).map(|i| (i * 31 + k * 7) as u8).collect())
        .collect();
    for body in &bodies {
        let req = http::Request::post("https://localhost/webhooks/a")
            .header("host", "localhost")
            .header("x-adsumo-signature", sign(SECRET_A, body))
            .body(Full::new(Bytes::from(body.clone())))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 201);
        resp.into_body().collect().await.unwrap();
    }
    let got = upstream.received();
    assert_eq!(got.len(), bodies.len());
    for (g, want) in got.iter().zip(&bodies) {
        assert_eq!(g.body.len(), want.len());
        assert!(g.body == *want, "body changed in transit");
    }
    gw.stop().await;
}
