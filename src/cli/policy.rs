//! `mailgrip policy simulate --labels labels.csv PATH...`: run labelled mail through the
//! classifier and the configured policy, and report what the organisation would get:
//!
//! - **privacy leak rate**: of the private-type mail (prive, personeelsvertrouwelijk,
//!   partijpolitiek), the share that lands in an archive without a person seeing it — prive and
//!   partijpolitiek in either store, personeelsvertrouwelijk in the general archive;
//! - **record loss rate**: of the functioneel mail, the share not archived (`none`);
//! - **review rate**: of all mail, the share sent to the review queue.
//!
//! Then it sweeps the review cost (the knob that trades human effort against errors) and writes
//! the trade-off curve as CSV and SVG. This is how an organisation chooses its costs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use serde::Serialize;

use crate::classify::{Classifier, LABELS, Scores};
use crate::config::Config;
use crate::decide::{Action, CostMatrix, min_cost_action};
use crate::telemetry::Metrics;

/// Review cost multipliers swept for the trade-off curve.
const SWEEP: [f64; 12] = [0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0, 13.0, 20.0];

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Rates {
    pub privacy_leak: f64,
    pub record_loss: f64,
    pub review: f64,
    pub n: usize,
}

/// Is archiving mail of `class` with `action` a privacy leak?
pub fn leaks(class: usize, action: Action) -> bool {
    match LABELS[class] {
        "prive" | "partijpolitiek" => matches!(action, Action::Archive | Action::ArchiveRestricted),
        "personeelsvertrouwelijk" => action == Action::Archive,
        _ => false,
    }
}

/// Rates of a set of (true class, action) outcomes.
pub fn rates(outcomes: &[(usize, Action)]) -> Rates {
    let private: Vec<_> =
        outcomes.iter().filter(|(c, _)| LABELS[*c] != "functioneel" && LABELS[*c] != "niet-functioneel").collect();
    let functional: Vec<_> = outcomes.iter().filter(|(c, _)| LABELS[*c] == "functioneel").collect();
    let share = |num: usize, den: usize| if den == 0 { 0.0 } else { num as f64 / den as f64 };
    Rates {
        privacy_leak: share(private.iter().filter(|(c, a)| leaks(*c, *a)).count(), private.len()),
        record_loss: share(functional.iter().filter(|(_, a)| *a == Action::None).count(), functional.len()),
        review: share(outcomes.iter().filter(|(_, a)| *a == Action::Review).count(), outcomes.len()),
        n: outcomes.len(),
    }
}

/// Read `labels.csv` (columns file,label[,thread,split,...]); file paths are relative to it.
fn read_labels(path: &Path) -> anyhow::Result<HashMap<PathBuf, (usize, String)>> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let col = |name: &str| header.iter().position(|h| h.trim() == name);
    let (fc, lc) =
        (col("file").context("labels.csv: no file column")?, col("label").context("labels.csv: no label column")?);
    let sc = col("split");
    let mut out = HashMap::new();
    for (n, line) in lines.enumerate() {
        let fields: Vec<&str> = line.split(',').collect();
        let (Some(file), Some(label)) = (fields.get(fc), fields.get(lc)) else { continue };
        let class = LABELS
            .iter()
            .position(|l| l == label)
            .with_context(|| format!("labels.csv line {}: unknown label {label:?}", n + 2))?;
        let split = sc.and_then(|i| fields.get(i)).unwrap_or(&"").to_string();
        let p = base.join(file);
        out.insert(p.canonicalize().unwrap_or(p), (class, split));
    }
    Ok(out)
}

