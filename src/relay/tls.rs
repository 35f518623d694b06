//! STARTTLS towards the next hop: which trust anchors and which name, per `relay.tls`.
//!
//! - `required`: the certificate must chain to `relay.tls_ca` (or the system roots) and carry
//!   `relay.tls_server_name` (or the host of `relay.next_hop`), as Postfix's `secure` level.
//! - `opportunistic`: as Postfix's `may` and Exchange's default: encrypt, but accept any
//!   certificate. Verifying and then falling back to plain text on failure would be strictly
//!   worse (a passive listener then reads the mail), and the default certificates of Exchange
//!   receive connectors are self-signed. The handshake signature is still checked.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::TlsConnector;

use crate::config::{ConfigError, RelayConfig, RelayTls};
use crate::ingress::tls::{load_certs, provider};

/// Built once from the configuration (and once by `Config::validate`, to name bad keys early).
pub struct RelayTlsSettings {
    pub mode: RelayTls,
    /// The client side of the handshake and the name to verify / send as SNI; `None` with `none`.
    pub connector: Option<(TlsConnector, ServerName<'static>)>,
}

fn invalid(key: &'static str, problem: String) -> ConfigError {
    ConfigError::Invalid { key, problem }
}

impl RelayTlsSettings {
    pub fn new(cfg: &RelayConfig) -> Result<RelayTlsSettings, ConfigError> {
        if cfg.tls != RelayTls::Required && !cfg.tls_ca.as_os_str().is_empty() {
            return Err(invalid(
                "relay.tls_ca",
                "only used with relay.tls = \"required\" (opportunistic TLS does not verify certificates)".into(),
            ));
        }
        if cfg.tls == RelayTls::None {
            return Ok(RelayTlsSettings { mode: cfg.tls, connector: None });
        }
        let name = if cfg.tls_server_name.is_empty() { host_of(&cfg.next_hop) } else { cfg.tls_server_name.trim() };
        let server_name = ServerName::try_from(name.to_string()).map_err(|_| {
            invalid("relay.tls_server_name", format!("{name:?} is not a valid host name or IP address for TLS"))
        })?;
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid("relay.tls", e.to_string()))?;
        let config = if cfg.tls == RelayTls::Required {
            builder.with_root_certificates(roots(cfg)?).with_no_client_auth()
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider())))
                .with_no_client_auth()
        };
        Ok(RelayTlsSettings { mode: cfg.tls, connector: Some((TlsConnector::from(Arc::new(config)), server_name)) })
    }
}

/// `host` of `host:port`, `[v6]:port` or `v6` without brackets.
fn host_of(next_hop: &str) -> &str {
    let host = next_hop.rsplit_once(':').map_or(next_hop, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// The trust anchors for `required`: `relay.tls_ca` alone, or the system store.
fn roots(cfg: &RelayConfig) -> Result<RootCertStore, ConfigError> {
    let mut roots = RootCertStore::empty();
    if cfg.tls_ca.as_os_str().is_empty() {
        let native = rustls_native_certs::load_native_certs();
        let (added, _) = roots.add_parsable_certificates(native.certs);
        if added == 0 {
            let why = native.errors.first().map(|e| format!(" ({e})")).unwrap_or_default();
            return Err(invalid(
                "relay.tls_ca",
                format!("empty, and no system root certificates could be loaded{why}: set it to your CA's PEM file"),
            ));
        }
    } else {
        for cert in load_certs("relay.tls_ca", &cfg.tls_ca)? {
            roots.add(cert).map_err(|e| {
                invalid("relay.tls_ca", format!("{}: not a usable CA certificate: {e}", cfg.tls_ca.display()))
            })?;
        }
    }
    Ok(roots)
}

/// Opportunistic TLS: any certificate, but a valid handshake signature by its key.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
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
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_of_next_hop() {
        assert_eq!(host_of("127.0.0.1:10026"), "127.0.0.1");
        assert_eq!(host_of("exchange.example.nl:25"), "exchange.example.nl");
        assert_eq!(host_of("[::1]:25"), "::1");
    }
}
