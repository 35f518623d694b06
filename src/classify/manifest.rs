//! `manifest.toml`: what a model directory holds and how its files must hash.
//! The format is documented in `models/MANIFEST.md` and shared with the training pipeline.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{ClassifyError, LABELS};
use crate::parse::LAYOUT;

#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    /// `onnx`, `baseline` or `cascade`.
    pub kind: String,
    pub labels: Vec<String>,
    #[serde(default = "default_max_tokens")]
    pub max_tokens: usize,
    #[serde(default)]
    pub created: Option<String>,
    #[serde(default)]
    pub training_data_sha256: Option<String>,
    #[serde(default)]
    pub base_model: Option<String>,
    #[serde(default)]
    pub text: TextSection,
    #[serde(default)]
    pub onnx: OnnxSection,
    #[serde(default)]
    pub baseline: BaselineSection,
    #[serde(default)]
    pub calibration: CalibrationSection,
    #[serde(default)]
    pub cascade: Option<CascadeSection>,
    #[serde(default)]
    pub files: BTreeMap<String, String>,
}

/// `kind = "cascade"`: a fast first model answers when it is confident; otherwise the second
/// model runs too and the two probability vectors are averaged. Both are model directories of
/// their own, pinned here by the sha256 of their `manifest.toml` (which pins their files).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CascadeSection {
    /// Model directory of the first stage, relative to this directory.
    pub first: String,
    pub first_manifest_sha256: String,
    /// Model directory of the second stage, relative to this directory.
    pub second: String,
    pub second_manifest_sha256: String,
    /// The first stage's answer stands when its top probability is at least this.
    pub threshold: f32,
}

fn default_max_tokens() -> usize {
    256
}

#[derive(Debug, Clone, Deserialize)]
pub struct TextSection {
    #[serde(default = "default_layout")]
    pub layout: String,
    #[serde(default)]
    pub prefix: String,
}

fn default_layout() -> String {
    LAYOUT.to_string()
}

