//! The explainable baseline: TF-IDF over word and character n-grams, multinomial logistic
//! regression. Trained in Python (`models/training/baseline.py`, scikit-learn); this file
//! recomputes the same features from the exported vocabulary, and a parity test over the whole
//! corpus (`tests/baseline_parity.rs`) checks that both sides give the same probabilities.
//!
//! Feature rules mirror scikit-learn's `TfidfVectorizer` (`analyzer="word"` and `"char_wb"`),
//! with Rust's Unicode rules for what a word character and whitespace are (the Python side
//! follows these, see `--features mailgrip` in baseline.py): lower-case; words are
//! `\b\w\w+\b` joined into n-grams with one space; `char_wb` n-grams are taken from each
//! whitespace-separated word padded with one space on both sides; tf is `1 + ln(count)` when
//! `sublinear_tf`; each block is multiplied by idf and L2-normalised on its own.

use std::collections::HashMap;
use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Serialize};

use super::manifest::VerifiedModel;
use super::{Backend, ClassifyError, LABELS, softmax_calibrated};
use crate::telemetry::Metrics;

#[derive(Debug, Deserialize)]
struct Block {
    /// `word` or `char_wb`.
    analyzer: String,
    ngram_range: [usize; 2],
    sublinear_tf: bool,
    vocabulary: HashMap<String, usize>,
    idf: Vec<f32>,
}

#[derive(Debug, Deserialize)]
struct Weights {
    classes: Vec<String>,
    blocks: Vec<Block>,
    /// `[class][feature]`, features of all blocks concatenated in order.
    coef: Vec<Vec<f32>>,
    intercept: Vec<f32>,
}

/// One term's push toward a class.
#[derive(Debug, Clone, Serialize)]
pub struct TermWeight {
    pub term: String,
    pub weight: f32,
}

pub struct BaselineBackend {
    weights: Weights,
    /// Feature index -> term, for explanations.
    terms: Vec<String>,
    offsets: Vec<usize>,
    label_index: [usize; 5],
    temperature: f32,
}

static WORD: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\b\w\w+\b").unwrap());

impl BaselineBackend {
    pub fn load(model: &VerifiedModel) -> Result<Self, ClassifyError> {
        let path = model.file(&model.manifest.baseline.weights);
        let bad = |e: &dyn std::fmt::Display| ClassifyError::Model(format!("{}: {e}", path.display()));
        let file = std::fs::File::open(&path).map_err(|e| bad(&e))?;
        let weights: Weights = serde_json::from_reader(std::io::BufReader::new(file)).map_err(|e| bad(&e))?;
        if weights.classes.iter().map(String::as_str).ne(model.manifest.labels.iter().map(String::as_str)) {
            return Err(bad(&"classes differ from the manifest's labels"));
        }
        let mut offsets = Vec::new();
        let mut total = 0;
        for b in &weights.blocks {
            if !matches!(b.analyzer.as_str(), "word" | "char_wb") {
                return Err(bad(&format!("unknown analyzer {:?}", b.analyzer)));
            }
            if b.idf.len() != b.vocabulary.len() {
                return Err(bad(&"idf and vocabulary differ in length"));
            }
            offsets.push(total);
            total += b.vocabulary.len();
        }
        if weights.coef.len() != LABELS.len()
            || weights.coef.iter().any(|r| r.len() != total)
            || weights.intercept.len() != LABELS.len()
        {
            return Err(bad(&format!("coef must be {}x{total}", LABELS.len())));
        }
        let mut terms = vec![String::new(); total];
        for (b, off) in weights.blocks.iter().zip(&offsets) {
            for (t, &i) in &b.vocabulary {
                terms[off + i] = t.clone();
            }
        }
        Ok(BaselineBackend {
            weights,
            terms,
            offsets,
            label_index: model.label_index,
            temperature: model.manifest.calibration.temperature,
        })
    }

