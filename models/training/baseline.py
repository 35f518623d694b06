#!/usr/bin/env python3
"""The explainable baseline: TF-IDF (word 1-2-grams + char_wb n-grams) and multinomial logistic
regression, served by mailgrip's `BaselineBackend` (src/classify/baseline.rs).

One command, in the repository root:

    models/training/.venv-baseline/bin/python models/training/baseline.py \
        --corpus models/corpus --out models/mailgrip-baseline

(`python3 -m venv models/training/.venv-baseline` and
`models/training/.venv-baseline/bin/pip install -r models/training/requirements-baseline.txt`
first; started with another Python, the script re-executes itself in that venv when it exists.)

What it does:
1. runs `mailgrip extract` on the corpus: the ONLY source of model text, so that training and
   serving see byte-identical text;
2. fits two TfidfVectorizer blocks on the train split (word n-grams, char_wb n-grams), each
   sublinear_tf, L2-normalised, hstacked in that order;
3. trains LogisticRegression (multinomial, lbfgs) on train, picks C on validation (macro-F1, then
   log-loss), fits a temperature on validation (minimum NLL);
4. writes `baseline.json` (the format `src/classify/baseline.rs` deserialises), `manifest.toml`
   (models/MANIFEST.md), `expected.jsonl` (calibrated probabilities and top explanation terms of
   every corpus mail, computed back from the exported JSON: the input of
   `tests/baseline_parity.rs`), and `report/` (test-split metrics, confusion matrix,
   explanation examples).

Feature rules (`--features`):
- `mailgrip` (default): exactly what baseline.rs computes today. Lower-case (str.lower == Rust's
  to_lowercase), words are maximal runs of >= 2 Unicode word characters as Rust's regex defines
  `\\w` ([\\p{Alphabetic}\\p{M}\\p{Pc}\\p{Nd}\\p{Join_Control}]; Python's `re` differs: it counts
  `²`, `³`, `½` as word characters and combining marks, U+FE0F and ZWJ as not), char_wb words are
  split on the Unicode White_Space property (Rust's split_whitespace; Python's str.split also
  splits on U+001C..U+001F), and a padded word exactly n characters long is counted once more
  for n+1 (baseline.rs's loop; scikit-learn stops after counting it once).
- `sklearn`: scikit-learn's own analyzers (`(?u)\\b\\w\\w+\\b`, char_wb). Use this once
  baseline.rs mirrors scikit-learn exactly (see the model README).
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import hashlib
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VENV = REPO / "models" / "training" / ".venv-baseline"

if __name__ == "__main__" and os.environ.get("MAILGRIP_BASELINE_NO_REEXEC") != "1":
    venv_python = VENV / "bin" / "python"
    if venv_python.exists() and Path(sys.prefix).resolve() != VENV.resolve():
        os.environ["MAILGRIP_BASELINE_NO_REEXEC"] = "1"
        os.execv(str(venv_python), [str(venv_python), __file__, *sys.argv[1:]])

import numpy as np  # noqa: E402
import regex  # noqa: E402
from scipy import sparse  # noqa: E402

LABELS = ["functioneel", "prive", "niet-functioneel", "personeelsvertrouwelijk", "partijpolitiek"]
PRIVATE = ["prive", "personeelsvertrouwelijk", "partijpolitiek"]
LAYOUT = "subject-body-v1"

# Rust regex's Unicode `\w` (regex-syntax perl_word), and char::is_whitespace.
RUST_WORD = regex.compile(r"[\p{Alphabetic}\p{M}\p{Pc}\p{Nd}\p{Join_Control}]{2,}")
RUST_WS = regex.compile(r"\p{White_Space}+")


# ---------------------------------------------------------------------------------------------
# Analyzers (picklable callables so that TfidfVectorizer can use them)

class WordAnalyzer:
    def __init__(self, lo: int, hi: int):
        self.lo, self.hi = lo, hi

    def __call__(self, text: str) -> list[str]:
        toks = RUST_WORD.findall(text.lower())
        out: list[str] = []
        for n in range(self.lo, self.hi + 1):
            out.extend(" ".join(toks[i:i + n]) for i in range(len(toks) - n + 1))
        return out


class CharWbAnalyzer:
    """char_wb n-grams. `rust_repeat=True` reproduces baseline.rs: a padded word of exactly n
    characters (n < max n) is counted for n and once more for n+1."""

    def __init__(self, lo: int, hi: int, rust_repeat: bool = False):
        self.lo, self.hi, self.rust_repeat = lo, hi, rust_repeat

    def __call__(self, text: str) -> list[str]:
        out: list[str] = []
        for word in RUST_WS.split(text.lower()):
            if not word:
                continue
            p = " " + word + " "
            size = len(p)
            for n in range(self.lo, self.hi + 1):
                if size < n:
                    out.append(p)
                    break
                out.extend(p[i:i + n] for i in range(size - n + 1))
                if size == n and not self.rust_repeat:
                    break
        return out


def make_vectorizers(args):
    from sklearn.feature_extraction.text import TfidfVectorizer

    common = dict(sublinear_tf=True, norm="l2", smooth_idf=True, use_idf=True, dtype=np.float64)
    wlo, whi = args.word_ngrams
    clo, chi = args.char_ngrams
    if args.features == "mailgrip":
        word = TfidfVectorizer(analyzer=WordAnalyzer(wlo, whi), min_df=args.word_min_df,
                               max_features=args.word_max_features, **common)
        char = TfidfVectorizer(analyzer=CharWbAnalyzer(clo, chi, rust_repeat=False),
                               min_df=args.char_min_df, max_features=args.char_max_features,
                               **common)
    else:
        word = TfidfVectorizer(analyzer="word", lowercase=True, token_pattern=r"(?u)\b\w\w+\b",
                               ngram_range=(wlo, whi), min_df=args.word_min_df,
                               max_features=args.word_max_features, **common)
        char = TfidfVectorizer(analyzer="char_wb", lowercase=True, ngram_range=(clo, chi),
                               min_df=args.char_min_df, max_features=args.char_max_features,
                               **common)
    return [("word", (wlo, whi), word), ("char_wb", (clo, chi), char)]


# ---------------------------------------------------------------------------------------------
# Corpus

def find_mailgrip(explicit: str | None) -> Path:
    for cand in [explicit, os.environ.get("MAILGRIP"), REPO / "target" / "release" / "mailgrip"]:
        if cand and Path(cand).is_file():
            return Path(cand).resolve()
    subprocess.check_call(["cargo", "build", "--release"], cwd=REPO)
    return REPO / "target" / "release" / "mailgrip"


def extract_texts(corpus: Path, exe: Path) -> dict[str, dict]:
    """`mailgrip extract <corpus>/eml`, keyed by labels.csv's file name (`eml/x.eml`)."""
    res = subprocess.run([str(exe), "extract", str(corpus / "eml")], capture_output=True,
                         check=True)
    out = {}
    for line in res.stdout.decode("utf-8").splitlines():
        if line.strip():
            t = json.loads(line)
            out["/".join(Path(t["file"]).parts[-2:])] = t
    return out


