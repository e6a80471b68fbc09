//! TLS to PostgreSQL (SPEC §11) through rustls, on the same aws-lc-rs
//! provider as the listener ([`crate::tls::provider`]), with libpq's
//! `sslmode` meanings:
//!
//! | `sslmode`         | TLS                          | server authenticated              |
//! |-------------------|------------------------------|-----------------------------------|
//! | `disable`         | never                        | —                                 |
//! | `prefer` (unset)  | if the server offers it      | no                                |
//! | `require`         | always (refused: no connect) | no, unless `sslrootcert` is given (then as `verify-ca`, like libpq) |
//! | `verify-ca`       | always                       | chain to `sslrootcert`            |
//! | `verify-full`     | always                       | chain to `sslrootcert` and the URL's host named in the certificate |
//!
//! `require` and stronger never fall back to plain text: a server without
//! TLS, or a handshake that fails, fails the connection. `allow` (plain
//! first) and client certificates (`sslcert`, `sslkey`) are refused with a
//! message saying what to write instead.
//!
//! tokio-postgres itself knows only `disable`/`prefer`/`require`, so
//! `sslmode` and `sslrootcert` are taken out of the connection string here
//! and turned into its TLS mode plus a rustls `ClientConfig`
//! (`tokio-postgres-rustls` does the handshake and SCRAM channel binding).

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::DatabaseUrl;

/// How the connection is protected, as the URL's `sslmode` asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    fn parse(text: &str) -> Result<SslMode, String> {
        match text {
            "disable" => Ok(SslMode::Disable),
            "prefer" => Ok(SslMode::Prefer),
            "require" => Ok(SslMode::Require),
            "verify-ca" => Ok(SslMode::VerifyCa),
            "verify-full" => Ok(SslMode::VerifyFull),
            "allow" => Err("sslmode=allow (plain text first) is not supported; write sslmode=prefer, require, or verify-full with sslrootcert=<CA file>".into()),
            other => Err(format!("sslmode={other} is not known; write disable, prefer, require, verify-ca or verify-full")),
        }
    }
}

/// Everything needed to connect: tokio-postgres' config (TLS keys taken
/// out) and the TLS connector.
pub struct Settings {
    pub config: tokio_postgres::Config,
    pub mode: SslMode,
    /// The CA file, when one authenticates the server.
    pub root_cert: Option<PathBuf>,
    pub tls: MakeRustlsConnect,
}

impl Settings {
    /// What the connection promises, for `hookgate check` and the start
    /// line: e.g. `sslmode=verify-full, CA /etc/hookgate/db-ca.pem`.
    pub fn describe(&self) -> String {
        match &self.root_cert {
            Some(ca) => format!("sslmode={}, CA {}", self.mode.as_str(), ca.display()),
            None => format!("sslmode={}", self.mode.as_str()),
        }
    }
}

/// Parses the connection string (never repeating it in a message) and
/// builds the TLS client it asks for, reading `sslrootcert`.
pub fn settings(url: &DatabaseUrl) -> Result<Settings, String> {
    let (rest, taken) = take_tls_keys(url.expose());
    let mut mode = SslMode::Prefer;
    let mut root_cert = None;
    for (key, value) in taken {
        match key {
            TlsKey::SslMode => mode = SslMode::parse(&value)?,
            TlsKey::RootCert => root_cert = Some(PathBuf::from(value)),
            TlsKey::ClientCert(k) => {
                return Err(format!("{k}= (a client certificate) is not supported; authenticate with a password in the URL (SCRAM, channel-bound over TLS) and drop {k}"));
            }
        }
    }
    let mut config = tokio_postgres::Config::from_str(&rest).map_err(|e| {
        format!("not a PostgreSQL connection string ({e}); write e.g. postgres://hookgate:PASSWORD@db.internal:5432/hookgate?sslmode=verify-full&sslrootcert=/etc/hookgate/db-ca.pem")
    })?;
    if mode == SslMode::Require && root_cert.is_some() {
        // libpq: require with a root certificate verifies like verify-ca.
        mode = SslMode::VerifyCa;
    }
    if matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) && root_cert.is_none() {
        return Err(format!("sslmode={} needs sslrootcert=<file> naming the CA that signed the server's certificate (PEM); for a public CA name the system bundle, e.g. sslrootcert=/etc/ssl/certs/ca-certificates.crt", mode.as_str()));
    }
    config.ssl_mode(match mode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
            tokio_postgres::config::SslMode::Require
        }
    });
    let provider = crate::tls::provider();
    let verifier: Arc<dyn ServerCertVerifier> = match (&root_cert, mode) {
        (Some(path), SslMode::VerifyCa | SslMode::VerifyFull) => {
            let roots = load_roots(path)?;
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| format!("sslrootcert={}: {e}", path.display()))?;
            if mode == SslMode::VerifyFull {
                webpki
            } else {
                Arc::new(ChainOnly(webpki))
            }
        }
        _ => Arc::new(Unauthenticated(provider.clone())),
    };
    let client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS setup: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Settings {
        config,
        mode,
        root_cert,
        tls: MakeRustlsConnect::new(client),
    })
}

