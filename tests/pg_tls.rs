//! TLS to PostgreSQL (SPEC §11, README "Running several instances"),
//! against a real throwaway cluster with `ssl = on` serving a certificate
//! for `127.0.0.1` issued by a test CA made here with rcgen: the binary
//! spools and redelivers over `sslmode=verify-full`; a certificate from
//! another CA, or one that does not name the URL's host, stops the start
//! with one line that names the database (password masked) and says what
//! to check; `hookgate check` says TLS is in use.
//!
//! The cluster is this binary's own (the other PostgreSQL tests keep their
//! plain one); the tests skip, loudly, only without a `postgres` binary.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use common::pg::{self, Cluster, ServerTls};
use common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

/// A password that must never be printed (trust auth ignores it).
const PASSWORD: &str = "pw-never-printed-tls-41c9";

/// The test PKI: the CA that issued the server's certificate, and another
/// CA that did not.
struct Pki {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    other_ca: PathBuf,
}

fn new_ca(name: &str) -> (Issuer<'static, KeyPair>, String) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().unwrap();
    let pem = params.self_signed(&key).unwrap().pem();
    (Issuer::new(params, key), pem)
}

/// One TLS cluster for this binary: its server certificate names only the
/// address 127.0.0.1 (so `localhost` in a URL is a name mismatch).
fn tls_cluster() -> Option<&'static (Cluster, Pki)> {
    static SHARED: OnceLock<Option<(Cluster, Pki)>> = OnceLock::new();
    SHARED
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let (issuer, ca_pem) = new_ca("hookgate test database CA");
            let (_, other_pem) = new_ca("some other CA");
            let mut params = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
            params
                .distinguished_name
                .push(DnType::CommonName, "test database");
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &issuer).unwrap();
            let cluster = Cluster::start_tls(ServerTls {
                cert_pem: &cert.pem(),
                key_pem: &key.serialize_pem(),
            })?;
            let ca = dir.path().join("db-ca.pem");
            let other_ca = dir.path().join("other-ca.pem");
            std::fs::write(&ca, ca_pem).unwrap();
            std::fs::write(&other_ca, other_pem).unwrap();
            Some((
                cluster,
                Pki {
                    _dir: dir,
                    ca,
                    other_ca,
                },
            ))
        })
        .as_ref()
}

/// A new database's URL with the password and TLS parameters `tls`.
fn tls_url(cluster: &Cluster, tls: &str) -> String {
    format!(
        "{}?{tls}",
        cluster.database().replace("unused-password", PASSWORD)
    )
}

