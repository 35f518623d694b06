//! Failure modes that must stay explicit: a classifier that fails at inference, and shutdown.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use mailgrip::config::OnClassifyError;
use sha2::{Digest, Sha256};

/// A copy of the tiny model whose tokenizer maps one word to an id beyond the embedding table:
/// ONNX Runtime then fails at inference for mail containing that word (a real mismatch between
/// tokenizer and model, as after a botched deployment).
fn broken_model(dir: &Path) {
    let tiny = repo().join("tests/fixtures/tiny-model");
    std::fs::copy(tiny.join("model.onnx"), dir.join("model.onnx")).unwrap();
    let mut tok: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tiny.join("tokenizer.json")).unwrap()).unwrap();
    tok["model"]["vocab"]["kapotwoord"] = serde_json::json!(100000);
    let tok_bytes = serde_json::to_vec(&tok).unwrap();
    std::fs::write(dir.join("tokenizer.json"), &tok_bytes).unwrap();
    let manifest = std::fs::read_to_string(tiny.join("manifest.toml")).unwrap();
    let old = manifest.lines().find(|l| l.starts_with("\"tokenizer.json\"")).unwrap();
    let new = format!("\"tokenizer.json\" = \"{}\"", hex::encode(Sha256::digest(&tok_bytes)));
    std::fs::write(dir.join("manifest.toml"), manifest.replace(old, &new)).unwrap();
}

/// A gateway on the broken model, relaying to a fresh sink, with an open session after EHLO.
async fn start_broken(on_error: OnClassifyError) -> (tempfile::TempDir, Sink, Gateway, Client) {
    let model = tempfile::tempdir().unwrap();
    broken_model(model.path());
    let sink = Sink::start().await;
    let dir = model.path().to_path_buf();
    let gw = start(Some(sink.addr), move |c| {
        c.model.dir = dir;
        c.classify.on_error = on_error;
    })
    .await;
    let mut client = Client::connect(gw.smtp).await.unwrap();
    client.cmd("EHLO x").await.unwrap();
    (model, sink, gw, client)
}

const BAD: &[u8] = b"From: a@example.nl\r\nSubject: kapotwoord\r\n\r\nkapotwoord\r\n";
const GOOD: &[u8] = b"From: a@example.nl\r\nSubject: gewoon\r\n\r\nhallo\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classifier_failure_relays_unclassified_by_default() {
    let (_model, sink, gw, mut c) = start_broken(OnClassifyError::RelayUnclassified).await;
    let r = c.transaction("a@example.nl", &["b@example.nl"], BAD).await;
    assert!(r.starts_with("250"), "{r}");
    let r = c.transaction("a@example.nl", &["b@example.nl"], GOOD).await;
    assert!(r.starts_with("250"), "a failure does not poison the worker: {r}");
    let got = sink.wait_for(2).await;
    let (tags, rest) = split_tags(&got[0].data);
    assert_eq!(tags[0], "X-Mailgrip-Class: unclassified");
    assert!(tags.iter().any(|t| t.starts_with("X-Mailgrip-Reason: classify: model: inference")), "{tags:?}");
    assert!(
        tags.iter().any(|t| t == "X-Mailgrip-Action: review"),
        "unclassified mail is held for a person, not archived automatically: {tags:?}"
    );
    let held = gw.dir.path().join("review");
    let id = tags.iter().find_map(|t| t.strip_prefix("X-Mailgrip-Id: ")).unwrap();
    assert_eq!(std::fs::read(held.join(format!("{id}.eml"))).unwrap(), got[0].data, "held copy = relayed message");
    assert!(!tags.iter().any(|t| t.starts_with("X-Mailgrip-Scores")));
    assert_eq!(rest, BAD);
    let (tags, _) = split_tags(&got[1].data);
    assert_ne!(tags[0], "X-Mailgrip-Class: unclassified");
    let m = gw.metrics_text().await;
    assert_eq!(metric_sum(&m, "mailgrip_errors_total", "stage=\"classify\""), 1.0);
    assert_eq!(metric_sum(&m, "mailgrip_messages_total", "class=\"unclassified\",outcome=\"relayed\""), 1.0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classifier_failure_can_tempfail_instead_never_5xx() {
    let (_model, sink, _gw, mut c) = start_broken(OnClassifyError::Tempfail).await;
    let r = c.transaction("a@example.nl", &["b@example.nl"], BAD).await;
    assert!(r.starts_with("451 4.3.0"), "{r}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(sink.messages().is_empty(), "a tempfailed message is not relayed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_the_transaction_then_says_421() {
    let sink = Sink::start().await;
    let gw = start(Some(sink.addr), |_| {}).await;
    let mut c = Client::connect(gw.smtp).await.unwrap();
    c.cmd("EHLO x").await.unwrap();
    assert!(c.cmd("MAIL FROM:<a@example.nl>").await.unwrap().starts_with("250"));
    assert!(c.cmd("RCPT TO:<b@example.nl>").await.unwrap().starts_with("250"));
    assert!(c.cmd("DATA").await.unwrap().starts_with("354"));
    // Shutdown arrives mid-transaction: the message in flight is still taken.
    gw.shutdown.cancel();
    c.send(&dot_stuff(GOOD)).await;
    let r = c.reply().await.unwrap();
    assert!(r.starts_with("250"), "{r}");
    let r = c.cmd("MAIL FROM:<a@example.nl>").await.unwrap();
    assert!(r.starts_with("421 4.3.0"), "{r}");
    assert_eq!(sink.wait_for(1).await.len(), 1);
    // New connections are no longer accepted.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(Client::connect(gw.smtp).await.is_err());
}
