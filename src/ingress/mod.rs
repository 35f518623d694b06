//! Ingress: the SMTP listener Postfix (or any MTA) hands mail to.
//!
//! The accept loop enforces who may connect (`smtp.allowed_clients`, `554 5.7.1` otherwise) and
//! how many sessions run at once (`smtp.max_connections`, `421 4.3.2` over it). Each accepted
//! connection becomes a [`session::Session`] holding its semaphore permit. mailgrip only ever
//! relays to its one configured next hop, so it cannot be used as an open relay.
//!
//! [`milter`] is the other way in: the MTA keeps the message and asks us only for headers.

pub mod data;
pub mod milter;
pub mod reply;
pub mod session;
pub mod tls;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use crate::config::{Config, ConfigError, SmtpConfig};
use crate::pipeline::GatewayHandle;

/// What sessions need from the configuration, parsed once.
pub struct IngressSettings {
    pub smtp: SmtpConfig,
    allowed: Vec<IpNet>,
    xforward: Vec<IpNet>,
    /// The certificate and key for STARTTLS; `None` when it is not offered.
    pub tls: Option<TlsAcceptor>,
}

impl IngressSettings {
    /// Fails only if the TLS files changed since `Config::validate` read them.
    pub fn new(cfg: &Config) -> Result<IngressSettings, ConfigError> {
        Ok(IngressSettings {
            smtp: cfg.smtp.clone(),
            allowed: cfg.allowed_clients(),
            xforward: cfg.xforward_clients(),
            tls: tls::acceptor(&cfg.smtp)?,
        })
    }

    pub fn is_allowed(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.allowed.iter().any(|n| n.contains(&ip))
    }

    pub fn is_xforward_client(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.xforward.iter().any(|n| n.contains(&ip))
    }
}

/// IPv4-mapped IPv6 addresses count as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// Accept SMTP connections until `shutdown`, then wait up to `grace` for sessions to finish.
pub async fn serve_smtp(
    listener: TcpListener,
    settings: Arc<IngressSettings>,
    gateway: Arc<GatewayHandle>,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let max = settings.smtp.max_connections;
    let permits = Arc::new(Semaphore::new(max));
    let metrics = gateway.metrics.clone();
    loop {
        let (mut stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    metrics.error("ingress", "accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        if !settings.is_allowed(peer.ip()) {
            metrics.connections.with_label_values(&["denied"]).inc();
            warn!(%peer, "connection from a client outside smtp.allowed_clients refused");
            tokio::spawn(async move {
                let _ = stream.write_all(b"554 5.7.1 Access denied\r\n").await;
                let _ = stream.shutdown().await;
            });
            continue;
        }
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics.connections.with_label_values(&["over_capacity"]).inc();
            warn!(%peer, max, "connection cap reached");
            tokio::spawn(async move {
                let _ = stream.write_all(b"421 4.3.2 Too many connections, try again later\r\n").await;
                let _ = stream.shutdown().await;
            });
            continue;
        };
        metrics.connections.with_label_values(&["accepted"]).inc();
        let session_id = uuid::Uuid::now_v7().simple().to_string();
        let span = info_span!("session", %peer, session = &session_id[20..]);
        let session = session::Session::new(stream, peer, settings.clone(), gateway.clone(), shutdown.clone());
        let metrics = metrics.clone();
        tokio::spawn(
            async move {
                metrics.sessions_in_flight.inc();
                session.run().await;
                metrics.sessions_in_flight.dec();
                drop(permit);
            }
            .instrument(span),
        );
    }
    // Stop listening at once: new clients get "connection refused" and the MTA tries later.
    drop(listener);
    info!("SMTP listener stopped; waiting for sessions to finish");
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    if tokio::time::timeout(grace, permits.acquire_many(all)).await.is_err() {
        warn!("grace period over with sessions still open");
    }
}
