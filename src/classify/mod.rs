//! Classify: model text in, calibrated probabilities for the five classes out.
//!
//! The pipeline calls [`Classifier::classify`] from async code. Tokenization and inference never
//! run on an async worker: requests go through a bounded queue (admission by semaphore) to
//! `model.workers` dedicated threads, each owning its own backend (ONNX Runtime session or
//! baseline). A worker takes whatever is queued, up to `model.max_batch`, optionally waiting
//! `model.batch_window_us` for more, and answers each request through a oneshot channel.

pub mod baseline;
pub mod cascade;
pub mod manifest;
pub mod onnx;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{Semaphore, oneshot};

use crate::config::ModelConfig;
use crate::telemetry::Metrics;
use manifest::VerifiedModel;

/// The five classes of the national pilot, in canonical order.
pub const LABELS: [&str; 5] = ["functioneel", "prive", "niet-functioneel", "personeelsvertrouwelijk", "partijpolitiek"];

/// Calibrated class probabilities, in [`LABELS`] order.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Scores(pub [f32; 5]);

impl Scores {
    /// Index and probability of the most likely class.
    pub fn top(&self) -> (usize, f32) {
        let mut best = 0;
        for i in 1..5 {
            if self.0[i] > self.0[best] {
                best = i;
            }
        }
        (best, self.0[best])
    }

    pub fn label(&self) -> &'static str {
        LABELS[self.top().0]
    }

    /// `functioneel=0.9100; prive=0.0300; ...` as written in `X-Mailgrip-Scores`.
    pub fn header_value(&self) -> String {
        LABELS.iter().zip(self.0).map(|(l, p)| format!("{l}={p:.4}")).collect::<Vec<_>>().join("; ")
    }

    pub fn as_map(&self) -> serde_json::Map<String, serde_json::Value> {
        LABELS.iter().zip(self.0).map(|(l, p)| (l.to_string(), serde_json::json!(round6(p)))).collect()
    }
}

fn round6(p: f32) -> f64 {
    (p as f64 * 1e6).round() / 1e6
}

/// softmax(logits / T), reordered into [`LABELS`] order.
pub fn softmax_calibrated(logits: &[f32], temperature: f32, label_index: &[usize; 5]) -> [f32; 5] {
    let scaled: Vec<f64> = logits.iter().map(|&l| l as f64 / temperature as f64).collect();
    let max = scaled.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let exps: Vec<f64> = scaled.iter().map(|l| (l - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    let mut out = [0f32; 5];
    for (i, &idx) in label_index.iter().enumerate() {
        out[i] = (exps[idx] / sum) as f32;
    }
    out
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ClassifyError {
    #[error("model: {0}")]
    Model(String),
    #[error("classifier queue full for {0:?}")]
    Overloaded(Duration),
    #[error("classifier did not answer within {0:?}")]
    Timeout(Duration),
    #[error("classifier stopped")]
    Stopped,
}

impl ClassifyError {
    /// Low-cardinality name for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ClassifyError::Model(_) => "model",
            ClassifyError::Overloaded(_) => "overloaded",
            ClassifyError::Timeout(_) => "timeout",
            ClassifyError::Stopped => "stopped",
        }
    }
}

/// One inference engine instance, owned by one worker thread.
pub trait Backend: Send {
    fn classify(&mut self, texts: &[&str], metrics: &Metrics) -> Result<Vec<[f32; 5]>, ClassifyError>;
}

/// Which model answered: shown in headers, logs and the archive sidecar.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    pub name: String,
    pub version: String,
    pub kind: String,
    pub sha256: String,
}