pub async fn simulate(
    cfg: &Config,
    labels: &Path,
    split: Option<&str>,
    out_dir: Option<&Path>,
    paths: &[PathBuf],
) -> anyhow::Result<()> {
    let labels = read_labels(labels)?;
    let inputs = super::collect_inputs(paths)?;
    let classifier = {
        let model_cfg = cfg.model.clone();
        tokio::task::spawn_blocking(move || Classifier::start(&model_cfg, Arc::new(Metrics::new()))).await??
    };
    let in_flight = super::in_flight(cfg);
    let mut handles = Vec::new();
    for input in inputs {
        let path = PathBuf::from(&input.name);
        let key = path.canonicalize().unwrap_or(path);
        let Some((class, s)) = labels.get(&key).cloned() else { continue };
        if split.is_some_and(|want| want != s) {
            continue;
        }
        let c = classifier.clone();
        let in_flight = in_flight.clone();
        handles.push(tokio::spawn(async move {
            let _permit = in_flight.acquire_owned().await?;
            let text = tokio::task::spawn_blocking(move || crate::parse::extract(&input.raw).model_text()).await?;
            anyhow::Ok((class, c.classify(text).await?))
        }));
    }
    let mut scored: Vec<(usize, Scores)> = Vec::with_capacity(handles.len());
    for h in handles {
        scored.push(h.await??);
    }
    anyhow::ensure!(!scored.is_empty(), "no labelled messages matched (check --labels, --split and the paths)");

    let run = |costs: &CostMatrix| -> Vec<(usize, Action)> {
        scored.iter().map(|(c, s)| (*c, min_cost_action(costs, s).0)).collect()
    };
    let outcomes = run(&cfg.policy.costs);
    let r = rates(&outcomes);
    let accuracy = scored.iter().filter(|(c, s)| s.top().0 == *c).count() as f64 / scored.len() as f64;
    println!("policy simulate: {} labelled messages, model {}", r.n, classifier.info().id());
    println!("model accuracy (top class): {:.3}", accuracy);
    println!(
        "configured costs: privacy leak {:.2}%  record loss {:.2}%  review {:.2}%",
        r.privacy_leak * 100.0,
        r.record_loss * 100.0,
        r.review * 100.0
    );
    println!("\ntrue class \\ action        archive  restricted    none  review");
    for (ci, label) in LABELS.iter().enumerate() {
        let count = |a: Action| outcomes.iter().filter(|(c, x)| *c == ci && *x == a).count();
        println!(
            "{label:<26} {:>7} {:>11} {:>7} {:>7}",
            count(Action::Archive),
            count(Action::ArchiveRestricted),
            count(Action::None),
            count(Action::Review)
        );
    }

    let base_review: Vec<f64> = cfg.policy.costs.rows().iter().map(|r| r.review).collect();
    let mut sweep = Vec::new();
    println!("\nsweep of the review cost (all other costs as configured):");
    println!("{:>12} {:>14} {:>12} {:>10}", "review cost", "privacy leak", "record loss", "review");
    for factor in SWEEP {
        let mut costs = cfg.policy.costs;
        for (row, base) in costs.rows_mut().into_iter().zip(&base_review) {
            row.review = base * factor;
        }
        let r = rates(&run(&costs));
        println!(
            "{:>12.2} {:>13.2}% {:>11.2}% {:>9.2}%",
            base_review[0] * factor,
            r.privacy_leak * 100.0,
            r.record_loss * 100.0,
            r.review * 100.0
        );
        sweep.push((base_review[0] * factor, r));
    }
    if let Some(dir) = out_dir {
        std::fs::create_dir_all(dir)?;
        let mut csv = String::from("review_cost,privacy_leak,record_loss,review_rate\n");
        for (cost, r) in &sweep {
            csv.push_str(&format!("{cost},{},{},{}\n", r.privacy_leak, r.record_loss, r.review));
        }
        std::fs::write(dir.join("sweep.csv"), csv)?;
        std::fs::write(dir.join("tradeoff.svg"), svg(&sweep, &r))?;
        std::fs::write(
            dir.join("simulate.json"),
            serde_json::to_vec_pretty(&serde_json::json!({
                "model": classifier.info().id(), "n": r.n, "accuracy": accuracy,
                "configured": r, "sweep": sweep.iter().map(|(c, r)| serde_json::json!({"review_cost": c, "rates": r})).collect::<Vec<_>>(),
            }))?,
        )?;
        println!("\nwrote {}/{{sweep.csv,tradeoff.svg,simulate.json}}", dir.display());
    }
    Ok(())
}

