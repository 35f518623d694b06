#!/usr/bin/env python3
"""Evaluate a mailgrip model directory on a corpus split; write <model>/report/README.md + PNGs.

  python evaluate.py --model ../mailgrip-e5-nl --corpus ../corpus [--split test] [--texts texts.jsonl]

Probabilities come from the model directory exactly as the daemon computes them: Python
onnxruntime on prefix + text (tokenized with truncation at max_tokens), softmax(logits / T).

Report
  - per-class precision / recall / F1, macro-F1, accuracy, confusion matrix
  - calibration: reliability diagram (top-label confidence, 10 bins) and ECE
  - cost-weighted error under the default cost matrix below
  - threshold sweep: privacy leak against review workload
  - throughput of Python onnxruntime (one mail at a time, as the daemon's worst case)

Default cost matrix (rows: true class, columns: predicted class)
  a private-class mail (prive, personeelsvertrouwelijk, partijpolitiek) archived as
  functioneel: 10  (AVG: personal data retained in the government archive)
  a functioneel mail not recognised as functioneel: 5  (Archiefwet: a record is lost)
  niet-functioneel archived as functioneel: 1  (archive clutter)
  any other confusion: 1;  correct: 0
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import tomllib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (LABELS, PRIVATE, REPO, Mail, encode, extract_texts, find_mailgrip, load_corpus,  # noqa: E402
                    load_tokenizer, onnx_logits, ort_session, pad_id_of, read_jsonl, softmax)

F = LABELS.index("functioneel")
PRIV = [LABELS.index(c) for c in PRIVATE]


def cost_matrix() -> np.ndarray:
    k = len(LABELS)
    c = np.ones((k, k)) - np.eye(k)
    for p in PRIV:
        c[p, F] = 10.0
    for j in range(k):
        if j != F:
            c[F, j] = 5.0
    c[LABELS.index("niet-functioneel"), F] = 1.0
    return c


def per_class(y: np.ndarray, pred: np.ndarray) -> list[dict]:
    rows = []
    for c, name in enumerate(LABELS):
        tp = int(((pred == c) & (y == c)).sum())
        fp = int(((pred == c) & (y != c)).sum())
        fn = int(((pred != c) & (y == c)).sum())
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        f = 2 * p * r / (p + r) if p + r else 0.0
        rows.append(dict(label=name, precision=p, recall=r, f1=f, support=int((y == c).sum())))
    return rows


def ece(probs: np.ndarray, y: np.ndarray, bins: int = 10) -> tuple[float, list[dict]]:
    conf = probs.max(1)
    pred = probs.argmax(1)
    edges = np.linspace(0, 1, bins + 1)
    total, table = 0.0, []
    for i in range(bins):
        m = (conf > edges[i]) & (conf <= edges[i + 1]) if i else (conf >= 0) & (conf <= edges[1])
        if m.sum() == 0:
            table.append(dict(lo=edges[i], hi=edges[i + 1], n=0, conf=None, acc=None))
            continue
        a, c = float((pred[m] == y[m]).mean()), float(conf[m].mean())
        total += m.mean() * abs(a - c)
        table.append(dict(lo=edges[i], hi=edges[i + 1], n=int(m.sum()), conf=c, acc=a))
    return float(total), table


def sweep(probs: np.ndarray, y: np.ndarray) -> list[dict]:
    """Auto-archive a mail as functioneel only when it is predicted functioneel AND
    p(functioneel) >= t; a predicted-functioneel mail below t goes to human review.
    leak = private-class mails auto-archived as functioneel / private-class mails;
    workload = mails sent to review / all mails; lost = functioneel mails neither archived nor
    reviewed (predicted another class) / functioneel mails."""
    pred = probs.argmax(1)
    pf = probs[:, F]
    priv = np.isin(y, PRIV)
    out = []
    for t in np.round(np.concatenate([[0.0], np.linspace(0.5, 0.99, 50), [0.995, 0.999]]), 4):
        auto = (pred == F) & (pf >= t)
        review = (pred == F) & (pf < t)
        out.append(dict(threshold=float(t),
                        leak=float(auto[priv].mean()) if priv.any() else 0.0,
                        workload=float(review.mean()),
                        lost=float((pred[y == F] != F).mean()) if (y == F).any() else 0.0,
                        archived_functioneel=float(auto[y == F].mean()) if (y == F).any() else 0.0))
    return out


def throughput(model_dir: Path, seqs: list[list[int]], pad_id: int, threads: int) -> dict:
    sess = ort_session(model_dir / "model.onnx", threads)
    sample = seqs[:200]
    onnx_logits(sess, sample[:5], pad_id, 1)  # warm-up
    t0 = time.perf_counter()
    onnx_logits(sess, sample, pad_id, 1)
    single = len(sample) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    onnx_logits(sess, sample, pad_id, 8)
    batched = len(sample) / (time.perf_counter() - t0)
    return dict(mails=len(sample), mean_tokens=float(np.mean([len(s) for s in sample])),
                single_per_s=single, batch8_per_s=batched, threads=threads)


def plots(out: Path, cm: np.ndarray, rel: list[dict], sw: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    short = ["functioneel", "prive", "niet-funct.", "pers.vertr.", "partijpol."]
    fig, ax = plt.subplots(figsize=(6.2, 5.2))
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(LABELS)):
        for j in range(len(LABELS)):
            ax.text(j, i, str(int(cm[i, j])), ha="center", va="center",
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(LABELS)), short, rotation=30, ha="right")
    ax.set_yticks(range(len(LABELS)), short)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix (counts; colour = row share)")
    fig.tight_layout()
    fig.savefig(out / "confusion.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.2, 5.2))
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    pts = [(r["conf"], r["acc"], r["n"]) for r in rel if r["n"]]
    ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label="model")
    for c, a, n in pts:
        ax.annotate(str(n), (c, a), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top-label probability)")
    ax.set_ylabel("accuracy")
    ax.set_title("Reliability diagram (n per bin)")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(out / "reliability.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.2, 4.6))
    ax.plot([s["workload"] * 100 for s in sw], [s["leak"] * 100 for s in sw], "o-", ms=3)
    for s in sw:
        if s["threshold"] in (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99):
            ax.annotate(f"t={s['threshold']:g}", (s["workload"] * 100, s["leak"] * 100),
                        textcoords="offset points", xytext=(5, 3), fontsize=8)
    ax.axhline(2.0, color="red", ls=":", label="2 % leak target")
    ax.set_xlabel("review workload (% of all mail sent to a person)")
    ax.set_ylabel("privacy leak (% of private-class mail archived)")
    ax.set_title("Archiefwet vs AVG: threshold on p(functioneel)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "leak_vs_workload.png", dpi=110)
    plt.close(fig)


def daemon_probs(model_dir: Path, corpus: Path, sel: list[Mail], mailgrip: str | None) -> np.ndarray:
    """Probabilities from `mailgrip classify` itself: any model kind (baseline, cascade) exactly
    as the daemon serves it."""
    import os
    import subprocess
    exe = find_mailgrip(mailgrip).resolve()
    env = dict(os.environ, MAILGRIP__MODEL__DIR=str(Path(model_dir).resolve()))
    files = [str((corpus / m.file).resolve()) for m in sel]
    res = subprocess.run([str(exe), "classify", "--format", "jsonl", *files], env=env, cwd=REPO,
                         capture_output=True, check=True)
    by_file = {}
    for line in res.stdout.decode("utf-8").splitlines():
        d = json.loads(line)
        by_file[str(Path(d["file"]).resolve())] = [d["scores"][c] for c in LABELS]
    return np.array([by_file[f] for f in files], dtype=np.float64)


def run(model_dir: Path, mails: list[Mail], split: str = "test", threads: int = 2,
        out: Path | None = None, title: str | None = None, corpus: Path | None = None,
        mailgrip: str | None = None) -> dict:
    model_dir = Path(model_dir)
    out = Path(out or model_dir / "report")
    out.mkdir(parents=True, exist_ok=True)
    man = tomllib.loads((model_dir / "manifest.toml").read_text(encoding="utf-8"))
    sel = [m for m in mails if m.split == split] if split != "all" else list(mails)
    if not sel:
        raise SystemExit(f"no mails in split {split!r}")
    if man["kind"] == "onnx":
        tok = load_tokenizer(model_dir / man["onnx"]["tokenizer"], man["max_tokens"])
        pad = man.get("onnx", {}).get("pad_id", pad_id_of(tok))
        seqs = encode(tok, [m.text for m in sel], man["text"]["prefix"])
        sess = ort_session(model_dir / man["onnx"]["model"], threads)
        T = float(man["calibration"]["temperature"])
        logits = onnx_logits(sess, seqs, pad)
        probs = softmax(logits, T)
    else:
        if corpus is None:
            raise SystemExit("a non-onnx model is scored through `mailgrip classify`: pass the corpus")
        T = None
        probs = daemon_probs(model_dir, corpus, sel, mailgrip)
    y = np.array([m.label for m in sel])
    pred = probs.argmax(1)
    k = len(LABELS)
    cm = np.zeros((k, k), dtype=int)
    for a, b in zip(y, pred):
        cm[a, b] += 1
    pc = per_class(y, pred)
    mf1 = float(np.mean([r["f1"] for r in pc]))
    acc = float((pred == y).mean())
    e, rel = ece(probs, y)
    C = cost_matrix()
    cost = float(C[y, pred].mean())
    priv = np.isin(y, PRIV)
    leak = float((pred[priv] == F).mean()) if priv.any() else 0.0
    sw = sweep(probs, y)
    speed = throughput(model_dir, seqs, pad, threads) if man["kind"] == "onnx" else None
    amb = np.array([m.ambiguous for m in sel])
    sub = {}
    for name, mask in (("ambiguous", amb), ("clear", ~amb)):
        if mask.any():
            sub[name] = dict(n=int(mask.sum()), acc=float((pred[mask] == y[mask]).mean()))
    langs = sorted({m.lang for m in sel if m.lang})
    for lg in langs:
        mask = np.array([m.lang == lg for m in sel])
        sub[f"lang={lg}"] = dict(n=int(mask.sum()), acc=float((pred[mask] == y[mask]).mean()))
    plots(out, cm, rel, sw)
    metrics = dict(split=split, n=len(sel), macro_f1=mf1, accuracy=acc, ece=e, cost_per_mail=cost,
                   privacy_leak=leak, per_class=pc, confusion=cm.tolist(), subsets=sub,
                   throughput=speed, temperature=T, model=f"{man['name']}@{man['version']}")
    (out / f"metrics-{split}.json").write_text(json.dumps(metrics, indent=1), encoding="utf-8")
    with open(out / f"predictions-{split}.jsonl", "w", encoding="utf-8") as f:
        for m, p in zip(sel, probs):
            f.write(json.dumps({"file": m.file, "label": LABELS[m.label],
                                "pred": LABELS[int(p.argmax())],
                                "probs": [round(float(x), 5) for x in p]}) + "\n")

    L = []
    L.append(f"# Evaluation report: {man['name']} {man['version']}\n")
    how = (f"onnxruntime on `prefix + text`, max_tokens {man['max_tokens']}, softmax(logits / {T})"
           if T is not None else "computed by `mailgrip classify` itself (the serving code path)")
    L.append(title or f"Split **{split}** of the corpus: {len(sel)} mails (written examples, not real "
                      f"government mail). Probabilities as the daemon computes them: {how}.\n")
    L.append(f"- **macro-F1 {mf1:.3f}**, accuracy {acc:.3f}")
    L.append(f"- **privacy leak {leak:.2%}** (prive, personeelsvertrouwelijk or partijpolitiek mail "
             f"classified functioneel; argmax decision)")
    L.append(f"- ECE {e:.3f} (10 bins, top-label confidence)")
    L.append(f"- cost-weighted error {cost:.3f} per mail (cost matrix below)")
    if speed:
        L.append(f"- Python onnxruntime, {speed['threads']} threads, {speed['mean_tokens']:.0f} tokens/mail "
                 f"on average: {speed['single_per_s']:.0f} mails/s one at a time, "
                 f"{speed['batch8_per_s']:.0f} mails/s in batches of 8\n")
    else:
        L.append("- Speed: measured end to end with `cargo bench --bench load` (see the model card)\n")
    L.append("## Per class\n")
    L.append("| class | precision | recall | F1 | support |\n|---|---|---|---|---|")
    for r in pc:
        L.append(f"| {r['label']} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | {r['support']} |")
    L.append("\n## Confusion matrix\n")
    L.append("Rows: true class; columns: predicted.\n")
    L.append("| true \\ predicted | " + " | ".join(LABELS) + " |")
    L.append("|---" * (k + 1) + "|")
    for i, name in enumerate(LABELS):
        L.append(f"| {name} | " + " | ".join(str(v) for v in cm[i]) + " |")
    L.append("\n![confusion matrix](confusion.png)\n")
    if sub:
        L.append("Accuracy on subsets: " + "; ".join(f"{k} {v['acc']:.3f} (n={v['n']})" for k, v in sub.items()) + "\n")
    L.append("## Calibration\n")
    L.append((f"Temperature {T} was fitted on the validation split. " if T is not None else
              "Each stage carries its own temperature, fitted on the validation split. ") + f"ECE {e:.3f}.\n")
    L.append("| confidence bin | mails | mean confidence | accuracy |\n|---|---|---|---|")
    for r in rel:
        if r["n"]:
            L.append(f"| {r['lo']:.1f}–{r['hi']:.1f} | {r['n']} | {r['conf']:.3f} | {r['acc']:.3f} |")
    L.append("\n![reliability diagram](reliability.png)\n")
    L.append("## Cost-weighted error\n")
    L.append("Default cost matrix (rows true, columns predicted): a private-class mail archived as "
             "functioneel costs 10 (AVG: personal data kept in the archive); a functioneel mail "
             "classified as anything else costs 5 (Archiefwet: a record is lost); niet-functioneel "
             "archived as functioneel costs 1 (clutter); every other confusion costs 1.\n")
    L.append("| true \\ predicted | " + " | ".join(LABELS) + " |")
    L.append("|---" * (k + 1) + "|")
    for i, name in enumerate(LABELS):
        L.append(f"| {name} | " + " | ".join(f"{v:g}" for v in C[i]) + " |")
    L.append(f"\nMean cost per mail: **{cost:.3f}** (0 = perfect; always predicting functioneel "
             f"would cost {float(C[y, np.full_like(y, F)].mean()):.3f}).\n")
    L.append("## Privacy leak vs review workload\n")
    L.append("Policy: a mail is archived automatically as functioneel only if it is predicted "
             "functioneel **and** p(functioneel) ≥ t; predicted-functioneel mail below t goes to a "
             "person. Raising t lowers the leak (private mail archived unseen) and raises the "
             "workload. *Lost* is the share of functioneel mail predicted as another class (not "
             "affected by t).\n")
    L.append("| t | leak | review workload | functioneel archived automatically | functioneel lost |\n|---|---|---|---|---|")
    for s in sw:
        if s["threshold"] in (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99):
            L.append(f"| {s['threshold']:g} | {s['leak']:.2%} | {s['workload']:.2%} | "
                     f"{s['archived_functioneel']:.2%} | {s['lost']:.2%} |")
    L.append("\n![privacy leak vs review workload](leak_vs_workload.png)\n")
    L.append("Files: `metrics-*.json` (all numbers), `predictions-*.jsonl` (per mail), "
             "`training.json` (training run). Regenerate with "
             "`models/training/.venv/bin/python models/training/evaluate.py --model <dir> --corpus models/corpus`.\n")
    (out / "README.md").write_text("\n".join(L), encoding="utf-8")
    print(f"{split}: n={len(sel)} macro-F1 {mf1:.4f} acc {acc:.4f} leak {leak:.4f} ECE {e:.4f} "
          f"cost {cost:.3f}" + (f" speed {speed['single_per_s']:.0f}/s single, {speed['batch8_per_s']:.0f}/s batch8"
                                if speed else ""))
    return metrics


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--corpus", type=Path, required=True)
    ap.add_argument("--split", default="test", help="train | validation | test | all")
    ap.add_argument("--texts", type=Path, default=None, help="saved `mailgrip extract` output")
    ap.add_argument("--mailgrip", default=None)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    texts = read_jsonl(args.texts) if args.texts else extract_texts(args.corpus.resolve(), args.mailgrip)
    mails, skipped = load_corpus(args.corpus.resolve(), texts)
    if any(skipped.values()):
        print(f"skipped: {skipped}")
    run(args.model, mails, args.split, args.threads, args.out, corpus=args.corpus.resolve(), mailgrip=args.mailgrip)
    return 0


if __name__ == "__main__":
    sys.exit(main())
