"""Training smoke test: a tiny local BERT, a tiny corpus, a few LoRA steps, fully offline.

Asserts that the exported ONNX model reproduces the torch logits and that train.py writes a
complete model directory (manifest with correct sha256s). Run:
  models/training/.venv/bin/python -m pytest models/training/tests -q
"""
from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import os
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
TRAINING = Path(__file__).resolve().parents[1]
REPO = TRAINING.parents[1]
sys.path.insert(0, str(TRAINING))

import torch  # noqa: E402,F401  (a missing torch must fail the smoke test, not skip it)

LABELS = ["functioneel", "prive", "niet-functioneel", "personeelsvertrouwelijk", "partijpolitiek"]
SAMPLES = {
    "functioneel": ["Besluit op uw Woo-verzoek over de subsidie", "Advies aan de minister over het beleid"],
    "prive": ["Verjaardag van oma zondag, neem je de kinderen mee?", "Vakantie naar Frankrijk geboekt"],
    "niet-functioneel": ["Nieuwsbrief: lunch in de kantine", "Out of office until Monday"],
    "personeelsvertrouwelijk": ["Ziekmelding en re-integratie gesprek", "Beoordeling en salaris, vertrouwelijk"],
    "partijpolitiek": ["Kandidatenlijst voor het partijcongres", "Campagne van de fractie, leden gezocht"],
}


