//! Per-stage benchmarks: parse, tokenize, infer. Setup happens outside the timed loops.
//!
//!     cargo bench --bench stages
//!
//! Uses the shipped model when present (models/mailgrip-e5-nl), else the tiny test model.

use std::path::PathBuf;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use mailgrip::classify::manifest::VerifiedModel;
use mailgrip::classify::onnx::OnnxBackend;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn model_dir() -> PathBuf {
    ["models/mailgrip-e5-nl", "tests/fixtures/tiny-model"]
        .iter()
        .map(|p| repo().join(p))
        .find(|p| p.join("manifest.toml").exists())
        .unwrap()
}

fn bench(c: &mut Criterion) {
    let fixtures = repo().join("tests/fixtures/mail");
    let messages: Vec<(String, Vec<u8>)> = ["multipart-alternative.eml", "html-only.eml", "attachments.eml"]
        .iter()
        .map(|n| (n.to_string(), std::fs::read(fixtures.join(n)).unwrap()))
        .collect();
    let mut g = c.benchmark_group("parse");
    for (name, raw) in &messages {
        g.bench_with_input(BenchmarkId::from_parameter(name), raw, |b, raw| {
            b.iter(|| mailgrip::parse::extract(raw).model_text())
        });
    }
    g.finish();

    let model = VerifiedModel::load(&model_dir()).unwrap();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mut backend = OnnxBackend::load(&model, "", cores).unwrap();
    let base = "Geachte heer De Vries, hierbij ontvangt u het besluit op uw aanvraag voor een omgevingsvergunning. ";
    let mut g = c.benchmark_group("tokenize");
    let text = base.repeat(8);
    g.bench_function("800 chars", |b| b.iter(|| backend.encode(&text).unwrap()));
    g.finish();

    let mut g = c.benchmark_group(format!("infer/{}", model.manifest.name));
    g.sample_size(20);
    for words in [16usize, 64, 160] {
        let text: String = base.split(' ').cycle().take(words).collect::<Vec<_>>().join(" ");
        let seq = backend.encode(&text).unwrap();
        let len = seq.len();
        g.bench_with_input(BenchmarkId::new("batch1_tokens", len), &seq, |b, seq| {
            b.iter(|| backend.logits(std::slice::from_ref(seq)).unwrap())
        });
        let batch = vec![seq.clone(); 8];
        g.bench_with_input(BenchmarkId::new("batch8_tokens", len), &batch, |b, batch| {
            b.iter(|| backend.logits(batch).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
