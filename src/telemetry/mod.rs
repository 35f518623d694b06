//! Telemetry: the Prometheus metrics every stage reports to, and the HTTP endpoint that serves
//! them with `/healthz` and `/readyz`.
//!
//! Labels stay low-cardinality (class, outcome, stage, error type): never a sender or recipient.

mod http;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

pub use http::{Health, Refresh, serve_http};

/// All of mailgrip's metrics, registered in one registry.
pub struct Metrics {
    pub registry: Registry,
    /// Messages by class and by outcome (`relayed`, `journaled`, `tempfailed`, `rejected`; milter:
    /// `accepted`, tagged and handed back to the MTA).
    pub messages: IntCounterVec,
    /// From queueing a text for the classifier to its answer.
    pub classification_seconds: Histogram,
    /// One ONNX Runtime (or baseline) call for one batch.
    pub inference_seconds: Histogram,
    /// Time a request waited in the classifier queue.
    pub queue_wait_seconds: Histogram,
    /// Relay of one message to the next hop, by mode.
    pub relay_seconds: HistogramVec,
    /// Whole processing after end-of-data: parse, classify, archive, relay.
    pub processing_seconds: Histogram,
    /// Sequences per inference call.
    pub batch_size: Histogram,
    pub sessions_in_flight: IntGauge,
    pub classifier_queue: IntGauge,
    /// Errors by stage (`ingress`, `milter`, `parse`, `classify`, `relay`, `archive`) and type.
    pub errors: IntCounterVec,
    /// SMTP connections by result (`accepted`, `denied`, `over_capacity`).
    pub connections: IntCounterVec,
    /// Ingress sessions upgraded by STARTTLS, by TLS version and cipher suite.
    pub tls_sessions: IntCounterVec,
    /// Copies committed, by store (`archive`, `archive-restricted`, `review`).
    pub archived: IntCounterVec,
    /// Decisions by action and policy mode.
    pub decisions: IntCounterVec,
    /// Copies waiting in the review queue, and the age of the oldest (refreshed at scrape).
    pub review_queue_depth: IntGauge,
    pub review_oldest_seconds: IntGauge,
    /// Exchange journal reports by result (`unwrapped`, `malformed`, `untrusted`).
    pub journal_reports: IntCounterVec,
    /// Reviewer decisions by (predicted, corrected) class: the drift signal for retraining.
    pub review_overrides: IntGaugeVec,
    pub model_info: IntGaugeVec,
    /// Messages answered by each stage of a cascade model (`first` alone, or `second` too).
    pub cascade_stage: IntCounterVec,
    /// SIGHUP reloads by result (`ok`, `failed`); a failed reload keeps the running config and model.
    pub reloads: IntCounterVec,
    /// 1 if the last reload succeeded (or none was tried), 0 if it was refused.
    pub reload_ok: IntGauge,
    /// The SMTP archive sink: copies waiting in the outbox, the age of the oldest, copies given
    /// up (in `failed/`), copies delivered, and failed attempts by kind (`unreachable`,
    /// `deferred`, `refused`, `expired`, `corrupt`, `io`).
    pub archive_outbox_depth: IntGauge,
    pub archive_outbox_oldest_seconds: IntGauge,
    pub archive_outbox_failed: IntGauge,
    pub archive_outbox_sent: IntCounter,
    pub archive_outbox_failures: IntCounterVec,
    /// Console logins by result (`success`, `failure`, `throttled`).
    pub admin_logins: IntCounterVec,
    /// Console requests refused, by reason (`csrf`, `origin`, `role`).
    pub admin_refused: IntCounterVec,
}