def _load_tiny_builder():
    spec = importlib.util.spec_from_file_location("make_tiny_model", REPO / "scripts" / "make_tiny_model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("smoke")
    base = root / "tiny-base"
    _load_tiny_builder().build_hf_model(base)
    corpus = root / "corpus"
    corpus.mkdir()
    rows, texts = [], []
    n = 0
    for label, samples in SAMPLES.items():
        for rep in range(3):
            for s in samples:
                n += 1
                split = ["train", "validation", "test"][rep]
                f = f"eml/m{n:03d}.eml"
                rows.append({"file": f, "label": label, "thread": f"t{n}", "split": split,
                             "lang": "nl", "ambiguous": "false"})
                texts.append({"file": f, "text": f"{s} ({rep})", "parse_error": None})
    with open(corpus / "labels.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    tj = root / "texts.jsonl"
    tj.write_text("\n".join(json.dumps(t) for t in texts) + "\n", encoding="utf-8")
    return root, base, corpus, tj


def test_train_export_matches_torch(tiny_setup):
    import train as T
    from common import encode, load_tokenizer, onnx_logits, ort_session, pad_id_of

    root, base, corpus, tj = tiny_setup
    model = T.build_classifier(str(base), len(LABELS), "mean", 0.1)
    tok = load_tokenizer(base / "tokenizer.json", 32)
    pad = pad_id_of(tok)
    seqs = encode(tok, [t for v in SAMPLES.values() for t in v], "")
    y = np.repeat(np.arange(len(LABELS)), 2)

    class A:  # the arguments train() reads
        lora_r, lora_alpha, lora_dropout, lora_targets = 4, 8, 0.0, "query,key,value,dense"
        lr, head_lr, batch_size, epochs, max_steps, warmup = 1e-2, 1e-2, 4, 2, 4, 0.1
        class_weight_power, label_smoothing, resume, seed, log_every, keep = 0.5, 0.0, False, 0, 1, "last"
        train_layers = 1  # cache the lower layer: exercises the cached training path

    work = root / "work"
    work.mkdir()
    state = T.train(A, model, seqs, y, seqs, y, pad, work)
    assert state["step"] == 4
    assert not any("lora" in n for n, _ in model.named_parameters()), "LoRA was not merged"
    onnx_path = root / "tiny.onnx"
    T.export_onnx(model, onnx_path, pad)
    model.eval()  # the exporter may leave training mode on
    tl = T.torch_logits(model, seqs, pad, batch_size=4)  # padded batches of mixed length
    ol = onnx_logits(ort_session(onnx_path, 1), seqs, pad, batch_size=3)
    assert np.abs(tl - ol).max() < 1e-4, np.abs(tl - ol).max()
    # single sequences (no padding) agree with the padded batch
    ol1 = onnx_logits(ort_session(onnx_path, 1), seqs, pad, batch_size=1)
    assert np.abs(ol1 - ol).max() < 1e-4


def test_train_cli_writes_model_dir(tiny_setup, monkeypatch):
    import train as T

    root, base, corpus, tj = tiny_setup
    out = root / "model"
    argv = ["train.py", "--corpus", str(corpus), "--base", str(base), "--out", str(out),
            "--texts", str(tj), "--work", str(root / "work-cli"), "--max-tokens", "32",
            "--epochs", "1", "--max-steps", "3", "--batch-size", "4", "--threads", "1",
            "--quantize", "int8", "--version", "0.0.1"]
    monkeypatch.setattr(sys, "argv", argv)
    assert T.main() == 0
    man = tomllib.loads((out / "manifest.toml").read_text(encoding="utf-8"))
    assert man["kind"] == "onnx" and man["labels"] == LABELS and man["max_tokens"] == 32
    assert man["text"]["layout"] == "subject-body-v1" and man["text"]["prefix"] == ""
    assert man["calibration"]["temperature"] > 0
    assert len(man["training_data_sha256"]) == 64
    for name, digest in man["files"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
    tokj = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    assert tokj["padding"] is None and tokj["truncation"] is None
    report = out / "report"
    for f in ("README.md", "confusion.png", "reliability.png", "leak_vs_workload.png", "metrics-test.json"):
        assert (report / f).exists(), f


def test_tiny_fixture_expected_probs():
    """tests/fixtures/tiny-model/expected.jsonl is reproduced by onnxruntime from the fixture."""
    from common import encode, load_tokenizer, ort_session, softmax

    d = REPO / "tests" / "fixtures" / "tiny-model"
    assert (d / "manifest.toml").exists(), "tests/fixtures/tiny-model is missing: run scripts/make_tiny_model.py"
    man = tomllib.loads((d / "manifest.toml").read_text(encoding="utf-8"))
    for name, digest in man["files"].items():
        assert hashlib.sha256((d / name).read_bytes()).hexdigest() == digest
    tok = load_tokenizer(d / "tokenizer.json", man["max_tokens"])
    sess = ort_session(d / "model.onnx", 1)
    rows = [json.loads(l) for l in (d / "expected.jsonl").read_text(encoding="utf-8").splitlines()]
    for r in rows:
        ids = encode(tok, [r["text"]], man["text"]["prefix"])[0]
        a = np.array([ids], dtype=np.int64)
        lg = sess.run(["logits"], {"input_ids": a, "attention_mask": np.ones_like(a)})[0]
        p = softmax(lg, man["calibration"]["temperature"])[0]
        assert np.abs(p - np.array(r["probs"])).max() < 1e-5


def test_daemon_loads_the_export_and_agrees_with_python(tiny_setup):
    """Cross-language parity: `mailgrip classify` on the model that train.py just wrote gives the
    probabilities Python's onnxruntime computes for the same text, within 1e-4."""
    import subprocess

    from common import encode, find_mailgrip, load_tokenizer, onnx_logits, ort_session, pad_id_of, softmax

    root, base, corpus, tj = tiny_setup
    out = root / "model"
    assert (out / "manifest.toml").exists(), "run after test_train_cli_writes_model_dir"
    man = tomllib.loads((out / "manifest.toml").read_text(encoding="utf-8"))
    mails = root / "mails"
    mails.mkdir(exist_ok=True)
    for i, (label, samples) in enumerate(SAMPLES.items()):
        body = f"{samples[0]}\r\n\r\n> eerder bericht: {samples[1]}\r\n"
        (mails / f"m{i}.eml").write_bytes(
            f"From: a@example.nl\r\nSubject: {samples[1]}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}".encode()
        )
    binary = find_mailgrip()
    assert binary.exists(), f"{binary} missing: cargo build --release first"
    env = dict(os.environ, MAILGRIP__MODEL__DIR=str(out))
    texts = [json.loads(l) for l in subprocess.run([str(binary), "extract", str(mails)], check=True,
                                                   capture_output=True, env=env).stdout.decode().splitlines()]
    rust = [json.loads(l) for l in subprocess.run([str(binary), "classify", "--format", "jsonl", str(mails)],
                                                  check=True, capture_output=True, env=env).stdout.decode().splitlines()]
    assert [t["file"] for t in texts] == [r["file"] for r in rust] and len(rust) == len(SAMPLES)
    tok = load_tokenizer(out / man["onnx"]["tokenizer"], man["max_tokens"])
    seqs = encode(tok, [t["text"] for t in texts], man["text"]["prefix"])
    logits = onnx_logits(ort_session(out / man["onnx"]["model"], 1), seqs, pad_id_of(tok), batch_size=1)
    probs = softmax(logits, man["calibration"]["temperature"])
    for r, p in zip(rust, probs):
        got = np.array([r["scores"][l] for l in man["labels"]])
        assert np.abs(got - p).max() < 1e-4, (r["file"], got, p)
