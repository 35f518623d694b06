//! Baseline parity between training and serving: for every corpus mail that
//! `models/training/baseline.py` scored (models/mailgrip-baseline/expected.jsonl), the daemon's
//! own text extraction plus `BaselineBackend` must reproduce Python's calibrated probabilities
//! within 1e-4, and its explanation terms. No Python is needed here: the expected values are
//! committed with the model. Regenerate both with `scripts/baseline_parity.sh`.

mod common;

use std::sync::Arc;

use mailgrip::classify::baseline::BaselineBackend;
use mailgrip::classify::manifest::VerifiedModel;
use mailgrip::classify::{Classifier, LABELS};
use mailgrip::config::ModelConfig;
use mailgrip::telemetry::Metrics;
use sha2::{Digest, Sha256};

const TOLERANCE: f32 = 1e-4;

fn model_dir() -> std::path::PathBuf {
    common::repo().join("models/mailgrip-baseline")
}

struct Case {
    file: String,
    text_sha256: String,
    probs: Vec<f32>,
    class: String,
    /// How many terms Python ranked; `terms` may hold more: those tied with the k-th.
    k: usize,
    terms: Vec<(String, f32)>,
}

fn cases() -> Vec<Case> {
    let expected = std::fs::read_to_string(model_dir().join("expected.jsonl"))
        .expect("models/mailgrip-baseline/expected.jsonl (run scripts/baseline_parity.sh)");
    expected
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            Case {
                file: v["file"].as_str().unwrap().to_string(),
                text_sha256: v["text_sha256"].as_str().unwrap().to_string(),
                probs: v["probs"].as_array().unwrap().iter().map(|p| p.as_f64().unwrap() as f32).collect(),
                class: v["explain"]["class"].as_str().unwrap().to_string(),
                k: v["explain"]["k"].as_u64().unwrap() as usize,
                terms: v["explain"]["terms"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| (t[0].as_str().unwrap().to_string(), t[1].as_f64().unwrap() as f32))
                    .collect(),
            }
        })
        .collect()
}

/// The model text of one corpus mail, exactly as the daemon computes it.
fn model_text(file: &str) -> String {
    let bytes = std::fs::read(common::repo().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    mailgrip::parse::extract(&bytes).model_text()
}

fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

#[tokio::test]
async fn rust_reproduces_python_probabilities_on_the_whole_corpus() {
    let cfg = ModelConfig { dir: model_dir(), ..Default::default() };
    let classifier = Classifier::start(&cfg, Arc::new(Metrics::new())).unwrap();
    let cases = cases();
    assert!(cases.len() >= 100, "expected.jsonl must cover the corpus");
    let mut worst = 0f32;
    let mut stale = Vec::new();
    let mut failures = Vec::new();
    for case in &cases {
        let text = model_text(&case.file);
        if sha256_hex(&text) != case.text_sha256 {
            stale.push(case.file.clone());
            continue;
        }
        let scores = classifier.classify(text).await.unwrap();
        let diff = scores.0.iter().zip(&case.probs).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        worst = worst.max(diff);
        if diff >= TOLERANCE {
            failures.push(format!("{}: rust {:?} vs python {:?}", case.file, scores.0, case.probs));
        }
    }
    assert!(
        stale.is_empty(),
        "{} mails extract to a different text than the model was trained on (corpus or parser \
         changed: retrain with scripts/baseline_parity.sh), e.g. {:?}",
        stale.len(),
        &stale[..stale.len().min(5)]
    );
    assert!(
        failures.is_empty(),
        "{} of {} mails differ by >= {TOLERANCE} (worst {worst:e}):\n{}",
        failures.len(),
        cases.len(),
        failures[..failures.len().min(10)].join("\n")
    );
    eprintln!("baseline parity: {} mails, max |rust - python| = {worst:e}", cases.len());
}

#[test]
fn rust_explanations_match_python() {
    let model = VerifiedModel::load(&model_dir()).unwrap();
    let backend = BaselineBackend::load(&model).unwrap();
    let mut checked = 0;
    for case in cases() {
        assert!(LABELS.contains(&case.class.as_str()));
        let text = model_text(&case.file);
        if sha256_hex(&text) != case.text_sha256 {
            continue; // reported by the probability test
        }
        let k = case.k.min(case.terms.len());
        let rust = backend.explain(&text, &case.class, case.k);
        assert_eq!(rust.len(), k, "{}: {rust:?}", case.file);
        for (i, (r, (_, weight))) in rust.iter().zip(&case.terms).enumerate() {
            assert!(
                (r.weight - weight).abs() < TOLERANCE,
                "{}: term {i}: rust {r:?} vs python {:?}",
                case.file,
                case.terms
            );
            // The same term, or one Python ranked with the same weight (exact ties).
            assert!(
                case.terms.iter().any(|(t, w)| *t == r.term && (w - weight).abs() < TOLERANCE),
                "{}: term {i}: rust {r:?} vs python {:?}",
                case.file,
                case.terms
            );
        }
        checked += 1;
    }
    assert!(checked >= 100, "too few explanations checked: {checked}");
}
