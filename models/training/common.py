"""Shared helpers for train.py and evaluate.py: corpus + texts, tokenization, ONNX inference."""
from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

LABELS = ["functioneel", "prive", "niet-functioneel", "personeelsvertrouwelijk", "partijpolitiek"]
PRIVATE = ["prive", "personeelsvertrouwelijk", "partijpolitiek"]  # must never be archived as functioneel
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Mail:
    file: str   # as in labels.csv, e.g. "eml/w1-0001.eml"
    label: int
    split: str
    thread: str
    text: str
    lang: str = ""
    ambiguous: bool = False


def find_mailgrip(explicit: str | None = None) -> Path:
    for cand in [explicit, os.environ.get("MAILGRIP"), REPO / "target" / "release" / "mailgrip"]:
        if cand and Path(cand).is_file():
            return Path(cand)
    subprocess.check_call(["cargo", "build", "--release"], cwd=REPO)
    return REPO / "target" / "release" / "mailgrip"


def extract_texts(corpus: Path, mailgrip: str | None = None, out: Path | None = None) -> list[dict]:
    """Run `mailgrip extract --format jsonl eml` in the corpus folder: the ONLY way mail becomes
    model text (training and serving must see byte-identical text)."""
    exe = find_mailgrip(mailgrip)
    res = subprocess.run([str(exe.resolve()), "extract", "--format", "jsonl", "eml"], cwd=corpus,
                         capture_output=True, check=True)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(res.stdout)
    return [json.loads(l) for l in res.stdout.decode("utf-8").splitlines() if l.strip()]


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(l) for l in f if l.strip()]


def _key(name: str) -> str:
    """Match extract's `file` to labels.csv's `file` ("eml/x.eml") whatever the working dir was."""
    parts = Path(name).parts
    return "/".join(parts[-2:])


def load_corpus(corpus: Path, texts: list[dict]) -> tuple[list[Mail], dict]:
    by_key = {_key(t["file"]): t for t in texts}
    mails, skipped = [], {"no_text": 0, "parse_error": 0}
    with open(corpus / "labels.csv", encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            t = by_key.get(_key(row["file"]))
            if t is None:
                skipped["no_text"] += 1
                continue
            if t.get("parse_error"):
                skipped["parse_error"] += 1
                continue
            mails.append(Mail(file=row["file"], label=LABELS.index(row["label"]), split=row["split"],
                              thread=row.get("thread", ""), text=t["text"], lang=row.get("lang", ""),
                              ambiguous=row.get("ambiguous", "false").lower() == "true"))
    return mails, skipped


def training_data_sha256(corpus: Path, mails: list[Mail]) -> str:
    """sha256 over the labelled texts that were used: one canonical JSON line per mail
    ({"file","label","split","text"}, sorted by file), i.e. labels.csv rows + model texts."""
    h = hashlib.sha256()
    for m in sorted(mails, key=lambda m: m.file):
        h.update(json.dumps({"file": m.file, "label": LABELS[m.label], "split": m.split, "text": m.text},
                            ensure_ascii=False, sort_keys=True).encode("utf-8") + b"\n")
    return h.hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_tokenizer(path: Path, max_tokens: int):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path))
    tok.no_padding()
    tok.enable_truncation(max_tokens)
    return tok


def encode(tok, texts: list[str], prefix: str) -> list[list[int]]:
    out = []
    for i in range(0, len(texts), 256):
        out += [e.ids for e in tok.encode_batch([prefix + t for t in texts[i:i + 256]])]
    return out


def pad_batch(seqs: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    n = max(1, max(len(s) for s in seqs))
    ids = np.full((len(seqs), n), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), n), dtype=np.int64)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = s
        mask[i, :len(s)] = 1
    return ids, mask


def pad_id_of(tok) -> int:
    for t in ("<pad>", "[PAD]"):
        i = tok.token_to_id(t)
        if i is not None:
            return i
    return 0


def ort_session(model: Path, threads: int = 2):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])


def onnx_logits(sess, seqs: list[list[int]], pad_id: int, batch_size: int = 16) -> np.ndarray:
    """Logits for token-id sequences, batched by length (dynamic padding), in input order."""
    names = {i.name for i in sess.get_inputs()}
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    out = np.zeros((len(seqs), len(LABELS)), dtype=np.float32)
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        ids, mask = pad_batch([seqs[i] for i in idx], pad_id)
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in names:
            feed["token_type_ids"] = np.zeros_like(ids)
        out[idx] = sess.run(["logits"], feed)[0]
    return out


def softmax(z: np.ndarray, t: float = 1.0) -> np.ndarray:
    z = z.astype(np.float64) / t
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """Temperature minimising the validation NLL (1-D search over log T)."""
    y = np.asarray(y)

    def nll(t: float) -> float:
        p = softmax(logits, t)
        return float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None)).mean())

    grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 241))
    best = min(grid, key=nll)
    lo, hi = best / 1.03, best * 1.03
    for _ in range(40):  # golden-section refinement
        a = hi - (hi - lo) * 0.618
        b = lo + (hi - lo) * 0.618
        if nll(a) < nll(b):
            hi = b
        else:
            lo = a
    return float(round((lo + hi) / 2, 4))


def macro_f1(y: np.ndarray, pred: np.ndarray, k: int = len(LABELS)) -> float:
    f1s = []
    for c in range(k):
        tp = int(((pred == c) & (y == c)).sum())
        fp = int(((pred == c) & (y != c)).sum())
        fn = int(((pred != c) & (y == c)).sum())
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        f1s.append(2 * p * r / (p + r) if p + r else 0.0)
    return float(np.mean(f1s))


def privacy_leak(y: np.ndarray, pred: np.ndarray) -> float:
    priv = np.isin(y, [LABELS.index(c) for c in PRIVATE])
    if not priv.any():
        return 0.0
    return float((pred[priv] == LABELS.index("functioneel")).mean())