def load_corpus(corpus: Path, texts: dict[str, dict]):
    mails, skipped = [], Counter()
    with open(corpus / "labels.csv", encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            t = texts.get(row["file"])
            if t is None:
                skipped["no .eml / no text"] += 1
                continue
            if t.get("parse_error"):
                skipped["parse_error"] += 1
                continue
            if row["label"] not in LABELS or row["split"] not in ("train", "validation", "test"):
                skipped["bad label or split"] += 1
                continue
            mails.append({"file": row["file"], "label": LABELS.index(row["label"]),
                          "split": row["split"], "text": t["text"]})
    return mails, skipped


def training_data_sha256(corpus: Path, mails: list[dict]) -> str:
    """Same definition as models/training/common.py: sha256 of labels.csv followed by one
    canonical JSON line {"file","text"} per mail used, sorted by file."""
    h = hashlib.sha256()
    h.update((corpus / "labels.csv").read_bytes())
    for m in sorted(mails, key=lambda m: m["file"]):
        h.update(json.dumps({"file": m["file"], "text": m["text"]}, ensure_ascii=False,
                            sort_keys=True).encode("utf-8") + b"\n")
    return h.hexdigest()


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Maths

def softmax(z: np.ndarray, t: float = 1.0) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64) / t
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(logits: np.ndarray, y: np.ndarray, t: float = 1.0) -> float:
    p = softmax(logits, t)
    return float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None)).mean())


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    from scipy.optimize import minimize_scalar

    res = minimize_scalar(lambda lt: nll(logits, y, float(np.exp(lt))), bounds=(np.log(0.02),
                          np.log(50.0)), method="bounded", options={"xatol": 1e-6})
    return float(round(float(np.exp(res.x)), 6))


