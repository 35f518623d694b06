//! Telemetry: the Prometheus metrics every stage reports to, and the HTTP endpoint that serves
//! them with `/healthz` and `/readyz`.
//!
//! Labels stay low-cardinality (class, outcome, stage, error type): never a sender or recipient.

mod http;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

pub use http::{Health, Refresh, serve_http};

/// All of mailgrip's metrics, registered in one registry.
pub struct Metrics {
    pub registry: Registry,
    /// Messages by class and by outcome (`relayed`, `journaled`, `tempfailed`, `rejected`).
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
    /// Errors by stage (`ingress`, `parse`, `classify`, `relay`, `archive`) and type.
    pub errors: IntCounterVec,
    /// SMTP connections by result (`accepted`, `denied`, `over_capacity`).
    pub connections: IntCounterVec,
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