fn config(dir: &Path, upstream: std::net::SocketAddr) -> PathBuf {
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
shutdown_timeout = "2s"

[admin]
listen = "127.0.0.1:0"

[spool]
backend = "postgres"
url = {{ env = "HOOKGATE_DATABASE_URL" }}

[[route]]
name = "a"
path = "/webhooks/a"
upstream = "http://{upstream}"
secret = {{ env = "SECRET_A" }}
delivery = "always"
"#
    );
    let path = dir.join("hookgate.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `hookgate check` and `hookgate run` on `url` must both fail; returns
/// run's stderr after checking it is one line naming the database without
/// its password.
async fn start_fails(config: &Path, url: &str) -> String {
    let mut last = String::new();
    for cmd in ["check", "run"] {
        let (ok, out, err) = pg::hookgate(
            &[cmd, "--config", config.to_str().unwrap()],
            &[("HOOKGATE_DATABASE_URL", url), ("SECRET_A", SECRET_A)],
        )
        .await;
        assert!(!ok, "{cmd} started: {out}{err}");
        assert!(
            !err.contains(PASSWORD) && !out.contains(PASSWORD),
            "{cmd}: {err}"
        );
        let lines: Vec<&str> = err
            .lines()
            .filter(|l| l.contains("invalid peer certificate"))
            .collect();
        assert_eq!(lines.len(), 1, "{cmd}: one line says why: {err}");
        assert!(
            lines[0].contains(&format!("hookgate:***@{}", url_host_port(url))),
            "{cmd}: names the database: {}",
            lines[0]
        );
        assert!(
            lines[0].contains("check that sslrootcert names the CA"),
            "{cmd}: says what to check: {}",
            lines[0]
        );
        last = lines[0].to_string();
    }
    last
}

fn url_host_port(url: &str) -> &str {
    let after = url.split_once('@').unwrap().1;
    after.split('/').next().unwrap()
}

/// `sslmode=verify-full` with the test CA: `hookgate check` reports TLS,
/// the binary acknowledges webhooks (202 after the commit) and redelivers
/// them, and every connection it holds is encrypted as the server sees it
/// (`pg_stat_ssl`).
#[tokio::test]
async fn verify_full_spools_and_redelivers_over_tls() {
    let Some((cluster, pki)) = tls_cluster() else {
        return;
    };
    let url = tls_url(
        cluster,
        &format!("sslmode=verify-full&sslrootcert={}", pki.ca.display()),
    );
    let db = pg::database_name(url.split('?').next().unwrap()).to_string();
    let up = Upstream::start(Behaviour::Respond).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), up.addr);
    let env = [
        ("HOOKGATE_DATABASE_URL", url.as_str()),
        ("SECRET_A", SECRET_A),
    ];

    let (ok, out, err) = pg::hookgate(&["check", "--config", config.to_str().unwrap()], &env).await;
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("(TLS TLSv1.3, sslmode=verify-full, CA ")
            && out.contains("db-ca.pem)")
            && !out.contains(PASSWORD),
        "{out}"
    );

    // Killed when dropped: a failing assertion leaves no gateway behind.
    let gw = BinaryGateway::start_with(
        &std::fs::read_to_string(&config).unwrap(),
        &[("HOOKGATE_DATABASE_URL", url.as_str())],
    );
    assert!(
        gw.lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("connected to the database") && l.contains("TLS TLSv1.3")),
        "{:#?}",
        gw.lines
    );
    let mut acked = Vec::new();
    for n in 0..3 {
        let body = format!(r#"{{"event":"generation.completed","n":{n}}}"#).into_bytes();
        let req = post("/webhooks/a", Some(&sign(SECRET_A, &body)), &body, "");
        let (resp, _) = raw(gw.addr, &req).await;
        assert_eq!(resp.status, 202);
        acked.push(resp.header("x-hookgate-delivery").unwrap().to_string());
    }
    let delivered = || -> Vec<String> {
        up.received()
            .iter()
            .filter_map(|r| r.header("x-hookgate-delivery").map(str::to_string))
            .collect()
    };
    assert!(
        pg::eventually(Duration::from_secs(10), || acked
            .iter()
            .all(|id| delivered().contains(id)))
        .await,
        "not redelivered: {:?}",
        delivered()
    );
    // The server's view of the gateway's connections: all encrypted.
    let seen = cluster.psql(
        &db,
        "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl)
         FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
         WHERE a.application_name = 'hookgate' AND a.datname = current_database()",
    );
    let (tls, plain) = seen.trim().split_once('|').unwrap();
    assert!(tls.parse::<u32>().unwrap() >= 1, "{seen}");
    assert_eq!(plain, "0", "{seen}");

    assert!(!gw
        .lines
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains(PASSWORD)));
    gw.stop().await;
}

/// A certificate the URL's CA did not issue, or one that does not name
/// the URL's host, stops `hookgate check` and `hookgate run` with one
/// line: the database (password masked), rustls' reason and what to check.
/// `verify-ca` is libpq's: the chain is checked, the name is not.
#[tokio::test]
async fn untrusted_or_misnamed_certificate_stops_the_start() {
    let Some((cluster, pki)) = tls_cluster() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), "127.0.0.1:9".parse().unwrap());

    let other = tls_url(
        cluster,
        &format!("sslmode=verify-full&sslrootcert={}", pki.other_ca.display()),
    );
    let line = start_fails(&config, &other).await;
    assert!(line.contains("UnknownIssuer"), "{line}");

    // The certificate names 127.0.0.1 only.
    let by_name = tls_url(
        cluster,
        &format!("sslmode=verify-full&sslrootcert={}", pki.ca.display()),
    )
    .replace("@127.0.0.1:", "@localhost:");
    let line = start_fails(&config, &by_name).await;
    assert!(line.contains("not valid for name"), "{line}");

    let chain_only = by_name.replace("verify-full", "verify-ca");
    let env = [
        ("HOOKGATE_DATABASE_URL", chain_only.as_str()),
        ("SECRET_A", SECRET_A),
    ];
    let (ok, out, err) = pg::hookgate(&["check", "--config", config.to_str().unwrap()], &env).await;
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("(TLS TLSv1.3, sslmode=verify-ca, CA "),
        "{out}"
    );
    // verify-ca with the wrong CA still fails.
    start_fails(&config, &chain_only.replace("db-ca.pem", "other-ca.pem")).await;

    // require without a CA: encrypted, the server not authenticated
    // (libpq's meaning); with a CA it is verify-ca.
    let require = tls_url(cluster, "sslmode=require");
    let env = [
        ("HOOKGATE_DATABASE_URL", require.as_str()),
        ("SECRET_A", SECRET_A),
    ];
    let (ok, out, err) = pg::hookgate(&["check", "--config", config.to_str().unwrap()], &env).await;
    assert!(
        ok && out.contains("(TLS TLSv1.3, sslmode=require)"),
        "{out}{err}"
    );
    start_fails(
        &config,
        &format!("{require}&sslrootcert={}", pki.other_ca.display()),
    )
    .await;
}
