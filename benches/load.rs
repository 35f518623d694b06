//! End-to-end load: drives N messages through `serve` (the library's `run`, with the shipped or
//! a given model) into a local SMTP sink over C concurrent connections, and prints msgs/s and
//! p50/p99 added latency (end-of-data sent -> 250 received). Then runs the same model on the same
//! model texts through bare ONNX Runtime calls (pre-tokenized, no SMTP, no parsing) and prints
//! the ratio of the two throughputs.
//!
//!     cargo bench --bench load -- [--model DIR] [--messages N] [--connections C] [--corpus DIR]
//!
//! Numbers, not assertions: these machines are shared and noisy.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Client, Sink, dot_stuff};
use mailgrip::classify::manifest::VerifiedModel;
use mailgrip::classify::onnx::OnnxBackend;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let repo = common::repo();
    let default_model = ["models/mailgrip-nl", "tests/fixtures/tiny-model"]
        .iter()
        .map(|p| repo.join(p))
        .find(|p| p.join("manifest.toml").exists())
        .unwrap();
    let model = arg(&args, "--model").map(PathBuf::from).unwrap_or(default_model);
    let n: usize = arg(&args, "--messages").and_then(|s| s.parse().ok()).unwrap_or(400);
    let conns: usize = arg(&args, "--connections").and_then(|s| s.parse().ok()).unwrap_or(8);
    let corpus = arg(&args, "--corpus").map(PathBuf::from).unwrap_or(repo.join("models/corpus/eml"));
    let mut paths = vec![corpus.clone()];
    if !corpus.exists() {
        paths = vec![repo.join("tests/fixtures/mail")];
    }
    let inputs = mailgrip::cli::collect_inputs(&paths).unwrap();
    let messages: Vec<Vec<u8>> = inputs.iter().cycle().take(n).map(|i| i.raw.clone()).collect();
    println!("load: {n} messages from {} over {conns} connections, model {}", paths[0].display(), model.display());

    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let (e2e_rate, lat) = rt.block_on(async {
        let sink = Sink::start().await;
        let model = model.clone();
        let gw = common::start(Some(sink.addr), move |c| c.model.dir = model).await;
        // Warm up the model and the pool.
        {
            let mut c = Client::connect(gw.smtp).await.unwrap();
            c.cmd("EHLO load").await.unwrap();
            for m in messages.iter().take(10) {
                c.transaction("a@example.nl", &["b@example.nl"], m).await;
            }
        }
        let before = sink.messages().len();
        let messages = Arc::new(messages);
        let started = Instant::now();
        let mut tasks = Vec::new();
        for k in 0..conns {
            let messages = messages.clone();
            let addr = gw.smtp;
            tasks.push(tokio::spawn(async move {
                let mut c = Client::connect(addr).await.unwrap();
                c.cmd("EHLO load").await.unwrap();
                let mut lat = Vec::new();
                for m in messages.iter().skip(k).step_by(conns) {
                    assert!(c.cmd("MAIL FROM:<a@example.nl>").await.unwrap().starts_with("250"));
                    assert!(c.cmd("RCPT TO:<b@example.nl>").await.unwrap().starts_with("250"));
                    assert!(c.cmd("DATA").await.unwrap().starts_with("354"));
                    let stuffed = dot_stuff(m);
                    let t = Instant::now();
                    c.send(&stuffed).await;
                    let r = c.reply().await.unwrap();
                    lat.push(t.elapsed().as_secs_f64());
                    assert!(r.starts_with("250"), "{r}");
                }
                lat
            }));
        }
        let mut lat = Vec::new();
        for t in tasks {
            lat.extend(t.await.unwrap());
        }
        let elapsed = started.elapsed().as_secs_f64();
        let arrived = sink.wait_for(before + n).await.len() - before;
        assert_eq!(arrived, n, "every message must arrive");
        lat.sort_by(|a, b| a.total_cmp(b));
        (n as f64 / elapsed, lat)
    });
    println!(
        "end-to-end: {:.1} msgs/s; added latency p50 {:.1} ms, p99 {:.1} ms",
        e2e_rate,
        percentile(&lat, 0.5) * 1e3,
        percentile(&lat, 0.99) * 1e3
    );

    // Raw ONNX Runtime on the same model and the same texts, one sequence per call, same threads.
    let verified = VerifiedModel::load(&model).unwrap();
    if verified.manifest.kind != "onnx" {
        println!("raw ONNX Runtime: not applicable to a {} model", verified.manifest.kind);
        return;
    }
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mut backend = OnnxBackend::load(&verified, "", cores).unwrap();
    let seqs: Vec<Vec<u32>> = inputs
        .iter()
        .cycle()
        .take(n)
        .map(|i| backend.encode(&mailgrip::parse::extract(&i.raw).model_text()).unwrap())
        .collect();
    for s in seqs.iter().take(10) {
        backend.logits(std::slice::from_ref(s)).unwrap();
    }
    let t = Instant::now();
    for s in &seqs {
        backend.logits(std::slice::from_ref(s)).unwrap();
    }
    let raw_rate = n as f64 / t.elapsed().as_secs_f64();
    let mean_tokens = seqs.iter().map(Vec::len).sum::<usize>() as f64 / n as f64;
    println!("raw ONNX Runtime: {raw_rate:.1} seq/s (mean {mean_tokens:.0} tokens, batch 1, {cores} threads)");
    println!("ratio end-to-end / raw: {:.2}", e2e_rate / raw_rate);
    let _ = Duration::ZERO;
}
