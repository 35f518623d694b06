//! The transformer backend: a Hugging Face tokenizer plus an ONNX graph run by ONNX Runtime.
//!
//! Each inference worker owns one [`OnnxBackend`]; sequences are padded only to the longest
//! sequence of their own batch, never to `max_tokens`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::Tensor;
use tokenizers::{Tokenizer, TruncationParams};

use super::manifest::VerifiedModel;
use super::{Backend, ClassifyError, softmax_calibrated};
use crate::telemetry::Metrics;

static ORT_ENV: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();

/// Load `libonnxruntime.so` once per process.
fn environment(library: &str) -> Result<&'static ort::environment::Environment, ClassifyError> {
    ORT_ENV
        .get_or_init(|| {
            let path = find_ort_library(library).ok_or_else(|| {
                "libonnxruntime.so not found: set model.ort_library or ORT_DYLIB_PATH, or run scripts/setup.sh \
                 (installs onnxruntime into .venv)"
                    .to_string()
            })?;
            let builder = ort::init_from(&path).map_err(|e| format!("loading {}: {e}", path.display()))?;
            builder.with_name("mailgrip").build().map_err(|e| format!("ONNX Runtime environment: {e}"))
        })
        .as_ref()
        .map_err(|e| ClassifyError::Model(e.clone()))
}

/// Where ONNX Runtime's shared library is: the configured path, `ORT_DYLIB_PATH`, or a
/// `.venv` with the `onnxruntime` wheel in the working directory or beside the binary.
pub fn find_ort_library(configured: &str) -> Option<PathBuf> {
    if !configured.is_empty() {
        return Some(PathBuf::from(configured));
    }
    if let Ok(p) = std::env::var("ORT_DYLIB_PATH") {
        if !p.is_empty() {
            return Some(PathBuf::from(p));
        }
    }
    let mut roots = vec![PathBuf::from(".")];
    if let Ok(exe) = std::env::current_exe() {
        // target/release/mailgrip and target/release/deps/<test> -> repository root
        roots.extend(exe.ancestors().skip(1).take(4).map(Path::to_path_buf));
    }
    for root in roots {
        let lib = root.join(".venv/lib");
        let Ok(entries) = std::fs::read_dir(&lib) else {
            continue;
        };
        for entry in entries.flatten() {
            let capi = entry.path().join("site-packages/onnxruntime/capi");
            let Ok(files) = std::fs::read_dir(&capi) else {
                continue;
            };
            let mut found: Vec<PathBuf> = files
                .flatten()
                .map(|f| f.path())
                .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libonnxruntime.so")))
                .collect();
            found.sort();
            if let Some(p) = found.pop() {
                return Some(p);
            }
        }
    }
    None
}

pub struct OnnxBackend {
    session: Session,
    tokenizer: Tokenizer,
    prefix: String,
    output: String,
    pad_id: i64,
    wants_token_types: bool,
    temperature: f32,
    label_index: [usize; 5],
}

