//! TLS termination: PEM certificate chain and key → rustls `ServerConfig`
//! (TLS 1.2 and 1.3 only, ALPN `h2` then `http/1.1`, the server's cipher
//! order), and a handshake bounded
//! by `limits.handshake_timeout`.
//!
//! One crypto provider (aws-lc-rs) is used explicitly everywhere, so rustls
//! never has to guess a process default. Load errors name the file and say
//! what is wrong; they never include file content (a key file's bytes are
//! secret).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::ServerConfig;
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsFiles;

/// The crypto provider used for every TLS operation.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Installs [`provider`] as the process default. Harmless if called twice.
pub fn install_default_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS cert file {}: {source}; check server.tls.cert", path.display())]
    CertUnreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS cert file {}: no PEM certificate found; it must contain \"-----BEGIN CERTIFICATE-----\" blocks, leaf first", path.display())]
    NoCertificate { path: PathBuf },
    #[error("TLS cert file {}: malformed PEM; re-export the certificate chain", path.display())]
    BadCertPem { path: PathBuf },
    #[error("TLS key file {}: {source}; check server.tls.key", path.display())]
    KeyUnreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS key file {}: no PEM private key found; it must contain a PKCS#8, PKCS#1 or SEC1 \"PRIVATE KEY\" block", path.display())]
    NoKey { path: PathBuf },
    #[error("TLS key file {}: malformed PEM or unsupported key type; re-export the private key", path.display())]
    BadKey { path: PathBuf },
    #[error("TLS key file {} does not match the certificate in {}; use the key the certificate was issued for", key.display(), cert.display())]
    KeyMismatch { key: PathBuf, cert: PathBuf },
    #[error("TLS cert file {}: the first certificate is not valid X.509; the leaf must come first, re-export the chain", path.display())]
    BadLeaf { path: PathBuf },
    #[error("TLS cert file {}: {reason}", path.display())]
    Unusable {
        path: PathBuf,
        reason: rustls::Error,
    },
}

/// What [`load`] builds from the PEM files.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub server_config: Arc<ServerConfig>,
    /// The leaf certificate's notAfter, in Unix seconds (read from the same
    /// bytes that are served, so the expiry metric never describes another
    /// file than the one in use).
    pub leaf_not_after: i64,
}

/// Loads the certificate chain and key and builds the server config.
pub fn load(files: &TlsFiles) -> Result<Loaded, TlsError> {
    let certs = load_certs(&files.cert)?;
    let leaf_not_after =
        certs
            .first()
            .and_then(leaf_not_after)
            .ok_or_else(|| TlsError::BadLeaf {
                path: files.cert.clone(),
            })?;
    let key = load_key(&files.key)?;
    let provider = provider();
    let certified = CertifiedKey::from_der(certs, key, &provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch {
            key: files.key.clone(),
            cert: files.cert.clone(),
        },
        rustls::Error::General(_) => TlsError::BadKey {
            path: files.key.clone(),
        },
        reason => TlsError::Unusable {
            path: files.cert.clone(),
            reason,
        },
    })?;
    let unusable = |reason| TlsError::Unusable {
        path: files.cert.clone(),
        reason,
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(unusable)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(certified)));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // The provider's suite order (AES-256-GCM first, AEAD and forward
    // secrecy only) decides, not the client's: a client listing a weaker
    // suite first still gets the strongest one both support. Auditors
    // (testssl.sh "Has server cipher order?") expect this.
    config.ignore_client_order = true;
    Ok(Loaded {
        server_config: Arc::new(config),
        leaf_not_after,
    })
}

/// The certificate's notAfter in Unix seconds; `None` if it is not X.509.
fn leaf_not_after(leaf: &CertificateDer<'_>) -> Option<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    Some(cert.validity().not_after.timestamp())
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::CertUnreadable {
        path: path.to_path_buf(),
        source,
    })?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, pem::Error>>()
        .map_err(|_| TlsError::BadCertPem {
            path: path.to_path_buf(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::KeyUnreadable {
        path: path.to_path_buf(),
        source,
    })?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsError::NoKey {
            path: path.to_path_buf(),
        },
        // Other PEM errors can quote the file; the key's bytes stay private.
        _ => TlsError::BadKey {
            path: path.to_path_buf(),
        },
    })
}

/// Why a TLS handshake did not complete.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("TLS handshake timed out after {0:?}")]
    Timeout(Duration),
    #[error("TLS handshake failed: {0}")]
    Failed(#[source] std::io::Error),
}

/// Runs the server side of a handshake, bounded by `timeout`.
pub async fn accept<IO>(
    acceptor: &TlsAcceptor,
    io: IO,
    timeout: Duration,
) -> Result<TlsStream<IO>, HandshakeError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::time::timeout(timeout, acceptor.accept(io)).await {
        Err(_) => Err(HandshakeError::Timeout(timeout)),
        Ok(Err(e)) => Err(HandshakeError::Failed(e)),
        Ok(Ok(stream)) => Ok(stream),
    }
}
