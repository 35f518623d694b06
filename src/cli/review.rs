//! `mailgrip review list | decide | export`: the archivist's queue from the command line.
//! All three read `review.dir` from the configuration (or `MAILGRIP__REVIEW__DIR`).

use anyhow::Context;
use serde_json::json;

use super::Format;
use crate::config::Config;
use crate::decide::Action;
use crate::review::ReviewQueue;

pub fn list(cfg: &Config, format: Format) -> anyhow::Result<()> {
    let queue = ReviewQueue::new(&cfg.review.dir);
    let items = queue.list().with_context(|| cfg.review.dir.display().to_string())?;
    match format {
        Format::Jsonl => {
            for item in items {
                println!("{}", serde_json::to_string(&item)?);
            }
        }
        Format::Table => {
            println!("{:<34} {:<24} {:>6} {:>8}  reason", "id", "class", "p", "age");
            for item in items {
                let p = item.scores.get(&item.class).and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
                println!("{:<34} {:<24} {:>6.3} {:>7}s  {}", item.id, item.class, p, item.age_secs, item.reason);
            }
        }
    }
    Ok(())
}

pub async fn decide(cfg: &Config, id: &str, action: &str, class: Option<&str>, reviewer: &str) -> anyhow::Result<()> {
    let action = Action::parse(action)
        .filter(|a| *a != Action::Review)
        .with_context(|| format!("--action {action:?}: one of archive, archive-restricted, none"))?;
    let (decision, dest) = crate::review::decide_audited(cfg, id, action, class, reviewer).await?;
    println!(
        "{}",
        json!({"id": decision.id, "action": decision.action.as_str(), "predicted": decision.predicted,
               "corrected": decision.corrected, "reviewer": decision.reviewer, "archived_as": dest})
    );
    Ok(())
}

/// Corrected labels as training data: one JSON line per reviewer decision.
pub fn export(cfg: &Config) -> anyhow::Result<()> {
    let queue = ReviewQueue::new(&cfg.review.dir);
    for d in queue.decisions()? {
        println!(
            "{}",
            json!({"text": d.text, "label": d.corrected, "predicted": d.predicted, "id": d.id,
                   "reviewer": d.reviewer, "time": d.time, "model": format!("{}@{}", d.model, d.model_version)})
        );
    }
    Ok(())
}
