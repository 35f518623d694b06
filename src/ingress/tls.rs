//! STARTTLS (RFC 3207) for the ingress, and the stream type both SMTP sides use before and after
//! the upgrade.
//!
//! TLS is rustls with the `ring` provider (no C toolchain beyond `cc`, no cmake). The certificate
//! and key (`smtp.tls_cert`, `smtp.tls_key`) are loaded and checked against each other by
//! [`crate::config::Config::validate`], so a wrong path or a key of another certificate stops
//! start-up with the key named, instead of failing the first Exchange server that says STARTTLS.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use crate::config::{ConfigError, SmtpConfig};

/// The crypto provider for both sides. Passed explicitly rather than installed process-wide, so
/// nothing depends on which code path happens to touch TLS first.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn invalid(key: &'static str, problem: String) -> ConfigError {
    ConfigError::Invalid { key, problem }
}

/// Load `smtp.tls_cert` / `smtp.tls_key` into an acceptor; `None` when STARTTLS is not configured.
pub fn acceptor(smtp: &SmtpConfig) -> Result<Option<TlsAcceptor>, ConfigError> {
    let (cert, key) = (&smtp.tls_cert, &smtp.tls_key);
    match (cert.as_os_str().is_empty(), key.as_os_str().is_empty()) {
        (true, true) => return Ok(None),
        (false, true) => return Err(invalid("smtp.tls_key", "required when smtp.tls_cert is set".into())),
        (true, false) => return Err(invalid("smtp.tls_cert", "required when smtp.tls_key is set".into())),
        (false, false) => {}
    }
    let chain = load_certs("smtp.tls_cert", cert)?;
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| invalid("smtp.tls_key", format!("{}: no usable PEM private key: {e}", key.display())))?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("smtp.tls_cert", e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| {
            invalid(
                "smtp.tls_key",
                format!("{} does not fit the certificate in {}: {e}", key.display(), cert.display()),
            )
        })?;
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}

/// Every certificate in a PEM file, in order (leaf first for a chain); an empty file is an error.
pub fn load_certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| invalid(key, format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(invalid(key, format!("{}: no PEM certificate in it", path.display())));
    }
    Ok(certs)
}

/// A TCP connection before or after STARTTLS. Used by ingress sessions and by relay connections,
/// so the SMTP code above it reads and writes the same way in both states.
pub enum MaybeTls {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::TlsStream<TcpStream>>),
    /// The TCP stream was taken for a handshake that did not give it back; all I/O fails.
    Closed,
}

/// What a TLS connection negotiated, for logs and the `mailgrip_smtp_tls_sessions_total` labels
/// (both bounded: two versions, a handful of cipher suites).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsInfo {
    pub version: &'static str,
    pub cipher: &'static str,
}

impl MaybeTls {
    pub fn tls_info(&self) -> Option<TlsInfo> {
        let MaybeTls::Tls(s) = self else {
            return None;
        };
        let state = s.get_ref().1;
        let version = match state.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "other",
        };
        let cipher = state.negotiated_cipher_suite().and_then(|c| c.suite().as_str()).unwrap_or("other");
        Some(TlsInfo { version, cipher })
    }

    /// Take the plain TCP stream out for a handshake; `None` if TLS is already on (or gone).
    pub fn take_plain(&mut self) -> Option<TcpStream> {
        match std::mem::replace(self, MaybeTls::Closed) {
            MaybeTls::Plain(tcp) => Some(tcp),
            other => {
                *self = other;
                None
            }
        }
    }
}

impl AsyncRead for MaybeTls {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            MaybeTls::Closed => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }
}

impl AsyncWrite for MaybeTls {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            MaybeTls::Closed => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            MaybeTls::Closed => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            MaybeTls::Closed => Poll::Ready(Ok(())),
        }
    }
}