const LATENCY_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).unwrap();
            registry.register(Box::new(c.clone())).unwrap();
            c
        };
        let hist = |name: &str, help: &str| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec())).unwrap();
            registry.register(Box::new(h.clone())).unwrap();
            h
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).unwrap();
            registry.register(Box::new(g.clone())).unwrap();
            g
        };
        let relay_seconds = HistogramVec::new(
            HistogramOpts::new("mailgrip_relay_seconds", "Relaying one message to the next hop.")
                .buckets(LATENCY_BUCKETS.to_vec()),
            &["mode"],
        )
        .unwrap();
        registry.register(Box::new(relay_seconds.clone())).unwrap();
        let batch_size = Histogram::with_opts(
            HistogramOpts::new("mailgrip_batch_size", "Sequences per inference call.")
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]),
        )
        .unwrap();
        registry.register(Box::new(batch_size.clone())).unwrap();
        let review_overrides = IntGaugeVec::new(
            Opts::new("mailgrip_review_decisions", "Reviewer decisions so far, by predicted and corrected class."),
            &["predicted", "corrected"],
        )
        .unwrap();
        registry.register(Box::new(review_overrides.clone())).unwrap();
        let model_info =
            IntGaugeVec::new(Opts::new("mailgrip_model_info", "The model in use (value 1)."), &["name", "version"])
                .unwrap();
        registry.register(Box::new(model_info.clone())).unwrap();
        let archive_outbox_sent =
            IntCounter::new("mailgrip_archive_outbox_sent_total", "Archive copies delivered to the archiver by SMTP.")
                .unwrap();
        registry.register(Box::new(archive_outbox_sent.clone())).unwrap();
        Metrics {
            messages: counter(
                "mailgrip_messages_total",
                "Messages processed, by class and outcome.",
                &["class", "outcome"],
            ),
            classification_seconds: hist(
                "mailgrip_classification_seconds",
                "Queue, tokenization and inference for one message.",
            ),
            inference_seconds: hist("mailgrip_inference_seconds", "One inference call for one batch."),
            queue_wait_seconds: hist(
                "mailgrip_classifier_queue_wait_seconds",
                "Time a message waited for an inference worker.",
            ),
            processing_seconds: hist(
                "mailgrip_processing_seconds",
                "Added latency after end of data: parse, classify, archive, relay.",
            ),
            relay_seconds,
            batch_size,
            sessions_in_flight: gauge("mailgrip_sessions_in_flight", "SMTP sessions open now."),
            classifier_queue: gauge("mailgrip_classifier_queue_depth", "Messages waiting for an inference worker."),
            errors: counter("mailgrip_errors_total", "Errors by stage and type.", &["stage", "error_type"]),
            connections: counter("mailgrip_smtp_connections_total", "SMTP connections by result.", &["result"]),
            tls_sessions: counter(
                "mailgrip_smtp_tls_sessions_total",
                "Ingress sessions upgraded by STARTTLS, by TLS version and cipher suite.",
                &["version", "cipher"],
            ),
            archived: counter("mailgrip_archived_total", "Copies committed, by store.", &["store"]),
            decisions: counter("mailgrip_decisions_total", "Policy decisions by action and mode.", &["action", "mode"]),
            review_queue_depth: gauge("mailgrip_review_queue_depth", "Copies waiting for review."),
            review_oldest_seconds: gauge(
                "mailgrip_review_oldest_seconds",
                "Age of the oldest copy waiting for review.",
            ),
            journal_reports: counter(
                "mailgrip_journal_reports_total",
                "Exchange journal reports by result: unwrapped, malformed (451), untrusted (relayed as ordinary mail).",
                &["result"],
            ),
            review_overrides,
            model_info,
            cascade_stage: counter(
                "mailgrip_cascade_stage_total",
                "Messages scored by a cascade model, by the last stage that ran.",
                &["stage"],
            ),
            reloads: counter(
                "mailgrip_reloads_total",
                "Configuration and model reloads (SIGHUP), by result.",
                &["result"],
            ),
            reload_ok: gauge(
                "mailgrip_config_last_reload_successful",
                "1 if the last reload succeeded or none was tried; 0 if the last one was refused.",
            ),
            archive_outbox_depth: gauge(
                "mailgrip_archive_outbox_depth",
                "Archive copies waiting in the SMTP outbox for the archiver.",
            ),
            archive_outbox_oldest_seconds: gauge(
                "mailgrip_archive_outbox_oldest_seconds",
                "Age of the oldest archive copy waiting in the SMTP outbox.",
            ),
            archive_outbox_failed: gauge(
                "mailgrip_archive_outbox_failed",
                "Archive copies given up (archiver refused, or too old), kept in the outbox's failed/ folder.",
            ),
            archive_outbox_sent,
            archive_outbox_failures: counter(
                "mailgrip_archive_outbox_failures_total",
                "Failed attempts to deliver an archive copy to the archiver, by kind.",
                &["kind"],
            ),
            admin_logins: counter("mailgrip_admin_logins_total", "Console logins by result.", &["result"]),
            admin_refused: counter(
                "mailgrip_admin_refused_total",
                "Console requests refused (CSRF token, foreign origin, role).",
                &["reason"],
            ),
            registry,
        }
    }

    pub fn error(&self, stage: &str, error_type: &str) {
        self.errors.with_label_values(&[stage, error_type]).inc();
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        TextEncoder::new().encode_to_string(&self.registry.gather()).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