/// The trade-off curve: review rate (x) against privacy leak and record loss (y).
fn svg(sweep: &[(f64, Rates)], configured: &Rates) -> String {
    let (w, h, m) = (640.0, 420.0, 60.0);
    let ymax = sweep.iter().map(|(_, r)| r.privacy_leak.max(r.record_loss)).fold(0.05f64, f64::max) * 1.1;
    let x = |v: f64| m + v * (w - 2.0 * m);
    let y = |v: f64| h - m - v / ymax * (h - 2.0 * m);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"24\" text-anchor=\"middle\" font-size=\"15\">Archiefwet vs AVG: errors against review workload</text>\n\
         <line x1=\"{m}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n<line x1=\"{m}\" y1=\"{m}\" x2=\"{m}\" y2=\"{}\" stroke=\"black\"/>\n\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">review rate</text>\n\
         <text x=\"16\" y=\"{}\" transform=\"rotate(-90 16 {})\" text-anchor=\"middle\">error rate</text>\n",
        w / 2.0,
        h - m,
        w - m,
        h - m,
        h - m,
        w / 2.0,
        h - 20.0,
        h / 2.0,
        h / 2.0
    );
    for i in 0..=5 {
        let v = i as f64 / 5.0;
        s.push_str(&format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{:.0}%</text>\n<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{:.1}%</text>\n",
            x(v),
            h - m + 16.0,
            v * 100.0,
            m - 6.0,
            y(v * ymax) + 4.0,
            v * ymax * 100.0
        ));
    }
    for (name, color, pick) in [
        ("privacy leak", "#c0392b", (|r: &Rates| r.privacy_leak) as fn(&Rates) -> f64),
        ("record loss", "#2c3e50", |r: &Rates| r.record_loss),
    ] {
        let pts: Vec<String> = sweep.iter().map(|(_, r)| format!("{:.1},{:.1}", x(r.review), y(pick(r)))).collect();
        s.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>\n",
            pts.join(" ")
        ));
        for (cost, r) in sweep {
            s.push_str(&format!(
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{color}\"><title>review cost {cost}</title></circle>\n",
                x(r.review),
                y(pick(r))
            ));
        }
        let ly = if name == "privacy leak" { m + 10.0 } else { m + 28.0 };
        s.push_str(&format!(
            "<line x1=\"{}\" y1=\"{ly}\" x2=\"{}\" y2=\"{ly}\" stroke=\"{color}\" stroke-width=\"2\"/><text x=\"{}\" y=\"{}\">{name}</text>\n",
            w - m - 140.0,
            w - m - 115.0,
            w - m - 110.0,
            ly + 4.0
        ));
    }
    s.push_str(&format!(
        "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"6\" fill=\"none\" stroke=\"#c0392b\"/><text x=\"{:.1}\" y=\"{:.1}\">configured</text>\n",
        x(configured.review),
        y(configured.privacy_leak),
        x(configured.review) + 8.0,
        y(configured.privacy_leak) - 8.0
    ));
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_by_hand() {
        let f = 0; // functioneel
        let p = 1; // prive
        let pv = 3; // personeelsvertrouwelijk
        let outcomes = [
            (f, Action::Archive),
            (f, Action::None),
            (f, Action::Review),
            (f, Action::Archive),
            (p, Action::Archive),
            (p, Action::None),
            (pv, Action::ArchiveRestricted),
            (pv, Action::Archive),
        ];
        let r = rates(&outcomes);
        assert_eq!(r.record_loss, 0.25); // 1 of 4 functioneel not archived
        assert_eq!(r.privacy_leak, 0.5); // prive archived + personnel in the general archive: 2 of 4
        assert_eq!(r.review, 0.125);
    }
}
