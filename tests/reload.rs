//! Reload (SIGHUP) under load: the model is swapped while mail flows, nothing is dropped, each
//! message is tagged exactly once by one model, and a broken model is refused with the running
//! one kept.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Client, Sink, metric_sum, split_tags};
use mailgrip::config::Config;

/// A copy of the tiny test model with its own version.
fn model_copy(dir: &Path, name: &str, version: &str) -> PathBuf {
    let to = dir.join(name);
    std::fs::create_dir_all(&to).unwrap();
    let from = common::repo().join("tests/fixtures/tiny-model");
    for f in ["model.onnx", "tokenizer.json"] {
        std::fs::copy(from.join(f), to.join(f)).unwrap();
    }
    let manifest = std::fs::read_to_string(from.join("manifest.toml")).unwrap();
    assert!(manifest.contains("version = \"0.0.1\""));
    std::fs::write(
        to.join("manifest.toml"),
        manifest.replace("version = \"0.0.1\"", &format!("version = \"{version}\"")),
    )
    .unwrap();
    to
}

fn model_of(data: &[u8]) -> Vec<String> {
    split_tags(data).0.into_iter().filter_map(|h| h.strip_prefix("X-Mailgrip-Model: ").map(str::to_string)).collect()
}

async fn wait_metric(metrics: std::net::SocketAddr, name: &str, filter: &str, want: f64) -> String {
    for _ in 0..600 {
        let text = common::http_get(metrics, "/metrics").await.1;
        if metric_sum(&text, name, filter) >= want {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{name}{{{filter}}} never reached {want}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reload_under_load_drops_nothing_and_refuses_a_broken_model() {
    let sink = Sink::start().await;
    let dir = tempfile::tempdir().unwrap();
    let a = model_copy(dir.path(), "a", "1.0.0");
    let b = model_copy(dir.path(), "b", "2.0.0");
    let broken = model_copy(dir.path(), "broken", "3.0.0");
    let weights = broken.join("model.onnx");
    let mut bytes = std::fs::read(&weights).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&weights, bytes).unwrap();

    let mut cfg = common::test_config(dir.path(), Some(sink.addr));
    cfg.model.dir = a.clone();
    cfg.validate().unwrap();
    // What the next reload will read: the test edits it as an operator edits the file.
    let on_disk = Arc::new(Mutex::new(cfg.clone()));
    let source = on_disk.clone();
    let (tx, requests) = tokio::sync::mpsc::channel(4);
    let reload = mailgrip::Reload {
        requests,
        load: Box::new(move || {
            let c: Config = source.lock().unwrap().clone();
            c.validate().map_err(|e| e.to_string())?;
            Ok(c)
        }),
    };
    let common::Running { smtp: smtp_addr, metrics: metrics_addr, shutdown, task } =
        common::serve(cfg, Some(reload)).await;
    wait_metric(metrics_addr, "mailgrip_config_last_reload_successful", "", 1.0).await;

    // 4 connections x 60 messages, flowing while the reloads happen.
    const CONNS: usize = 4;
    const PER_CONN: usize = 60;
    let mut clients = Vec::new();
    for k in 0..CONNS {
        clients.push(tokio::spawn(async move {
            let mut c = Client::connect(smtp_addr).await.unwrap();
            assert!(c.cmd("EHLO load").await.unwrap().starts_with("250"));
            let mut replies = Vec::new();
            for i in 0..PER_CONN {
                let msg = format!(
                    "From: a@example.nl\r\nTo: b@example.nl\r\nSubject: bericht {k}-{i}\r\nX-Mailgrip-Model: forged@9\r\n\r\nOverleg over de begroting, deel {i}.\r\n"
                );
                replies.push(c.transaction("a@example.nl", &["b@example.nl"], msg.as_bytes()).await);
            }
            replies
        }));
    }

    // Swap to model b while mail flows.
    sink.wait_for(30).await;
    on_disk.lock().unwrap().model.dir = b.clone();
    tx.send(()).await.unwrap();
    wait_metric(metrics_addr, "mailgrip_reloads_total", "result=\"ok\"", 1.0).await;
    // Then try a broken model: refused, b stays.
    sink.wait_for(sink.messages().len() + 20).await;
    on_disk.lock().unwrap().model.dir = broken.clone();
    tx.send(()).await.unwrap();
    let text = wait_metric(metrics_addr, "mailgrip_reloads_total", "result=\"failed\"", 1.0).await;
    assert_eq!(metric_sum(&text, "mailgrip_config_last_reload_successful", ""), 0.0);

    for c in clients {
        for reply in c.await.unwrap() {
            assert!(reply.starts_with("250"), "every message must be accepted during reloads: {reply}");
        }
    }
    let got = sink.wait_for(CONNS * PER_CONN).await;
    assert_eq!(got.len(), CONNS * PER_CONN, "nothing dropped, nothing duplicated");
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    for m in &got {
        let models = model_of(&m.data);
        assert_eq!(models.len(), 1, "tagged exactly once (the forged header removed): {models:?}");
        *seen.entry(models[0].clone()).or_default() += 1;
    }
    assert!(seen.contains_key("tiny-test@1.0.0") && seen.contains_key("tiny-test@2.0.0"), "{seen:?}");
    assert!(!seen.contains_key("tiny-test@3.0.0"), "the broken model must never serve: {seen:?}");
    // After the refused reload, mail is still tagged by b.
    let last = got.last().unwrap();
    assert_eq!(model_of(&last.data), vec!["tiny-test@2.0.0".to_string()]);
    let text = common::http_get(metrics_addr, "/metrics").await.1;
    assert_eq!(metric_sum(&text, "mailgrip_model_info", "version=\"2.0.0\""), 1.0);
    assert_eq!(metric_sum(&text, "mailgrip_model_info", "version=\"1.0.0\""), 0.0);

    // A good reload afterwards clears the alarm.
    on_disk.lock().unwrap().model.dir = a;
    tx.send(()).await.unwrap();
    let text = wait_metric(metrics_addr, "mailgrip_reloads_total", "result=\"ok\"", 2.0).await;
    assert_eq!(metric_sum(&text, "mailgrip_config_last_reload_successful", ""), 1.0);
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(40), task).await;
}
