//! Offline commands: `classify` and `extract` run `.eml` files, folders and mbox files through
//! the same parse and classify code as the daemon; `policy`, `review` and `audit` serve the
//! archivist and the auditor.

pub mod admin;
pub mod audit;
pub mod policy;
pub mod review;

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::json;

use crate::classify::Classifier;
use crate::config::Config;
use crate::parse;
use crate::telemetry::Metrics;

/// One message read from disk.
pub struct Input {
    /// The file path, or `path#N` for the N-th message (from 1) of an mbox.
    pub name: String,
    pub raw: Vec<u8>,
}

/// Expand files, folders (recursively, `*.eml`, sorted) and mbox files into messages.
pub fn collect_inputs(paths: &[PathBuf]) -> anyhow::Result<Vec<Input>> {
    let mut out = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut files = Vec::new();
            walk(path, &mut files)?;
            files.sort();
            for f in files {
                let raw = std::fs::read(&f).with_context(|| f.display().to_string())?;
                out.push(Input { name: f.display().to_string(), raw });
            }
        } else {
            let raw = std::fs::read(path).with_context(|| path.display().to_string())?;
            if is_mbox(path, &raw) {
                for (i, msg) in split_mbox(&raw).into_iter().enumerate() {
                    out.push(Input { name: format!("{}#{}", path.display(), i + 1), raw: msg });
                }
            } else {
                out.push(Input { name: path.display().to_string(), raw });
            }
        }
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| dir.display().to_string())? {
        let path = entry?.path();
        if path.is_dir() {
            walk(&path, out)?;
        } else if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("eml")) {
            out.push(path);
        }
    }
    Ok(())
}

fn is_mbox(path: &Path, raw: &[u8]) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("mbox")) || raw.starts_with(b"From ")
}

/// Split an mboxrd/mboxo file: messages start at lines beginning with "From "; ">From " lines
/// are unescaped one level.
fn split_mbox(raw: &[u8]) -> Vec<Vec<u8>> {
    let mut msgs: Vec<Vec<u8>> = Vec::new();
    let mut current: Option<Vec<u8>> = None;
    for line in raw.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b"From ") {
            if let Some(m) = current.take() {
                msgs.push(m);
            }
            current = Some(Vec::new());
            continue;
        }
        let Some(m) = current.as_mut() else { continue };
        let unquoted = line.iter().position(|&b| b != b'>').filter(|&n| n > 0 && line[n..].starts_with(b"From "));
        if unquoted.is_some() {
            m.extend_from_slice(&line[1..]);
        } else {
            m.extend_from_slice(line);
        }
    }
    msgs.extend(current);
    msgs
}

/// How many offline requests may be in flight at once: enough to fill every worker's batches.
pub fn in_flight(cfg: &Config) -> std::sync::Arc<tokio::sync::Semaphore> {
    std::sync::Arc::new(tokio::sync::Semaphore::new((cfg.model.workers * cfg.model.max_batch * 2).max(2)))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Jsonl,
    Table,
}

/// `mailgrip classify`: one line per message.
pub async fn classify(cfg: &Config, paths: &[PathBuf], format: Format) -> anyhow::Result<()> {
    let inputs = collect_inputs(paths)?;
    let metrics = std::sync::Arc::new(Metrics::new());
    let model_cfg = cfg.model.clone();
    let classifier = tokio::task::spawn_blocking(move || Classifier::start(&model_cfg, metrics)).await??;
    let model = classifier.info().id();
    // Keep the workers busy without queueing so much that requests hit model.queue_timeout_ms
    // (that timeout is for live SMTP traffic); print in input order.
    let in_flight = in_flight(cfg);
    let mut handles = Vec::with_capacity(inputs.len());
    for input in inputs {
        let c = classifier.clone();
        let in_flight = in_flight.clone();
        handles.push(tokio::spawn(async move {
            let _permit = in_flight.acquire_owned().await?;
            let extracted = tokio::task::spawn_blocking(move || parse::extract(&input.raw)).await?;
            let result = match &extracted.parse_error {
                Some(e) => Err(format!("parse: {e}")),
                None => c.classify(extracted.model_text()).await.map_err(|e| e.to_string()),
            };
            anyhow::Ok((input.name, result))
        }));
    }
    if format == Format::Table {
        println!("{:<60} {:<24} {:>6}", "file", "class", "p");
    }
    for h in handles {
        let (name, result) = h.await??;
        match (format, result) {
            (Format::Jsonl, Ok(s)) => {
                println!("{}", json!({"file": name, "class": s.label(), "scores": s.as_map(), "model": model}))
            }
            (Format::Jsonl, Err(e)) => println!(
                "{}",
                json!({"file": name, "class": "unclassified", "scores": {}, "model": model, "reason": e})
            ),
            (Format::Table, Ok(s)) => println!("{:<60} {:<24} {:>6.3}", name, s.label(), s.top().1),
            (Format::Table, Err(e)) => {
                println!("{:<60} {:<24} {:>6}  {e}", name, "unclassified", "-")
            }
        }
    }
    Ok(())
}

/// `mailgrip extract`: the model text of each message, as training must see it.
pub fn extract(paths: &[PathBuf]) -> anyhow::Result<()> {
    use std::io::Write;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for input in collect_inputs(paths)? {
        let e = parse::extract(&input.raw);
        let line = json!({
            "file": input.name,
            "text": e.model_text(),
            "layout": parse::LAYOUT,
            "from_domain": e.from_domain,
            "recipient_domains": e.recipient_domains,
            "attachments": e.attachments,
            "parse_error": e.parse_error,
        });
        writeln!(out, "{line}")?;
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mbox_split_and_unescape() {
        let raw = b"From a@b Mon Jan 1 00:00:00 2026\nSubject: one\n\n>From here\nbody\nFrom c@d Mon Jan 1 00:00:00 2026\nSubject: two\n\nx\n";
        let msgs = split_mbox(raw);
        assert_eq!(msgs.len(), 2);
        assert_eq!(msgs[0], b"Subject: one\n\nFrom here\nbody\n");
        assert_eq!(msgs[1], b"Subject: two\n\nx\n");
    }
}