    /// Sparse TF-IDF features (index, value) of one text.
    pub fn features(&self, text: &str) -> Vec<(usize, f32)> {
        let lower = text.to_lowercase();
        let mut out = Vec::new();
        for (b, &off) in self.weights.blocks.iter().zip(&self.offsets) {
            let mut counts: HashMap<usize, f32> = HashMap::new();
            let mut add = |gram: &str| {
                if let Some(&i) = b.vocabulary.get(gram) {
                    *counts.entry(i).or_default() += 1.0;
                }
            };
            let [lo, hi] = b.ngram_range;
            if b.analyzer == "word" {
                let words: Vec<&str> = WORD.find_iter(&lower).map(|m| m.as_str()).collect();
                for n in lo..=hi {
                    for w in words.windows(n) {
                        add(&w.join(" "));
                    }
                }
            } else {
                for word in lower.split_whitespace() {
                    let padded: Vec<char> =
                        std::iter::once(' ').chain(word.chars()).chain(std::iter::once(' ')).collect();
                    for n in lo..=hi {
                        if padded.len() < n {
                            // scikit-learn counts a word shorter than n once, as a whole.
                            add(&padded.iter().collect::<String>());
                            break;
                        }
                        for w in padded.windows(n) {
                            add(&w.iter().collect::<String>());
                        }
                        if padded.len() == n {
                            // Like scikit-learn: a word that fits one n-gram is not counted again.
                            break;
                        }
                    }
                }
            }
            let mut block: Vec<(usize, f32)> = counts
                .into_iter()
                .map(|(i, c)| {
                    let tf = if b.sublinear_tf { 1.0 + c.ln() } else { c };
                    (i, tf * b.idf[i])
                })
                .collect();
            let norm = block.iter().map(|(_, v)| v * v).sum::<f32>().sqrt();
            if norm > 0.0 {
                for (_, v) in &mut block {
                    *v /= norm;
                }
            }
            out.extend(block.into_iter().map(|(i, v)| (off + i, v)));
        }
        out.sort_by_key(|(i, _)| *i);
        out
    }

    fn logits(&self, features: &[(usize, f32)]) -> Vec<f32> {
        self.weights
            .coef
            .iter()
            .zip(&self.weights.intercept)
            .map(|(row, b)| b + features.iter().map(|&(i, v)| row[i] * v).sum::<f32>())
            .collect()
    }

    /// Calibrated probabilities in [`LABELS`] order.
    pub fn scores(&self, text: &str) -> [f32; 5] {
        softmax_calibrated(&self.logits(&self.features(text)), self.temperature, &self.label_index)
    }

    /// The `k` terms of `text` that pushed hardest toward `class` (a [`LABELS`] name), relative
    /// to the other classes: `x_j * (coef[class][j] - mean_k coef[k][j])`.
    pub fn explain(&self, text: &str, class: &str, k: usize) -> Vec<TermWeight> {
        let Some(canon) = LABELS.iter().position(|l| *l == class) else {
            return Vec::new();
        };
        let row = self.label_index[canon];
        let n = self.weights.coef.len() as f32;
        let mut terms: Vec<TermWeight> = self
            .features(text)
            .into_iter()
            .map(|(i, v)| {
                let mean = self.weights.coef.iter().map(|r| r[i]).sum::<f32>() / n;
                TermWeight { term: self.terms[i].clone(), weight: v * (self.weights.coef[row][i] - mean) }
            })
            .filter(|t| t.weight > 0.0)
            .collect();
        terms.sort_by(|a, b| b.weight.total_cmp(&a.weight).then_with(|| a.term.cmp(&b.term)));
        terms.truncate(k);
        terms
    }
}

impl Backend for BaselineBackend {
    fn classify(&mut self, texts: &[&str], metrics: &Metrics) -> Result<Vec<[f32; 5]>, ClassifyError> {
        let timer = metrics.inference_seconds.start_timer();
        let out = texts.iter().map(|t| self.scores(t)).collect();
        timer.observe_duration();
        metrics.batch_size.observe(texts.len() as f64);
        Ok(out)
    }
}