impl Default for TextSection {
    fn default() -> Self {
        Self { layout: default_layout(), prefix: String::new() }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct OnnxSection {
    #[serde(default = "default_model_file")]
    pub model: String,
    #[serde(default = "default_tokenizer_file")]
    pub tokenizer: String,
    #[serde(default = "default_output")]
    pub output: String,
    /// Token id used for padding; defaults to the tokenizer's `<pad>`/`[PAD]`.
    #[serde(default)]
    pub pad_id: Option<u32>,
}

fn default_model_file() -> String {
    "model.onnx".into()
}
fn default_tokenizer_file() -> String {
    "tokenizer.json".into()
}
fn default_output() -> String {
    "logits".into()
}

impl Default for OnnxSection {
    fn default() -> Self {
        Self {
            model: default_model_file(),
            tokenizer: default_tokenizer_file(),
            output: default_output(),
            pad_id: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct BaselineSection {
    #[serde(default = "default_baseline_file")]
    pub weights: String,
}

fn default_baseline_file() -> String {
    "baseline.json".into()
}

impl Default for BaselineSection {
    fn default() -> Self {
        Self { weights: default_baseline_file() }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct CalibrationSection {
    #[serde(default = "one")]
    pub temperature: f32,
}

fn one() -> f32 {
    1.0
}

impl Default for CalibrationSection {
    fn default() -> Self {
        Self { temperature: 1.0 }
    }
}

/// A manifest that has been read and whose files all hash as promised.
#[derive(Debug, Clone)]
pub struct VerifiedModel {
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// Position of each canonical label ([`LABELS`]) in the model's output.
    pub label_index: [usize; 5],
    /// sha256 of the main weights file (the ONNX graph or the baseline weights); for a cascade,
    /// of its `manifest.toml`, which pins both stages.
    pub weights_sha256: String,
    /// The stages of a cascade (first, second); empty otherwise.
    pub parts: Vec<VerifiedModel>,
}

impl VerifiedModel {
    pub fn load(dir: &Path) -> Result<VerifiedModel, ClassifyError> {
        let bad = |problem: String| ClassifyError::Model(format!("{}: {problem}", dir.display()));
        let path = dir.join("manifest.toml");
        let text = std::fs::read_to_string(&path).map_err(|e| bad(format!("manifest.toml: {e}")))?;
        let manifest: Manifest = toml::from_str(&text).map_err(|e| bad(format!("manifest.toml: {e}")))?;
        if manifest.text.layout != LAYOUT {
            return Err(bad(format!(
                "manifest.toml: text layout {:?} is not supported (this build produces {LAYOUT:?})",
                manifest.text.layout
            )));
        }
        let mut label_index = [usize::MAX; 5];
        if manifest.labels.len() != LABELS.len() {
            return Err(bad(format!("manifest.toml: labels must be exactly {}", LABELS.join(", "))));
        }
        for (i, canonical) in LABELS.iter().enumerate() {
            label_index[i] = manifest
                .labels
                .iter()
                .position(|l| l == canonical)
                .ok_or_else(|| bad(format!("manifest.toml: label {canonical:?} missing")))?;
        }
        if !(manifest.calibration.temperature > 0.0 && manifest.calibration.temperature.is_finite()) {
            return Err(bad("manifest.toml: calibration.temperature must be > 0".into()));
        }
        let needed: Vec<&str> = match manifest.kind.as_str() {
            "onnx" => vec![&manifest.onnx.model, &manifest.onnx.tokenizer],
            "baseline" => vec![&manifest.baseline.weights],
            "cascade" => return Self::load_cascade(dir, &text, manifest, label_index),
            other => {
                return Err(bad(format!("manifest.toml: unknown kind {other:?} (onnx, baseline or cascade)")));
            }
        };
        for file in &needed {
            if !manifest.files.contains_key(*file) {
                return Err(bad(format!("manifest.toml: [files] has no sha256 for {file}")));
            }
        }
        let mut weights_sha256 = String::new();
        for (file, expected) in &manifest.files {
            if file.contains("..") || file.starts_with('/') {
                return Err(bad(format!("manifest.toml: file name {file:?} leaves the model directory")));
            }
            let actual = sha256_file(&dir.join(file)).map_err(|e| bad(format!("{file}: {e}")))?;
            if !actual.eq_ignore_ascii_case(expected.trim()) {
                return Err(bad(format!("sha256 mismatch for {file}: manifest says {expected}, file has {actual}")));
            }
            if file == needed[0] {
                weights_sha256 = actual;
            }
        }
        Ok(VerifiedModel { dir: dir.to_path_buf(), manifest, label_index, weights_sha256, parts: Vec::new() })
    }

    fn load_cascade(
        dir: &Path,
        text: &str,
        manifest: Manifest,
        label_index: [usize; 5],
    ) -> Result<VerifiedModel, ClassifyError> {
        let bad = |problem: String| ClassifyError::Model(format!("{}: {problem}", dir.display()));
        let Some(c) = manifest.cascade.clone() else {
            return Err(bad("manifest.toml: kind = \"cascade\" needs a [cascade] section".into()));
        };
        if !(c.threshold > 0.0 && c.threshold <= 1.0) {
            return Err(bad("manifest.toml: cascade.threshold must be in (0, 1]".into()));
        }
        let mut parts = Vec::with_capacity(2);
        for (key, sub, expected) in
            [("first", &c.first, &c.first_manifest_sha256), ("second", &c.second, &c.second_manifest_sha256)]
        {
            let sub_dir = dir.join(sub);
            let actual = sha256_file(&sub_dir.join("manifest.toml"))
                .map_err(|e| bad(format!("cascade.{key} {}: manifest.toml: {e}", sub_dir.display())))?;
            if !actual.eq_ignore_ascii_case(expected.trim()) {
                return Err(bad(format!(
                    "sha256 mismatch for cascade.{key} manifest {}: manifest says {expected}, file has {actual}",
                    sub_dir.display()
                )));
            }
            let part = VerifiedModel::load(&sub_dir)?;
            if part.manifest.kind == "cascade" {
                return Err(bad(format!("cascade.{key}: a cascade cannot contain another cascade")));
            }
            if part.manifest.text.layout != manifest.text.layout {
                return Err(bad(format!("cascade.{key}: text layout differs from the cascade's")));
            }
            parts.push(part);
        }
        let weights_sha256 = hex::encode(Sha256::digest(text.as_bytes()));
        Ok(VerifiedModel { dir: dir.to_path_buf(), manifest, label_index, weights_sha256, parts })
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}