impl OnnxBackend {
    pub fn load(model: &VerifiedModel, ort_library: &str, intra_threads: usize) -> Result<Self, ClassifyError> {
        let err = |what: &str, e: &dyn std::fmt::Display| {
            ClassifyError::Model(format!("{}: {what}: {e}", model.dir.display()))
        };
        let env = environment(ort_library)?;
        let m = &model.manifest;
        let mut tokenizer =
            Tokenizer::from_file(model.file(&m.onnx.tokenizer)).map_err(|e| err("tokenizer.json", &e))?;
        tokenizer
            .with_truncation(Some(TruncationParams { max_length: m.max_tokens, ..Default::default() }))
            .map_err(|e| err("tokenizer truncation", &e))?;
        tokenizer.with_padding(None);
        let pad_id = m
            .onnx
            .pad_id
            .or_else(|| tokenizer.token_to_id("<pad>"))
            .or_else(|| tokenizer.token_to_id("[PAD]"))
            .unwrap_or(0) as i64;
        let mut builder = Session::builder(env)
            .map_err(|e| err("session", &e))?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|e| err("session", &e))?;
        if intra_threads > 0 {
            builder = builder.with_intra_threads(intra_threads).map_err(|e| err("session", &e))?;
        }
        let session = builder.commit_from_file(model.file(&m.onnx.model)).map_err(|e| err(&m.onnx.model, &e))?;
        let names: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
        for needed in ["input_ids", "attention_mask"] {
            if !names.contains(&needed) {
                return Err(err(&m.onnx.model, &format!("graph has no input {needed:?} (inputs: {names:?})")));
            }
        }
        let wants_token_types = names.contains(&"token_type_ids");
        if !session.outputs().iter().any(|o| o.name() == m.onnx.output) {
            return Err(err(&m.onnx.model, &format!("graph has no output {:?}", m.onnx.output)));
        }
        Ok(OnnxBackend {
            session,
            tokenizer,
            prefix: m.text.prefix.clone(),
            output: m.onnx.output.clone(),
            pad_id,
            wants_token_types,
            temperature: m.calibration.temperature,
            label_index: model.label_index,
        })
    }

    /// Token ids of one text, truncated, special tokens included.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, ClassifyError> {
        let input = format!("{}{}", self.prefix, text);
        let enc = self.tokenizer.encode(input, true).map_err(|e| ClassifyError::Model(format!("tokenize: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Raw logits of a batch of already-tokenized sequences, padded to the longest.
    pub fn logits(&mut self, seqs: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, ClassifyError> {
        let batch = seqs.len();
        let len = seqs.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let mut ids = vec![self.pad_id; batch * len];
        let mut mask = vec![0i64; batch * len];
        for (row, seq) in seqs.iter().enumerate() {
            for (col, &id) in seq.iter().enumerate() {
                ids[row * len + col] = id as i64;
                mask[row * len + col] = 1;
            }
        }
        let shape = vec![batch as i64, len as i64];
        let e = |e: ort::Error| ClassifyError::Model(format!("inference: {e}"));
        let mut inputs = vec![
            ("input_ids", Tensor::from_array((shape.clone(), ids)).map_err(e)?.into_dyn()),
            ("attention_mask", Tensor::from_array((shape.clone(), mask)).map_err(e)?.into_dyn()),
        ];
        if self.wants_token_types {
            inputs
                .push(("token_type_ids", Tensor::from_array((shape, vec![0i64; batch * len])).map_err(e)?.into_dyn()));
        }
        let outputs = self.session.run(inputs).map_err(e)?;
        let (out_shape, data) = outputs[self.output.as_str()].try_extract_tensor::<f32>().map_err(e)?;
        let width = *out_shape.last().unwrap_or(&0) as usize;
        if width == 0 || data.len() != batch * width {
            return Err(ClassifyError::Model(format!("unexpected output shape {out_shape:?}")));
        }
        Ok(data.chunks(width).map(<[f32]>::to_vec).collect())
    }
}

impl Backend for OnnxBackend {
    fn classify(&mut self, texts: &[&str], metrics: &Metrics) -> Result<Vec<[f32; 5]>, ClassifyError> {
        let seqs = texts.iter().map(|t| self.encode(t)).collect::<Result<Vec<_>, _>>()?;
        let mut out = vec![[0f32; 5]; seqs.len()];
        // Pad only within groups of similar length: sort by length and cut a new group whenever
        // padding would waste more than a quarter of the group's compute.
        let mut order: Vec<usize> = (0..seqs.len()).collect();
        order.sort_by_key(|&i| seqs[i].len());
        let mut start = 0;
        while start < order.len() {
            let mut end = start + 1;
            let mut real = seqs[order[start]].len();
            while end < order.len() {
                let longest = seqs[order[end]].len();
                let with = real + longest;
                if longest * (end - start + 1) * 4 > with * 5 {
                    break;
                }
                real = with;
                end += 1;
            }
            let group: Vec<Vec<u32>> = order[start..end].iter().map(|&i| seqs[i].clone()).collect();
            let timer = metrics.inference_seconds.start_timer();
            let logits = self.logits(&group)?;
            timer.observe_duration();
            metrics.batch_size.observe(group.len() as f64);
            for (k, &i) in order[start..end].iter().enumerate() {
                out[i] = softmax_calibrated(&logits[k], self.temperature, &self.label_index);
            }
            start = end;
        }
        Ok(out)
    }
}
