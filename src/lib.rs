//! mailgrip classifies e-mail in the mail chain of Dutch government organisations into the five
//! classes of the national pilot (functioneel, prive, niet-functioneel, personeelsvertrouwelijk,
//! partijpolitiek), tags it, relays it on and copies what must be kept into the archive.
//!
//! # Layout: the life of a message
//!
//! ```text
//!  MTA ──SMTP──▶ ingress ──▶ parse ──▶ classify ──▶ decide ──▶ tag ──▶ relay ──▶ next hop
//!               (session,   (mail-    (tokenizer +  (archive   (X-Mailgrip-*    │
//!                DATA/BDAT,  parser,   ONNX Runtime  or not)    headers)        ▼
//!                caps, ACL)  text      on worker                          archive (staged
//!                            layout)   threads)                           before relay,
//!                                                                         committed after)
//!                      └──────────── telemetry: metrics, /readyz, logs ───────────┘
//! ```
//!
//! - [`ingress`]: SMTP listener and sessions (tokio + `smtp-proto`, STARTTLS with rustls); the
//!   milter listener.
//! - [`parse`]: message bytes → subject, body text, domains, attachments; the model text layout;
//!   Exchange journal reports unwrapped.
//! - [`classify`]: bounded queue → inference workers → calibrated probabilities (ONNX,
//!   baseline, or a cascade of both).
//! - [`decide`]: probabilities → action on the archive copy.
//! - [`tag`]: prepend `X-Mailgrip-*`, strip forged ones.
//! - [`relay`]: next hop by SMTP (pooled) or into a folder.
//! - [`archive`]: durable `.eml` + JSON sidecar + MDTO by date; the SMTP archive sink's outbox.
//! - [`audit`]: the hash-chained decision trail.
//! - [`pipeline`]: the steps above, in order, for one message.
//! - [`telemetry`]: Prometheus metrics, health endpoints.
//! - [`review`], [`admin`]: the review queue and the archivist's web console.
//! - [`config`]: layered, validated configuration; [`reload`]: SIGHUP swaps it with the model.

pub mod admin;
pub mod archive;
pub mod audit;
pub mod classify;
pub mod cli;
pub mod config;
pub mod decide;
pub mod envelope;
pub mod ingress;
pub mod mdto;
pub mod parse;
pub mod pipeline;
pub mod relay;
pub mod reload;
pub mod review;
pub mod tag;
pub mod telemetry;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use classify::{Classifier, ClassifyError};
use config::Config;
use pipeline::{Gateway, GatewayHandle};
use telemetry::Metrics;

/// Sockets bound by the caller (the binary, or a test on port 0). Each is optional: a milter-only
/// deployment has no SMTP listener.
#[derive(Default)]
pub struct Listeners {
    pub smtp: Option<TcpListener>,
    pub metrics: Option<TcpListener>,
    /// The archivist's console (`admin.listen`), when configured.
    pub admin: Option<TcpListener>,
    pub milter: Option<TcpListener>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("loading the model: {0}")]
    Model(#[from] ClassifyError),
    #[error("{0}")]
    Other(String),
}

/// How long sessions may take to finish after shutdown is requested.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Where a reload (SIGHUP) gets its new configuration, and when.
pub struct Reload {
    /// One message per reload request.
    pub requests: tokio::sync::mpsc::Receiver<()>,
    /// Reads and validates the configuration again (file, then environment).
    pub load: Box<dyn Fn() -> Result<Config, String> + Send + Sync>,
}

/// Load the model, then serve SMTP and metrics until `shutdown` is cancelled.
pub async fn run(cfg: Config, listeners: Listeners, shutdown: CancellationToken) -> Result<(), StartError> {
    run_with_reload(cfg, listeners, shutdown, None).await
}

/// As [`run`], also reloading configuration and model on each request of `reload`.
pub async fn run_with_reload(
    cfg: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
    reload: Option<Reload>,
) -> Result<(), StartError> {
    let metrics = Arc::new(Metrics::new());
    let model_cfg = cfg.model.clone();
    let m = metrics.clone();
    let classifier = tokio::task::spawn_blocking(move || Classifier::start(&model_cfg, m))
        .await
        .map_err(|e| StartError::Other(e.to_string()))??;
    tracing::info!(model = %classifier.info().id(), kind = %classifier.info().kind, sha256 = %classifier.info().sha256, "model loaded");
    let gateway = Arc::new(GatewayHandle::new(
        Gateway::new(&cfg, classifier, metrics.clone()).map_err(|e| StartError::Other(format!("stores: {e}")))?,
    ));
    metrics.reload_ok.set(1);

    let mut tasks = tokio::task::JoinSet::new();
    if let Some(outbox) = gateway.get().outbox.clone() {
        tasks.spawn(outbox.run(shutdown.clone()));
    }
    if let Some(listener) = listeners.metrics {
        let g = gateway.clone();
        let ready: telemetry::Health = Arc::new(move || {
            let g = g.clone();
            Box::pin(async move { g.get().relay.probe().await.map_err(|e| format!("next hop: {e}")) })
        });
        let g = gateway.clone();
        let refresh: telemetry::Refresh = Arc::new(move |m: &Metrics| {
            let g = g.get();
            let (depth, oldest) = g.review.depth_and_oldest();
            m.review_queue_depth.set(depth as i64);
            m.review_oldest_seconds.set(oldest as i64);
            let mut counts = std::collections::HashMap::<(String, String), i64>::new();
            for d in g.review.decisions().unwrap_or_default() {
                *counts.entry((d.predicted, d.corrected)).or_default() += 1;
            }
            for ((predicted, corrected), n) in counts {
                m.review_overrides.with_label_values(&[&predicted, &corrected]).set(n);
            }
        });
        tasks.spawn(telemetry::serve_http(listener, metrics.clone(), ready, refresh, shutdown.clone()));
    }
    if let Some(listener) = listeners.admin {
        let console = admin::Console::start(&cfg, metrics.clone()).await.map_err(StartError::Other)?;
        tracing::info!(admin = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "console listening");
        tasks.spawn(admin::serve_admin(listener, console, shutdown.clone()));
    }
    if let Some(reload) = reload {
        tasks.spawn(reload::serve(cfg.clone(), reload, gateway.clone(), shutdown.clone()));
    }
    if let Some(listener) = listeners.milter {
        let serve = ingress::milter::serve_milter(listener, &cfg, gateway.clone(), shutdown.clone(), SHUTDOWN_GRACE);
        tasks.spawn(serve);
    }
    if let Some(listener) = listeners.smtp {
        let settings = Arc::new(ingress::IngressSettings::new(&cfg).map_err(|e| StartError::Other(e.to_string()))?);
        tracing::info!(smtp = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
                       relay = gateway.get().relay.mode(), "accepting mail");
        tasks.spawn(ingress::serve_smtp(listener, settings, gateway, shutdown.clone(), SHUTDOWN_GRACE));
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}