fn load_roots(path: &Path) -> Result<Arc<RootCertStore>, String> {
    let shown = path.display();
    let bytes = std::fs::read(path).map_err(|e| format!("sslrootcert={shown}: {e}"))?;
    let mut roots = RootCertStore::empty();
    let mut bad = 0;
    for cert in CertificateDer::pem_slice_iter(&bytes) {
        let cert = cert.map_err(|_| {
            format!("sslrootcert={shown}: malformed PEM; it must hold \"-----BEGIN CERTIFICATE-----\" blocks")
        })?;
        if roots.add(cert).is_err() {
            bad += 1;
        }
    }
    if roots.is_empty() {
        return Err(format!("sslrootcert={shown}: no usable CA certificate found ({bad} unreadable); it must hold the PEM certificate of the CA that signed the database server's certificate"));
    }
    Ok(Arc::new(roots))
}

/// `verify-ca`: the chain must lead to a trusted CA; the name is not
/// checked (libpq's meaning: for databases reached by an address the
/// certificate does not name).
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // webpki checks the chain first and the name last: a name error
        // means the chain was good.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer` and `require` without a CA: encrypted, the server not
/// authenticated (libpq's meaning). The handshake's signatures are still
/// checked, so the session key belongs to whoever holds the certificate's
/// key; SCRAM channel binding then ties the password exchange to it.
#[derive(Debug)]
struct Unauthenticated(Arc<CryptoProvider>);

impl ServerCertVerifier for Unauthenticated {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[derive(Debug, PartialEq, Eq)]
enum TlsKey {
    SslMode,
    RootCert,
    /// `sslcert` / `sslkey`: refused.
    ClientCert(&'static str),
}

fn tls_key(key: &str) -> Option<TlsKey> {
    match key {
        "sslmode" => Some(TlsKey::SslMode),
        "sslrootcert" => Some(TlsKey::RootCert),
        "sslcert" => Some(TlsKey::ClientCert("sslcert")),
        "sslkey" => Some(TlsKey::ClientCert("sslkey")),
        _ => None,
    }
}

/// Takes the TLS keys out of a connection string (URL query or
/// `key=value` form): the rest, and the keys with their (decoded) values.
fn take_tls_keys(text: &str) -> (String, Vec<(TlsKey, String)>) {
    let mut taken = Vec::new();
    if text.starts_with("postgres://") || text.starts_with("postgresql://") {
        let Some((head, query)) = text.split_once('?') else {
            return (text.to_string(), taken);
        };
        let mut kept = Vec::new();
        for pair in query.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match tls_key(k) {
                Some(key) => taken.push((key, percent_decode(v))),
                None => kept.push(pair),
            }
        }
        let rest = if kept.is_empty() {
            head.to_string()
        } else {
            format!("{head}?{}", kept.join("&"))
        };
        return (rest, taken);
    }
    // key = value pairs; a value may be quoted ('...', backslash escapes).
    let mut rest = String::with_capacity(text.len());
    let mut chars = text.char_indices().peekable();
    let mut last = 0;
    while let Some(&(start, c)) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut key = String::new();
        while let Some(&(_, c)) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|&(_, c)| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_some_and(|&(_, c)| c == '=') {
            chars.next();
        }
        while chars.peek().is_some_and(|&(_, c)| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek().is_some_and(|&(_, c)| c == '\'') {
            chars.next();
            while let Some((_, c)) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next().map(|(_, c)| c)),
                    '\'' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(&(_, c)) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                chars.next();
                match c {
                    '\\' => value.extend(chars.next().map(|(_, c)| c)),
                    c => value.push(c),
                }
            }
        }
        let end = chars.peek().map_or(text.len(), |&(i, _)| i);
        if let Some(k) = tls_key(&key) {
            rest.push_str(&text[last..start]);
            last = end;
            taken.push((k, value));
        }
    }
    rest.push_str(&text[last..]);
    (rest, taken)
}

