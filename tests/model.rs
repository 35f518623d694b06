//! The model directory contract: sha256 verification, and cross-language parity with the
//! probabilities Python's onnxruntime computed for the same export (tests/fixtures/tiny-model).

mod common;

use std::sync::Arc;

use mailgrip::classify::Classifier;
use mailgrip::classify::manifest::VerifiedModel;
use mailgrip::config::ModelConfig;
use mailgrip::telemetry::Metrics;

fn tiny() -> std::path::PathBuf {
    common::repo().join("tests/fixtures/tiny-model")
}

#[tokio::test]
async fn rust_reproduces_python_probabilities() {
    let cfg = ModelConfig { dir: tiny(), max_batch: 4, ..Default::default() };
    let classifier = Classifier::start(&cfg, Arc::new(Metrics::new())).unwrap();
    let expected = std::fs::read_to_string(tiny().join("expected.jsonl")).unwrap();
    let mut n = 0;
    // Submit all at once so batching with padding is exercised too.
    let mut pending = Vec::new();
    for line in expected.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let text = v["text"].as_str().unwrap().to_string();
        let probs: Vec<f32> = v["probs"].as_array().unwrap().iter().map(|p| p.as_f64().unwrap() as f32).collect();
        let c = classifier.clone();
        pending.push((text.clone(), probs, tokio::spawn(async move { c.classify(text).await })));
    }
    for (text, probs, handle) in pending {
        let scores = handle.await.unwrap().unwrap();
        for (a, b) in scores.0.iter().zip(&probs) {
            assert!((a - b).abs() < 1e-4, "text {text:?}: rust {:?} vs python {probs:?}", scores.0);
        }
        n += 1;
    }
    assert!(n >= 10, "expected.jsonl must hold cases");
}

#[test]
fn wrong_sha256_is_refused_with_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    for f in ["model.onnx", "tokenizer.json", "manifest.toml"] {
        std::fs::copy(tiny().join(f), tmp.path().join(f)).unwrap();
    }
    assert!(VerifiedModel::load(tmp.path()).is_ok());
    // Flip one byte of the weights.
    let path = tmp.path().join("model.onnx");
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let err = VerifiedModel::load(tmp.path()).unwrap_err().to_string();
    assert!(err.contains("sha256 mismatch for model.onnx"), "{err}");
    let cfg = ModelConfig { dir: tmp.path().to_path_buf(), ..Default::default() };
    assert!(Classifier::start(&cfg, Arc::new(Metrics::new())).is_err(), "the daemon must not start on it");
}

#[test]
fn manifest_must_name_every_file_and_the_five_labels() {
    let tmp = tempfile::tempdir().unwrap();
    for f in ["model.onnx", "tokenizer.json"] {
        std::fs::copy(tiny().join(f), tmp.path().join(f)).unwrap();
    }
    let manifest = std::fs::read_to_string(tiny().join("manifest.toml")).unwrap();
    let no_tok: String =
        manifest.lines().filter(|l| !l.starts_with("\"tokenizer.json\"")).collect::<Vec<_>>().join("\n");
    std::fs::write(tmp.path().join("manifest.toml"), no_tok).unwrap();
    let err = VerifiedModel::load(tmp.path()).unwrap_err().to_string();
    assert!(err.contains("no sha256 for tokenizer.json"), "{err}");
    let wrong_labels = manifest.replace("\"partijpolitiek\"", "\"politiek\"");
    std::fs::write(tmp.path().join("manifest.toml"), wrong_labels).unwrap();
    let err = VerifiedModel::load(tmp.path()).unwrap_err().to_string();
    assert!(err.contains("partijpolitiek"), "{err}");
}

/// A cascade of the tiny model (first) and the shipped baseline (second): it loads, pins both
/// stages by their manifest's sha256, and combines them as documented.
#[tokio::test]
async fn cascade_pins_its_stages_and_combines_them() {
    let tmp = tempfile::tempdir().unwrap();
    let sha = |p: &std::path::Path| mailgrip::classify::manifest::sha256_file(&p.join("manifest.toml")).unwrap();
    let baseline = common::repo().join("models/mailgrip-baseline");
    let manifest = |first_sha: &str, threshold: f32| {
        format!(
            "name = \"c\"\nversion = \"1\"\nkind = \"cascade\"\nlabels = [\"functioneel\", \"prive\", \"niet-functioneel\", \"personeelsvertrouwelijk\", \"partijpolitiek\"]\n\
             [cascade]\nfirst = \"{}\"\nfirst_manifest_sha256 = \"{first_sha}\"\nsecond = \"{}\"\nsecond_manifest_sha256 = \"{}\"\nthreshold = {threshold}\n",
            tiny().display(),
            baseline.display(),
            sha(&baseline)
        )
    };
    let texts = ["Vergadering over de subsidieaanvraag", "Zullen we zaterdag gaan zwemmen met de kinderen?"];
    let score = |dir: std::path::PathBuf| async move {
        let cfg = ModelConfig { dir, ..Default::default() };
        let c = Classifier::start(&cfg, Arc::new(Metrics::new())).unwrap();
        let mut out = Vec::new();
        for t in texts {
            out.push(c.classify(t.to_string()).await.unwrap().0);
        }
        out
    };
    let first = score(tiny()).await;
    let second = score(baseline.clone()).await;

    // Threshold 1.0: the tiny model is never that sure, so every answer is the mean of both.
    std::fs::write(tmp.path().join("manifest.toml"), manifest(&sha(&tiny()), 1.0)).unwrap();
    let both = score(tmp.path().to_path_buf()).await;
    for i in 0..texts.len() {
        for k in 0..5 {
            assert!((both[i][k] - (first[i][k] + second[i][k]) / 2.0).abs() < 1e-6, "{both:?}");
        }
    }
    // A tiny threshold: the first stage always answers alone.
    std::fs::write(tmp.path().join("manifest.toml"), manifest(&sha(&tiny()), 0.01)).unwrap();
    assert_eq!(score(tmp.path().to_path_buf()).await, first);

    // A stage whose manifest changed is refused.
    std::fs::write(tmp.path().join("manifest.toml"), manifest(&"0".repeat(64), 0.5)).unwrap();
    let err = VerifiedModel::load(tmp.path()).unwrap_err().to_string();
    assert!(err.contains("sha256 mismatch for cascade.first"), "{err}");
}

/// The shipped default pins the manifests that are actually committed beside it.
#[test]
fn shipped_cascade_loads() {
    let m = VerifiedModel::load(&common::repo().join("models/mailgrip-nl")).unwrap();
    assert_eq!(m.manifest.kind, "cascade");
    assert_eq!(m.parts.len(), 2);
}