def prf(y: np.ndarray, pred: np.ndarray):
    rows = []
    for c in range(len(LABELS)):
        tp = int(((pred == c) & (y == c)).sum())
        fp = int(((pred == c) & (y != c)).sum())
        fn = int(((pred != c) & (y == c)).sum())
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        f = 2 * p * r / (p + r) if p + r else 0.0
        rows.append((p, r, f, int((y == c).sum())))
    return rows


def macro_f1(y, pred) -> float:
    return float(np.mean([r[2] for r in prf(np.asarray(y), np.asarray(pred))]))


def confusion(y, pred) -> np.ndarray:
    m = np.zeros((len(LABELS), len(LABELS)), dtype=int)
    for a, b in zip(y, pred):
        m[a, b] += 1
    return m


def ece(probs: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y
    total = 0.0
    for i in range(bins):
        sel = (conf > i / bins) & (conf <= (i + 1) / bins)
        if sel.any():
            total += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
    return float(total)


# ---------------------------------------------------------------------------------------------
# The exported model, recomputed exactly as baseline.rs does (used for expected.jsonl)

class Exported:
    def __init__(self, weights: dict, temperature: float, analyzers: list):
        self.blocks = []
        for b, an in zip(weights["blocks"], analyzers):
            self.blocks.append((an, b["vocabulary"], np.asarray(b["idf"], dtype=np.float64),
                                b["sublinear_tf"]))
        self.offsets = np.cumsum([0] + [len(b[1]) for b in self.blocks])[:-1]
        self.coef = np.asarray(weights["coef"], dtype=np.float64)
        self.intercept = np.asarray(weights["intercept"], dtype=np.float64)
        self.terms = [""] * self.coef.shape[1]
        for (_, vocab, _, _), off in zip(self.blocks, self.offsets):
            for t, i in vocab.items():
                self.terms[off + i] = t
        self.temperature = temperature
        self.rel = self.coef - self.coef.mean(axis=0, keepdims=True)

    def features(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        idx, val = [], []
        for (an, vocab, idf, sub), off in zip(self.blocks, self.offsets):
            counts = Counter(vocab[g] for g in an(text) if g in vocab)
            if not counts:
                continue
            i = np.fromiter(counts.keys(), dtype=np.int64)
            c = np.fromiter(counts.values(), dtype=np.float64)
            v = (1.0 + np.log(c) if sub else c) * idf[i]
            v /= np.sqrt((v * v).sum())
            idx.append(i + off)
            val.append(v)
        if not idx:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        return np.concatenate(idx), np.concatenate(val)

    def probs(self, text: str) -> np.ndarray:
        i, v = self.features(text)
        logits = self.intercept + self.coef[:, i] @ v
        return softmax(logits[None, :], self.temperature)[0]

    def explain(self, text: str, cls: int, k: int = 10) -> list[tuple[str, float]]:
        i, v = self.features(text)
        w = v * self.rel[cls, i]
        order = np.argsort(-w, kind="stable")
        return [(self.terms[i[j]], float(w[j])) for j in order[:k] if w[j] > 0]


# ---------------------------------------------------------------------------------------------

def explain_entry(exported: Exported, text: str, cls: int, k: int) -> dict:
    """The top k terms for `class`, followed by every further term whose weight ties with the
    k-th (within 1e-4): Rust may order exact ties (terms that always occur together) otherwise."""
    terms = exported.explain(text, cls, 10 * k + 50)
    top = terms[:k]
    if len(top) == k:
        top += [t for t in terms[k:] if top[-1][1] - t[1] < 1e-4]
    return {"class": LABELS[cls], "k": k, "terms": [[t, float("%.8g" % w)] for t, w in top]}


def fmt(x: float) -> str:
    return "%.8g" % x


def write_weights(path: Path, blocks, coef, intercept, extra: dict) -> None:
    """baseline.json, written by hand to keep numbers short (8 significant digits; Rust reads
    f32)."""
    with open(path, "w", encoding="utf-8") as f:
        f.write('{"classes":' + json.dumps(LABELS) + ',"blocks":[')
        for bi, (name, rng, vec) in enumerate(blocks):
            vocab = {t: int(i) for t, i in sorted(vec.vocabulary_.items(), key=lambda kv: kv[1])}
            f.write(("," if bi else "") + '{"analyzer":' + json.dumps(name)
                    + ',"ngram_range":' + json.dumps(list(rng)) + ',"sublinear_tf":true'
                    + ',"vocabulary":' + json.dumps(vocab, ensure_ascii=False)
                    + ',"idf":[' + ",".join(fmt(x) for x in vec.idf_) + "]}")
        f.write('],"coef":[')
        f.write(",".join("[" + ",".join(fmt(x) for x in row) + "]" for row in coef))
        f.write('],"intercept":[' + ",".join(fmt(x) for x in intercept) + "]")
        f.write(',"training":' + json.dumps(extra, ensure_ascii=False) + "}\n")


def toml_str(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=REPO / "models" / "corpus")
    ap.add_argument("--out", type=Path, default=REPO / "models" / "mailgrip-baseline")
    ap.add_argument("--mailgrip", help="mailgrip binary (default: $MAILGRIP, target/release)")
    ap.add_argument("--name", default="mailgrip-baseline")
    ap.add_argument("--version", default="1.0.0")
    ap.add_argument("--features", choices=["mailgrip", "sklearn"], default="mailgrip",
                    help="feature rules: what baseline.rs computes today (default), or plain "
                         "scikit-learn analyzers")
    ap.add_argument("--word-ngrams", type=int, nargs=2, default=[1, 2])
    ap.add_argument("--char-ngrams", type=int, nargs=2, default=[2, 5])
    ap.add_argument("--word-min-df", type=int, default=2)
    ap.add_argument("--char-min-df", type=int, default=2)
    ap.add_argument("--word-max-features", type=int, default=40000)
    ap.add_argument("--char-max-features", type=int, default=100000)
    ap.add_argument("--C", type=float, nargs="+", default=[3.0, 10.0, 30.0, 100.0, 300.0],
                    help="inverse regularisation strengths tried on validation")
    ap.add_argument("--class-weight", choices=["balanced", "none"], default="balanced")
    ap.add_argument("--explain-k", type=int, default=10)
    ap.add_argument("--created", help="timestamp for the manifest (default: now, UTC)")
    args = ap.parse_args()

    from sklearn.linear_model import LogisticRegression

    corpus, out = args.corpus.resolve(), args.out.resolve()
    exe = find_mailgrip(args.mailgrip)
    print(f"extracting texts with {exe} ...", flush=True)
    texts = extract_texts(corpus, exe)
    mails, skipped = load_corpus(corpus, texts)
    if skipped:
        print(f"skipped: {dict(skipped)}")
    split = {s: [m for m in mails if m["split"] == s] for s in ("train", "validation", "test")}
    print("mails: " + ", ".join(f"{s} {len(v)}" for s, v in split.items()), flush=True)
    if not split["train"] or not split["validation"]:
        sys.exit("need train and validation mails")
    y = {s: np.array([m["label"] for m in v], dtype=int) for s, v in split.items()}
    raw = {s: [m["text"] for m in v] for s, v in split.items()}

    blocks = make_vectorizers(args)
    X = {s: [] for s in split}
    for name, _, vec in blocks:
        X["train"].append(vec.fit_transform(raw["train"]))
        for s in ("validation", "test"):
            X[s].append(vec.transform(raw[s]) if raw[s] else
                        sparse.csr_matrix((0, len(vec.vocabulary_))))
        print(f"block {name}: {len(vec.vocabulary_)} features", flush=True)
    X = {s: sparse.hstack(v, format="csr") for s, v in X.items()}

    cw = None if args.class_weight == "none" else "balanced"
    best = None
    for C in args.C:
        clf = LogisticRegression(C=C, max_iter=3000, class_weight=cw, solver="lbfgs")
        clf.fit(X["train"], y["train"])
        lv = clf.decision_function(X["validation"])
        f1 = macro_f1(y["validation"], lv.argmax(axis=1))
        loss = nll(lv, y["validation"])
        print(f"C={C:g}: validation macro-F1 {f1:.4f}, NLL {loss:.4f}", flush=True)
        if best is None or (f1, -loss) > (best[1], -best[2]):
            best = (C, f1, loss, clf)
    C, _, _, clf = best
    assert list(clf.classes_) == list(range(len(LABELS)))
    temperature = fit_temperature(clf.decision_function(X["validation"]), y["validation"])
    print(f"chosen C={C:g}, temperature {temperature}", flush=True)

    out.mkdir(parents=True, exist_ok=True)
    (out / "report").mkdir(exist_ok=True)
    data_sha = training_data_sha256(corpus, mails)
    extra = {"features": args.features, "C": C, "class_weight": args.class_weight,
             "min_df": [args.word_min_df, args.char_min_df],
             "max_features": [args.word_max_features, args.char_max_features],
             "sklearn": __import__("sklearn").__version__, "training_data_sha256": data_sha}
    write_weights(out / "baseline.json", blocks, clf.coef_, clf.intercept_, extra)
    size = (out / "baseline.json").stat().st_size
    print(f"baseline.json: {size / 1e6:.1f} MB", flush=True)

    created = args.created or dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    manifest = "\n".join([
        f"name = {toml_str(args.name)}",
        f"version = {toml_str(args.version)}",
        'kind = "baseline"',
        "labels = [" + ", ".join(toml_str(l) for l in LABELS) + "]",
        f"created = {toml_str(created)}",
        f"training_data_sha256 = {toml_str(data_sha)}",
        "",
        "[text]",
        f"layout = {toml_str(LAYOUT)}",
        'prefix = ""',
        "",
        "[baseline]",
        'weights = "baseline.json"',
        "",
        "[calibration]",
        f"temperature = {temperature!r}",
        "",
        "[files]",
        f'"baseline.json" = {toml_str(sha256_file(out / "baseline.json"))}',
        "",
    ])
    (out / "manifest.toml").write_text(manifest, encoding="utf-8")

    # Recompute every mail's probabilities from the exported JSON, as baseline.rs does.
    exported = Exported(json.loads((out / "baseline.json").read_text(encoding="utf-8")),
                        temperature, [vec.build_analyzer() for _, _, vec in blocks])
    sk_probs = {s: softmax(clf.decision_function(X[s]), temperature) for s in split if raw[s]}
    probs = {s: np.array([exported.probs(t) for t in raw[s]]) for s in split if raw[s]}
    drift = max(float(np.abs(probs[s] - sk_probs[s]).max()) for s in probs)
    print(f"exported JSON vs scikit-learn: max |dp| = {drift:.2e}", flush=True)
    if drift > 1e-5:
        sys.exit("exported weights do not reproduce scikit-learn's probabilities")

    rel_eml = os.path.relpath(corpus, REPO)
    with open(out / "expected.jsonl", "w", encoding="utf-8") as f:
        for s in ("train", "validation", "test"):
            for m, p in zip(split[s], probs.get(s, [])):
                cls = int(np.argmax(p))
                f.write(json.dumps({
                    "file": f"{rel_eml}/{m['file']}",
                    "split": s,
                    "text_sha256": hashlib.sha256(m["text"].encode("utf-8")).hexdigest(),
                    "probs": [float("%.8g" % x) for x in p],
                    "explain": explain_entry(exported, m["text"], cls, 5),
                }, ensure_ascii=False) + "\n")

    # Report on the test split.
    lines = write_report(out, args, split, y, probs, exported, temperature, C, mails, size,
                         data_sha, created)
    print("\n".join(lines))
    return 0


def write_report(out, args, split, y, probs, exported, temperature, C, mails, size, data_sha,
                 created) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = []
    metrics = {}
    for s in ("validation", "test"):
        if s not in probs:
            continue
        pred = probs[s].argmax(axis=1)
        rows = prf(y[s], pred)
        priv = np.isin(y[s], [LABELS.index(c) for c in PRIVATE])
        leak = float((priv & (pred == 0)).sum() / max(priv.sum(), 1))
        metrics[s] = {"per_class": {LABELS[i]: {"precision": r[0], "recall": r[1], "f1": r[2],
                                                "support": r[3]} for i, r in enumerate(rows)},
                      "macro_f1": float(np.mean([r[2] for r in rows])),
                      "accuracy": float((pred == y[s]).mean()),
                      "nll": nll(np.log(np.clip(probs[s], 1e-300, None)), y[s]),
                      "ece": ece(probs[s], y[s]), "privacy_leak": leak,
                      "confusion": confusion(y[s], pred).tolist(), "n": int(len(pred))}
    (out / "report" / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")

    t = metrics.get("test")
    md = [f"# {args.name} {args.version}: evaluation report", "",
          f"Created {created} by `models/training/baseline.py` (features `{args.features}`, "
          f"word {args.word_ngrams[0]}-{args.word_ngrams[1]}-grams + char_wb "
          f"{args.char_ngrams[0]}-{args.char_ngrams[1]}-grams, "
          f"{sum(len(b[1]) for b in exported.blocks)} features, C={C:g}, "
          f"class_weight={args.class_weight}, temperature {temperature}).",
          f"Corpus: {len(mails)} mails ("
          + ", ".join(f"{s} {len(v)}" for s, v in split.items())
          + f"), training_data_sha256 `{data_sha[:16]}…`.",
          "All probabilities below are calibrated and computed from the exported `baseline.json` "
          "with the same feature rules as the daemon.", ""]
    if t:
        summary.append(f"test macro-F1 {t['macro_f1']:.4f} (accuracy {t['accuracy']:.4f}, "
                       f"n={t['n']})")
        md += ["## Test split", "", "| class | precision | recall | F1 | support |",
               "| --- | ---: | ---: | ---: | ---: |"]
        for c in LABELS:
            r = t["per_class"][c]
            md.append(f"| {c} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | "
                      f"{r['support']} |")
            summary.append(f"  {c:<24} P {r['precision']:.3f}  R {r['recall']:.3f}  "
                           f"F1 {r['f1']:.3f}  (n={r['support']})")
        md += ["", f"**Macro-F1 {t['macro_f1']:.4f}**, accuracy {t['accuracy']:.4f}, "
               f"NLL {t['nll']:.4f}, ECE (10 bins) {t['ece']:.4f}, privacy leak "
               f"(prive/personeelsvertrouwelijk/partijpolitiek predicted functioneel) "
               f"{t['privacy_leak']:.2%}.", ""]
        v = metrics["validation"]
        md += [f"Validation (used to pick C and the temperature): macro-F1 {v['macro_f1']:.4f}, "
               f"ECE {v['ece']:.4f}.", "", "## Confusion matrix (test)", "",
               "Rows: true class, columns: predicted.", "",
               "| | " + " | ".join(LABELS) + " |", "| --- |" + " ---: |" * len(LABELS)]
        for i, c in enumerate(LABELS):
            md.append(f"| **{c}** | " + " | ".join(str(x) for x in t["confusion"][i]) + " |")
        md += ["", "![confusion matrix](confusion_test.png)", ""]

        cm = np.array(t["confusion"])
        fig, ax = plt.subplots(figsize=(6.4, 5.4))
        ax.imshow(cm, cmap="Blues")
        short = ["funct.", "prive", "niet-f.", "pers.vertr.", "partijpol."]
        ax.set_xticks(range(5), short, rotation=30)
        ax.set_yticks(range(5), short)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{args.name}: test split (macro-F1 {t['macro_f1']:.3f})")
        for i in range(5):
            for j in range(5):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                        color="white" if cm[i, j] > cm.max() / 2 else "black")
        fig.tight_layout()
        fig.savefig(out / "report" / "confusion_test.png", dpi=100)
        plt.close(fig)

        # Explanation examples: three test mails, one per class where possible.
        md += ["## Explanations", "",
               "`BaselineBackend::explain(text, class, k)` ranks the terms of a message by "
               "`x_j * (coef[class][j] - mean_k coef[k][j])` (TF-IDF value times the term's "
               "weight for the class relative to the mean over classes); the same formula is "
               "computed here in Python and checked against Rust for every corpus mail by "
               "`tests/baseline_parity.rs`. Char n-grams are shown with their padding "
               "spaces as `·`.", ""]
        test = split["test"]
        pred = probs["test"].argmax(axis=1)
        picked, seen = [], set()
        for want in (0, 3, 4, 1, 2):
            for k, m in enumerate(test):
                if m["label"] == want and pred[k] == want and want not in seen:
                    picked.append(k)
                    seen.add(want)
                    break
            if len(picked) == 3:
                break
        for k in picked:
            m, p = test[k], probs["test"][k]
            cls = int(p.argmax())
            subject = m["text"].split("\n", 1)[0][:90]
            md += [f"### `{m['file']}` (true {LABELS[m['label']]}, predicted {LABELS[cls]} "
                   f"{p[cls]:.2f})", "", f"Subject: {subject}", "",
                   "| term | weight |", "| --- | ---: |"]
            for term, w in exported.explain(m["text"], cls, args.explain_k):
                md.append(f"| `{term.replace(' ', '·')}` | {w:.4f} |")
            md.append("")
    md += ["## Reproduce", "", "```",
           "python3 -m venv models/training/.venv-baseline",
           "models/training/.venv-baseline/bin/pip install -r "
           "models/training/requirements-baseline.txt",
           "models/training/.venv-baseline/bin/python models/training/baseline.py "
           "--corpus models/corpus --out models/mailgrip-baseline",
           "cargo test --release --test baseline_parity", "```", ""]
    (out / "report" / "README.md").write_text("\n".join(md), encoding="utf-8")
    write_card(out, args, split, metrics, exported, temperature, C, size, created)
    summary.append(f"baseline.json {size / 1e6:.1f} MB; report in {out / 'report'}")
    return summary


def write_card(out, args, split, metrics, exported, temperature, C, size, created) -> None:
    """models/<name>/README.md: the model card (regenerated with the model, so that its numbers
    always describe the committed weights)."""
    t, v = metrics.get("test"), metrics.get("validation")
    n_feat = [len(b[1]) for b in exported.blocks]
    md = [f"# {args.name} {args.version}", "",
          "The explainable baseline classifier of mailgrip: TF-IDF over word and character "
          "n-grams with multinomial logistic regression. It sorts Dutch government e-mail into "
          "the five classes of the national pilot: " + ", ".join(f"`{l}`" for l in LABELS)
          + ". Served by the daemon as `kind = \"baseline\"` (`src/classify/baseline.rs`); "
          "set `model.dir` to this folder.", "",
          "## Intended use", "",
          "- **Fallback** when the transformer model is unavailable or too slow.",
          "- **Review aid**: for any message, `BaselineBackend::explain` lists the terms that "
          "pushed it toward a class (see `report/README.md`), for the archivists' review "
          "screen.",
          "- Not a replacement for human judgement on the classes that protect privacy "
          "(`prive`, `personeelsvertrouwelijk`, `partijpolitiek`): route low-confidence mail to "
          "review.", "",
          "## Data", "",
          "Trained on the mailgrip corpus (`models/corpus/`): **written examples of Dutch "
          "government e-mail, not real mail**. The messages were written to cover the classes, "
          "registers and mail shapes (replies, forwards, HTML, attachments, English and mixed "
          "language), split into train/validation/test by thread. Real mail of an organisation "
          "differs in vocabulary, names, systems and class balance; expect lower scores there "
          "and retrain on your own labelled mail before relying on it.", "",
          f"Mails used: " + ", ".join(f"{s} {len(m)}" for s, m in split.items()) + ". "
          "The model text of every mail is produced by `mailgrip extract` (layout "
          f"`{LAYOUT}`), the same code the daemon runs.", "",
          "## Model", "",
          f"- Word 1-2-grams ({n_feat[0]} terms) and char_wb "
          f"{args.char_ngrams[0]}-{args.char_ngrams[1]}-grams ({n_feat[1]} terms), lower-cased, "
          f"sublinear tf, idf, each block L2-normalised (min_df "
          f"{args.word_min_df}/{args.char_min_df}, fitted on the train split).",
          f"- Logistic regression, multinomial, C={C:g} (chosen on validation macro-F1), "
          f"class_weight={args.class_weight}.",
          f"- Temperature {temperature} fitted on validation (minimum NLL): "
          "probabilities = softmax(logits / T).",
          f"- `baseline.json` {size / 1e6:.1f} MB; feature rules `{args.features}` "
          "(see `models/training/baseline.py`).", ""]
    if t:
        md += ["## Metrics (corpus test split)", "",
               "| class | precision | recall | F1 |", "| --- | ---: | ---: | ---: |"]
        for c in LABELS:
            r = t["per_class"][c]
            md.append(f"| {c} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} |")
        md += ["", f"Macro-F1 **{t['macro_f1']:.3f}** (validation {v['macro_f1']:.3f}), "
               f"accuracy {t['accuracy']:.3f}, ECE {t['ece']:.3f}, privacy leak "
               f"{t['privacy_leak']:.1%} (n={t['n']}). Details, confusion matrix and "
               "explanation examples: `report/README.md`. These numbers are measured on "
               "written examples from the same authors as the training data; they overstate "
               "what to expect on real mail.", ""]
    md += ["## Limits", "",
           "- Bag of n-grams: no understanding of negation, irony or who wrote what; quoted "
           "history and signatures weigh as much as the new text.",
           "- Names, organisations and systems from the written corpus can act as shortcuts.",
           "- English and mixed-language mail is a minority of the training data.", "",
           "## Retrain", "",
           "On your own mail: put `.eml` files in `<corpus>/eml/` and a `<corpus>/labels.csv` "
           "with columns `file,label,thread,split` (`file` like `eml/x.eml`, `split` one of "
           "train/validation/test, split by thread), then:", "", "```",
           "python3 -m venv models/training/.venv-baseline",
           "models/training/.venv-baseline/bin/pip install -r "
           "models/training/requirements-baseline.txt",
           "cargo build --release",
           "models/training/.venv-baseline/bin/python models/training/baseline.py "
           "--corpus <corpus> --out <model-dir>", "```", "",
           "For this repository's corpus, `scripts/baseline_parity.sh` does all of that and "
           "then runs the parity test (`tests/baseline_parity.rs`), which checks that the "
           "daemon reproduces the Python probabilities (within 1e-4) and explanations of "
           "every corpus mail from `expected.jsonl`.", "",
           f"Created {created}. License: EUPL-1.2, like mailgrip.", ""]
    (out / "README.md").write_text("\n".join(md), encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
