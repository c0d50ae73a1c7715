//! HTTPS: the `--tls-cert`/`--tls-key` flags, the rustls configuration they make, and
//! [`HttpListener`], a bound socket with or without TLS for [`serve`](crate::serve).
//!
//! The TLS is rustls on ring, built with an explicit provider: a process that also links rustls'
//! aws-lc-rs provider (the broker's MQTT TLS, in a `tls` build) then needs no process default for
//! this to work.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// The TLS flags. Both or neither: with them the HTTP listener speaks HTTPS only.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// Serve HTTPS with this certificate chain (PEM, the server's certificate first). Needs
    /// --tls-key. pricefeed also uses it for MQTT over TLS (--mqtts-listen).
    #[arg(
        long,
        env = "PRICEFEED_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key",
        help_heading = "TLS"
    )]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1). Needs --tls-cert.
    #[arg(
        long,
        env = "PRICEFEED_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert",
        help_heading = "TLS"
    )]
    pub tls_key: Option<PathBuf>,
}

impl TlsArgs {
    /// The certificate and key files, if TLS is asked for (clap has made sure both are given).
    pub fn files(&self) -> Option<TlsFiles> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        }
    }
}

/// A certificate chain and its private key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Why the certificate or key cannot be used. Each names the file to fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot use the TLS certificate {}: {reason}", path.display())]
    Cert { path: PathBuf, reason: String },
    #[error("cannot use the TLS key {}: {reason}", path.display())]
    Key { path: PathBuf, reason: String },
    /// Both files read, but rustls refuses them: a key that is not the certificate's, say.
    #[error("cannot serve TLS with the certificate {} and key {}: {reason}", cert.display(), key.display())]
    Refused {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
}

impl TlsFiles {
    /// Reads both files and checks that they make a server configuration (the key is the
    /// certificate's): every problem surfaces at start-up, before the first client.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let certs = read_certs(&self.cert)?;
        let key = read_key(&self.key)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| self.refused(e))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| self.refused(e))?;
        // HTTP/1.1 only, as the plain listener; a client offering h2 falls back to it.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// The TLS side of an HTTPS listener.
    pub fn acceptor(&self) -> Result<TlsAcceptor, TlsError> {
        self.server_config().map(TlsAcceptor::from)
    }

    fn refused(&self, error: rustls::Error) -> TlsError {
        TlsError::Refused {
            cert: self.cert.clone(),
            key: self.key.clone(),
            reason: error.to_string(),
        }
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let error = |reason: String| TlsError::Cert {
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| error(pem_reason(e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(pem_reason(e)))?;
    if certs.is_empty() {
        return Err(error("no CERTIFICATE in it (PEM expected)".into()));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Key {
        path: path.to_path_buf(),
        reason: match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "no PRIVATE KEY in it (PEM expected)".into()
            }
            e => pem_reason(e),
        },
    })
}

fn pem_reason(error: rustls::pki_types::pem::Error) -> String {
    match error {
        rustls::pki_types::pem::Error::Io(e) => e.to_string(),
        e => format!("not valid PEM ({e})"),
    }
}

/// A bound HTTP listener, plain or HTTPS. A plain `TcpListener` converts into one.
pub struct HttpListener {
    pub(crate) tcp: tokio::net::TcpListener,
    pub(crate) tls: Option<TlsAcceptor>,
}

impl HttpListener {
    /// HTTPS on `tcp`: every connection completes a TLS handshake before its first request.
    pub fn https(tcp: tokio::net::TcpListener, tls: TlsAcceptor) -> HttpListener {
        HttpListener {
            tcp,
            tls: Some(tls),
        }
    }

    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.tcp.local_addr()
    }
}

impl From<tokio::net::TcpListener> for HttpListener {
    fn from(tcp: tokio::net::TcpListener) -> HttpListener {
        HttpListener { tcp, tls: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path, cert: &str, key: &str) -> TlsFiles {
        std::fs::write(dir.join("cert.pem"), cert).unwrap();
        std::fs::write(dir.join("key.pem"), key).unwrap();
        TlsFiles {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        }
    }

    #[test]
    fn a_missing_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = TlsFiles {
            cert: dir.path().join("nope.pem"),
            key: dir.path().join("key.pem"),
        };
        let error = missing.server_config().unwrap_err().to_string();
        assert!(
            error.starts_with("cannot use the TLS certificate "),
            "{error}"
        );
        assert!(error.contains("nope.pem"), "{error}");
        assert!(error.contains("No such file"), "{error}");
    }

    #[test]
    fn garbage_is_refused_with_the_file_it_came_from() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = files(dir.path(), "not a certificate\n", "not a key\n");
        let error = garbage.server_config().unwrap_err().to_string();
        assert_eq!(
            error,
            format!(
                "cannot use the TLS certificate {}: no CERTIFICATE in it (PEM expected)",
                garbage.cert.display()
            )
        );
    }

    #[test]
    fn a_key_file_without_a_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cert = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let no_key = files(dir.path(), cert, cert);
        let error = no_key.server_config().unwrap_err().to_string();
        assert_eq!(
            error,
            format!(
                "cannot use the TLS key {}: no PRIVATE KEY in it (PEM expected)",
                no_key.key.display()
            )
        );
    }

    #[test]
    fn broken_pem_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cert = "-----BEGIN CERTIFICATE-----\nAAAA\n";
        let broken = files(dir.path(), cert, "");
        let error = broken.server_config().unwrap_err().to_string();
        assert!(error.contains("not valid PEM"), "{error}");
    }
}