/// `%2F` → `/` (a path in a URL query); invalid escapes are kept as they are.
fn percent_decode(text: &str) -> String {
    let hex = |b: u8| char::from(b).to_digit(16);
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> DatabaseUrl {
        DatabaseUrl::new(text.into(), "env X".into())
    }

    #[test]
    fn tls_keys_are_taken_from_both_forms() {
        let (rest, taken) = take_tls_keys(
            "postgres://hg:pw@db/x?sslmode=verify-full&application_name=a&sslrootcert=%2Fetc%2Fca.pem",
        );
        assert_eq!(rest, "postgres://hg:pw@db/x?application_name=a");
        assert_eq!(
            taken,
            vec![
                (TlsKey::SslMode, "verify-full".to_string()),
                (TlsKey::RootCert, "/etc/ca.pem".to_string())
            ]
        );
        let (rest, taken) = take_tls_keys("postgres://db/x?sslmode=require");
        assert_eq!(rest, "postgres://db/x");
        assert_eq!(taken, vec![(TlsKey::SslMode, "require".to_string())]);
        let (rest, taken) = take_tls_keys(
            "host=db password='a b\\'c' sslrootcert = '/etc/my ca.pem' sslmode=verify-ca dbname=x",
        );
        assert_eq!(rest, "host=db password='a b\\'c'   dbname=x");
        assert_eq!(
            taken,
            vec![
                (TlsKey::RootCert, "/etc/my ca.pem".to_string()),
                (TlsKey::SslMode, "verify-ca".to_string())
            ]
        );
        assert!(tokio_postgres::Config::from_str(&rest).is_ok());
    }

    #[test]
    fn modes_follow_libpq_and_refusals_say_what_to_write() {
        let s = settings(&url("postgres://hg:pw@db/x")).unwrap();
        assert_eq!(s.mode, SslMode::Prefer);
        let s = settings(&url("postgres://hg:pw@db/x?sslmode=require")).unwrap();
        assert_eq!(s.mode, SslMode::Require);
        assert_eq!(
            s.config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
        let s = settings(&url("postgres://hg:pw@db/x?sslmode=disable")).unwrap();
        assert_eq!(
            s.config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Disable
        );
        for (text, expect) in [
            ("sslmode=verify-full", "needs sslrootcert=<file>"),
            (
                "sslmode=allow",
                "sslmode=allow (plain text first) is not supported",
            ),
            ("sslmode=bogus", "sslmode=bogus is not known"),
            (
                "sslcert=/c.pem",
                "sslcert= (a client certificate) is not supported",
            ),
            (
                "sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
                "sslrootcert=/nonexistent/ca.pem: No such file",
            ),
        ] {
            let e = settings(&url(&format!("postgres://hg:s3cret@db/x?{text}")))
                .err()
                .unwrap();
            assert!(e.contains(expect) && !e.contains("s3cret"), "{text}: {e}");
        }
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let e = settings(&url(&format!(
            "postgres://db/x?sslmode=verify-full&sslrootcert={}",
            junk.display()
        )))
        .err()
        .unwrap();
        assert!(e.contains("no usable CA certificate"), "{e}");
    }
}