impl ModelInfo {
    /// `name@version`, as in `X-Mailgrip-Model`.
    pub fn id(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

/// Build the backend a manifest asks for.
pub fn load_backend(model: &VerifiedModel, cfg: &ModelConfig) -> Result<Box<dyn Backend>, ClassifyError> {
    match model.manifest.kind.as_str() {
        "cascade" => {
            let [first, second] = &model.parts[..] else {
                return Err(ClassifyError::Model("cascade without two stages".into()));
            };
            let threshold = model.manifest.cascade.as_ref().map_or(1.0, |c| c.threshold);
            Ok(Box::new(cascade::CascadeBackend {
                first: load_backend(first, cfg)?,
                second: load_backend(second, cfg)?,
                threshold,
            }))
        }
        "onnx" => {
            let threads = if cfg.intra_threads > 0 {
                cfg.intra_threads
            } else {
                let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
                (cores / cfg.workers.max(1)).max(1)
            };
            Ok(Box::new(onnx::OnnxBackend::load(model, &cfg.ort_library, threads)?))
        }
        "baseline" => Ok(Box::new(baseline::BaselineBackend::load(model)?)),
        other => Err(ClassifyError::Model(format!("unknown model kind {other:?}"))),
    }
}

struct Job {
    text: String,
    enqueued: Instant,
    reply: oneshot::Sender<Result<Scores, ClassifyError>>,
}

/// Handle to the inference worker pool. Cheap to clone.
#[derive(Clone)]
pub struct Classifier {
    inner: Arc<Inner>,
}

struct Inner {
    tx: crossbeam_channel::Sender<Job>,
    admission: Arc<Semaphore>,
    timeout: Duration,
    info: ModelInfo,
    metrics: Arc<Metrics>,
}

impl Classifier {
    /// Verify the model directory, load one backend per worker and start the workers.
    /// Fails (before anything listens) if the model cannot be loaded.
    pub fn start(cfg: &ModelConfig, metrics: Arc<Metrics>) -> Result<Classifier, ClassifyError> {
        let model = VerifiedModel::load(&cfg.dir)?;
        let info = ModelInfo {
            name: model.manifest.name.clone(),
            version: model.manifest.version.clone(),
            kind: model.manifest.kind.clone(),
            sha256: model.weights_sha256.clone(),
        };
        let mut backends = Vec::with_capacity(cfg.workers);
        for _ in 0..cfg.workers {
            backends.push(load_backend(&model, cfg)?);
        }
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        for (n, backend) in backends.into_iter().enumerate() {
            let rx = rx.clone();
            let metrics = metrics.clone();
            let max_batch = cfg.max_batch;
            let window = Duration::from_micros(cfg.batch_window_us);
            std::thread::Builder::new()
                .name(format!("mailgrip-infer-{n}"))
                .spawn(move || worker(backend, rx, metrics, max_batch, window))
                .map_err(|e| ClassifyError::Model(format!("spawning worker: {e}")))?;
        }
        metrics.model_info.with_label_values(&[&info.name, &info.version]).set(1);
        Ok(Classifier {
            inner: Arc::new(Inner {
                tx,
                admission: Arc::new(Semaphore::new(cfg.queue_size)),
                timeout: Duration::from_millis(cfg.queue_timeout_ms),
                info,
                metrics,
            }),
        })
    }

    pub fn info(&self) -> &ModelInfo {
        &self.inner.info
    }

    /// Score one model text. Waits at most `model.queue_timeout_ms` for room in the queue and
    /// the same again for the answer.
    pub async fn classify(&self, text: String) -> Result<Scores, ClassifyError> {
        let inner = &self.inner;
        let timer = inner.metrics.classification_seconds.start_timer();
        let permit = tokio::time::timeout(inner.timeout, inner.admission.clone().acquire_owned())
            .await
            .map_err(|_| ClassifyError::Overloaded(inner.timeout))?
            .map_err(|_| ClassifyError::Stopped)?;
        let (reply, rx) = oneshot::channel();
        inner.tx.send(Job { text, enqueued: Instant::now(), reply }).map_err(|_| ClassifyError::Stopped)?;
        inner.metrics.classifier_queue.inc();
        let result = tokio::time::timeout(inner.timeout, rx).await;
        drop(permit);
        let result = match result {
            Err(_) => Err(ClassifyError::Timeout(inner.timeout)),
            Ok(Err(_)) => Err(ClassifyError::Stopped),
            Ok(Ok(r)) => r,
        };
        timer.observe_duration();
        result
    }
}

fn worker(
    mut backend: Box<dyn Backend>,
    rx: crossbeam_channel::Receiver<Job>,
    metrics: Arc<Metrics>,
    max_batch: usize,
    window: Duration,
) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        let deadline = Instant::now() + window;
        while jobs.len() < max_batch {
            let next = if window.is_zero() { rx.try_recv().ok() } else { rx.recv_deadline(deadline).ok() };
            match next {
                Some(job) => jobs.push(job),
                None => break,
            }
        }
        metrics.classifier_queue.sub(jobs.len() as i64);
        // Requests whose caller gave up (timeout) are not worth computing.
        jobs.retain(|j| !j.reply.is_closed());
        if jobs.is_empty() {
            continue;
        }
        for j in &jobs {
            metrics.queue_wait_seconds.observe(j.enqueued.elapsed().as_secs_f64());
        }
        let texts: Vec<&str> = jobs.iter().map(|j| j.text.as_str()).collect();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| backend.classify(&texts, &metrics)))
            .unwrap_or_else(|_| Err(ClassifyError::Model("inference panicked".into())));
        match result {
            Ok(scores) => {
                for (job, s) in jobs.into_iter().zip(scores) {
                    let _ = job.reply.send(Ok(Scores(s)));
                }
            }
            Err(e) => {
                for job in jobs {
                    let _ = job.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_reorders_and_calibrates() {
        // Model output order differs from canonical order.
        let idx = [4, 3, 2, 1, 0];
        let p = softmax_calibrated(&[0.0, 0.0, 0.0, 0.0, 2.0], 1.0, &idx);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(p[0] > 0.6, "{p:?}");
        let hot = softmax_calibrated(&[0.0, 0.0, 0.0, 0.0, 2.0], 2.0, &idx);
        assert!(hot[0] < p[0], "higher temperature must flatten");
        assert_eq!(Scores(p).label(), "functioneel");
    }

    #[test]
    fn header_value_lists_all_classes() {
        let s = Scores([0.91, 0.03, 0.02, 0.02, 0.02]);
        assert_eq!(
            s.header_value(),
            "functioneel=0.9100; prive=0.0300; niet-functioneel=0.0200; personeelsvertrouwelijk=0.0200; partijpolitiek=0.0200"
        );
    }
}
