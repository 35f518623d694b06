#!/usr/bin/env python3
"""Fine-tune a BERT-family encoder for mailgrip's five classes and write a model directory.

One command:
  python train.py --corpus ../corpus --base <HF id or local folder> --out <model dir>

What it does
  1. texts: runs `mailgrip extract --format jsonl eml` in the corpus folder (the Rust binary is
     the only thing that turns .eml into model text; --texts reuses a saved extract output) and
     joins it with labels.csv (train / validation / test splits).
  2. model: the encoder (AutoModel) + mean pooling over the attention mask + dropout + a linear
     head (--pooling cls for the first token instead). LoRA (peft) adapters on the query, key,
     value and dense layers; everything else of the encoder, embeddings included, is frozen;
     the head is trained in full.
  3. training: AdamW, linear warm-up/decay, label smoothing, length-bucketed batches with
     dynamic padding, evaluation on validation after every epoch, best epoch kept, checkpoints in
     --work (resume with --resume).
  4. merge_and_unload, export ONNX fp32 (legacy exporter, opset 17, dynamic batch/sequence),
     check it against torch, quantize int8 (quantize_dynamic after quant_pre_process
     skip_symbolic_shape=True) in several variants, compare them on validation, pick one.
  5. fit the temperature on validation logits of the chosen ONNX model; write model.onnx,
     tokenizer.json and manifest.toml (models/MANIFEST.md) to --out; evaluate on the test split
     into --out/report/ (evaluate.py).

Production recipe (hub reachable):  --base GroNLP/bert-base-dutch-cased
Shipped default (offline):          --base .cache/e5-small-pruned --prefix "query: "  (see README)
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import re
import os
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (LABELS, extract_texts, fit_temperature, load_corpus, macro_f1,  # noqa: E402
                    onnx_logits, ort_session, pad_batch, privacy_leak, read_jsonl, sha256_file,
                    softmax, training_data_sha256)

HERE = Path(__file__).resolve().parent


def log(msg: str) -> None:
    print(f"[{dt.datetime.now():%H:%M:%S}] {msg}", flush=True)


# ----------------------------------------------------------------------------- model
def build_classifier(base: str, num_labels: int, pooling: str, dropout: float, num_layers: int = 0):
    import torch
    from transformers import AutoModel

    kw = {}
    if num_layers:  # keep only the first N encoder layers (a shallower, faster model)
        kw["num_hidden_layers"] = num_layers
    if os.environ.get("HF_HUB_OFFLINE") == "1" or Path(base).is_dir():
        kw["local_files_only"] = True
    encoder = AutoModel.from_pretrained(base, attn_implementation="eager", **kw)
    if hasattr(encoder, "pooler"):
        encoder.pooler = None  # unused: we pool ourselves

    class Classifier(torch.nn.Module):
        def __init__(self, enc):
            super().__init__()
            self.encoder = enc
            self.pooling = pooling
            self.dropout = torch.nn.Dropout(dropout)
            self.head = torch.nn.Linear(enc.config.hidden_size, num_labels)

        def forward(self, input_ids, attention_mask):
            h = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            if self.pooling == "cls":
                pooled = h[:, 0]
            else:
                m = attention_mask.unsqueeze(-1).to(h.dtype)
                pooled = (h * m).sum(1) / m.sum(1).clamp(min=1.0)
            return self.head(self.dropout(pooled))

    return Classifier(encoder)


def load_tokenizer_json(base: str, dest: Path) -> Path:
    """Write the base model's tokenizer.json (no padding/truncation stored) to dest."""
    from tokenizers import Tokenizer

    src = Path(base) / "tokenizer.json"
    if src.is_file():
        tok = Tokenizer.from_file(str(src))
    else:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(base).backend_tokenizer
    tok.no_padding()
    tok.no_truncation()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(dest))
    return dest


# ----------------------------------------------------------------------------- training
def batches_by_length(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffle, sort within windows of 50 batches by length, cut into batches, shuffle batches."""
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    win = batch_size * 50
    out = []
    for s in range(0, len(idx), win):
        chunk = sorted(idx[s:s + win], key=lambda i: lengths[i])
        out += [chunk[j:j + batch_size] for j in range(0, len(chunk), batch_size)]
    rng.shuffle(out)
    return out


def torch_logits(model, seqs: list[list[int]], pad_id: int, batch_size: int = 32) -> np.ndarray:
    import torch

    model.eval()
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    out = np.zeros((len(seqs), len(LABELS)), dtype=np.float32)
    with torch.no_grad():
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            ids, mask = pad_batch([seqs[i] for i in idx], pad_id)
            out[idx] = model(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    return out


def _mask4d(enc, h, mask):
    from transformers.masking_utils import create_bidirectional_mask

    return create_bidirectional_mask(config=enc.config, inputs_embeds=h, attention_mask=mask)


def _run_layers(layers, h, m4):
    for layer in layers:
        h = layer(h, attention_mask=m4)
        if isinstance(h, tuple):
            h = h[0]
    return h


def lower_cache(enc, seqs: list[list[int]], pad_id: int, n_lower: int, batch_size: int = 16,
                cache_dir: Path | None = None):
    """Hidden states after the frozen lower layers, computed once (eval mode), one tensor per mail.
    Kept on disk in cache_dir (keyed by the weights' and token ids' hash) so that a rerun or a
    resumed run does not pay for it again."""
    import hashlib

    import torch

    path = None
    if cache_dir is not None:
        h = hashlib.sha256(json.dumps([n_lower, seqs]).encode())
        for name, t in enc.state_dict().items():
            if name.startswith("embeddings.") or any(name.startswith(f"encoder.layer.{i}.") for i in range(n_lower)):
                h.update(name.encode())
                h.update(t.detach().float().numpy().tobytes()[:4096])
        path = cache_dir / f"lower-{n_lower}-{h.hexdigest()[:16]}.pt"
        if path.exists():
            log(f"loading cached lower layers from {path.name}")
            return torch.load(path)
    enc.eval()
    out = [None] * len(seqs)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    t0 = time.time()
    with torch.no_grad():
        for s in range(0, len(order), batch_size):
            if s and s % (batch_size * 20) == 0:
                log(f"  caching lower layers: {s}/{len(order)} ({time.time() - t0:.0f} s)")
            idx = order[s:s + batch_size]
            ids, mask = pad_batch([seqs[i] for i in idx], pad_id)
            ids, mask = torch.from_numpy(ids), torch.from_numpy(mask)
            h = enc.embeddings(input_ids=ids)
            h = _run_layers(enc.encoder.layer[:n_lower], h, _mask4d(enc, h, mask))
            for j, i in enumerate(idx):
                out[i] = h[j, :len(seqs[i])].clone()
    if path is not None:
        torch.save(out, path)
    return out


def top_forward(model, enc, n_lower: int, hs: list) -> "torch.Tensor":
    """Classifier logits from cached lower-layer states: the upper layers, pooling and head."""
    import torch

    n = max(x.shape[0] for x in hs)
    h = torch.zeros(len(hs), n, hs[0].shape[1])
    mask = torch.zeros(len(hs), n, dtype=torch.long)
    for i, x in enumerate(hs):
        h[i, :x.shape[0]] = x
        mask[i, :x.shape[0]] = 1
    h = _run_layers(enc.encoder.layer[n_lower:], h, _mask4d(enc, h, mask))
    if model.pooling == "cls":
        pooled = h[:, 0]
    else:
        m = mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1.0)
    return model.head(model.dropout(pooled))


def cached_logits(model, enc, n_lower, hs, batch_size: int = 32) -> np.ndarray:
    import torch

    model.eval()
    order = sorted(range(len(hs)), key=lambda i: hs[i].shape[0])
    out = np.zeros((len(hs), len(LABELS)), dtype=np.float32)
    with torch.no_grad():
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            out[idx] = top_forward(model, enc, n_lower, [hs[i] for i in idx]).numpy()
    return out


def trainable_state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}


def train(args, model, train_seqs, train_y, val_seqs, val_y, pad_id, work: Path) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model

    enc = model.encoder  # peft injects the adapters into these very modules
    n_layers = enc.config.num_hidden_layers
    k = getattr(args, "train_layers", 0) or n_layers
    n_lower = n_layers - min(k, n_layers)
    extra = {}
    if n_lower:
        extra = dict(layers_to_transform=list(range(n_lower, n_layers)), layers_pattern="layer")
    lcfg = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                      target_modules=args.lora_targets.split(","), bias="none", **extra)
    ckpt = work / "checkpoint-last.pt"
    resumed_epoch = 0
    if args.resume and ckpt.exists():
        resumed_epoch = torch.load(ckpt, weights_only=False)["state"]["epoch"]
    need_cache = n_lower and resumed_epoch < args.epochs  # nothing left to train: no cache needed
    train_hs, val_hs = [], []
    if need_cache:
        t0 = time.time()
        train_hs = lower_cache(enc, train_seqs, pad_id, n_lower, cache_dir=work)
        val_hs = lower_cache(enc, val_seqs, pad_id, n_lower, cache_dir=work) if len(val_seqs) else []
        log(f"cached the frozen layers 0..{n_lower - 1} for {len(train_hs) + len(val_hs)} mails "
            f"in {time.time() - t0:.0f} s; training layers {n_lower}..{n_layers - 1}")
    model.encoder = get_peft_model(model.encoder, lcfg)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    log(f"trainable parameters: {n_train:,} of {n_all:,}")

    head_params = list(model.head.parameters())
    lora_params = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("head.")]
    opt = torch.optim.AdamW([{"params": lora_params, "lr": args.lr},
                             {"params": head_params, "lr": args.head_lr}], weight_decay=0.01)
    steps_per_epoch = math.ceil(len(train_seqs) / args.batch_size)
    total = args.max_steps or steps_per_epoch * args.epochs
    warm = max(1, int(total * args.warmup))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm))))

    counts = np.bincount(train_y, minlength=len(LABELS)).astype(np.float64)
    w = (counts.sum() / np.maximum(counts, 1) / len(LABELS)) ** args.class_weight_power
    loss_fn = torch.nn.CrossEntropyLoss(weight=torch.tensor(w, dtype=torch.float32),
                                        label_smoothing=args.label_smoothing)

    state = {"step": 0, "epoch": 0, "best_f1": -1.0, "best_epoch": -1, "history": []}
    if args.resume and ckpt.exists():
        c = torch.load(ckpt, weights_only=False)
        model.load_state_dict(c["trainable"], strict=False)
        opt.load_state_dict(c["opt"])
        sched.load_state_dict(c["sched"])
        state = c["state"]
        log(f"resumed from {ckpt} at epoch {state['epoch']} step {state['step']}")

    rng = random.Random(args.seed + state["epoch"])
    lengths = [len(s) for s in train_seqs]
    t0 = time.time()
    step0 = state["step"]
    done = False
    while not done and state["epoch"] < args.epochs:
        model.train()
        run_loss, nb = 0.0, 0
        for b in batches_by_length(lengths, args.batch_size, rng):
            if n_lower:
                logits = top_forward(model, enc, n_lower, [train_hs[i] for i in b])
            else:
                ids, mask = pad_batch([train_seqs[i] for i in b], pad_id)
                logits = model(torch.from_numpy(ids), torch.from_numpy(mask))
            loss = loss_fn(logits, torch.tensor(train_y[b]))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(lora_params + head_params, 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            state["step"] += 1
            run_loss += float(loss.detach())
            nb += 1
            if state["step"] % args.log_every == 0:
                el = time.time() - t0
                log(f"epoch {state['epoch']} step {state['step']}/{total} loss {run_loss / nb:.4f} "
                    f"({el / max(1, state['step'] - step0):.2f} s/step)")
            if args.max_steps and state["step"] >= args.max_steps:
                done = True
                break
        state["epoch"] += 1
        entry = {"epoch": state["epoch"], "step": state["step"], "train_loss": run_loss / max(nb, 1)}
        if len(val_seqs):
            vl = cached_logits(model, enc, n_lower, val_hs) if n_lower else torch_logits(model, val_seqs, pad_id)
            pred = vl.argmax(1)
            entry.update(val_macro_f1=macro_f1(val_y, pred), val_acc=float((pred == val_y).mean()),
                         val_leak=privacy_leak(val_y, pred))
            score = entry["val_macro_f1"]
        else:
            score = -entry["train_loss"]
        state["history"].append(entry)
        log(f"epoch {state['epoch']} done: {json.dumps(entry)}")
        if score >= state["best_f1"]:
            state["best_f1"], state["best_epoch"] = score, state["epoch"]
            torch.save(trainable_state(model), work / "best-trainable.pt")
        torch.save({"trainable": trainable_state(model), "opt": opt.state_dict(),
                    "sched": sched.state_dict(), "state": state}, ckpt)
    if args.keep == "best" and (work / "best-trainable.pt").exists():
        model.load_state_dict(torch.load(work / "best-trainable.pt"), strict=False)
        log(f"using the best epoch {state['best_epoch']} (val score {state['best_f1']:.4f})")
    model.encoder = model.encoder.merge_and_unload()
    model.eval()
    if need_cache and len(val_seqs):  # the cached path and the full model must agree
        a = cached_logits(model, model.encoder, n_lower, val_hs[:16])
        b = torch_logits(model, val_seqs[:16], pad_id)
        d = float(np.abs(a - b).max())
        log(f"cached-layer path vs full model after merge: max |diff| {d:.2e}")
        if d > 1e-3:
            raise SystemExit("layer caching does not reproduce the full model")
    return state


# ----------------------------------------------------------------------------- export
def export_onnx(model, path: Path, pad_id: int) -> None:
    import torch

    ids = torch.tensor([[0, 100, 200, 300, 2], [0, 150, 250, 2, pad_id]], dtype=torch.long).clamp(
        max=model.encoder.config.vocab_size - 1)
    mask = (torch.arange(5)[None, :] < torch.tensor([[5], [4]])).long()
    model.eval()
    torch.onnx.export(
        model, (ids, mask), str(path), dynamo=False, opset_version=17,
        input_names=["input_ids", "attention_mask"], output_names=["logits"],
        dynamic_axes={"input_ids": {0: "batch", 1: "sequence"},
                      "attention_mask": {0: "batch", 1: "sequence"}, "logits": {0: "batch"}},
        do_constant_folding=True,
    )
    model.eval()  # the exporter can leave the module in training mode (dropout)


def ffn_output_matmuls(path: Path) -> list[str]:
    import onnx

    g = onnx.load(str(path), load_external_data=False).graph
    pat = re.compile(r"layer[./_]\d+/output/dense/MatMul")
    return [n.name for n in g.node if n.op_type == "MatMul" and pat.search(n.name)
            and "attention" not in n.name]


def quantize_variants(fp32: Path, work: Path, variants: list[str]) -> dict[str, Path]:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = work / "model-pre.onnx"
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    out = {}
    ffn = ffn_output_matmuls(pre)
    layer_of = lambda n: int(re.search(r"layer[./_](\d+)/", n).group(1))
    for v in variants:
        p = work / f"model-{v}.onnx"
        kw = dict(weight_type=QuantType.QInt8)
        if v == "int8-pc":
            kw["per_channel"] = True
        if v == "int8-ffnfp32":
            kw["nodes_to_exclude"] = ffn
        m = re.fullmatch(r"int8-ffnfp32-low(\d+)", v)
        if m:  # FFN-output MatMuls of the lowest N layers stay fp32 (to fit a size limit)
            kw["nodes_to_exclude"] = [n for n in ffn if layer_of(n) < int(m.group(1))]
        quantize_dynamic(str(pre), str(p), **kw)
        out[v] = p
    return out


def ffn_low_layers_fitting(results: dict, max_mb: float, n_layers: int) -> int:
    """How many layers' FFN-output MatMuls can stay fp32 within max_mb (from the full variants;
    max_mb is what model.onnx may take, 1 MB kept free for the report)."""
    full, q = results["int8-ffnfp32"]["size_mb"], results["int8"]["size_mb"]
    per_layer = (full - q) / n_layers
    return max(0, min(n_layers - 1, int((max_mb - 1.0 - q) / per_layer)))


# ----------------------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, required=True, help="folder with labels.csv and eml/")
    ap.add_argument("--base", required=True, help="HF hub id or local folder of the base encoder")
    ap.add_argument("--out", type=Path, required=True, help="model directory to write")
    ap.add_argument("--texts", type=Path, default=None,
                    help="saved output of `mailgrip extract --format jsonl eml` (default: run it)")
    ap.add_argument("--mailgrip", default=None, help="path of the mailgrip binary")
    ap.add_argument("--work", type=Path, default=None, help="checkpoints etc. (default .cache/runs/<out name>)")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--name", default=None)
    ap.add_argument("--version", default="1.0.0")
    ap.add_argument("--base-model-desc", default=None, help="manifest base_model text")
    ap.add_argument("--prefix", default=None, help='text prefix (default: "query: " for e5 bases, else "")')
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--pooling", choices=["mean", "cls"], default="mean")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (smoke tests)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3, help="LoRA learning rate")
    ap.add_argument("--head-lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=float, default=0.06)
    ap.add_argument("--label-smoothing", type=float, default=0.05)
    ap.add_argument("--class-weight-power", type=float, default=0.5,
                    help="loss weight per class = (1/frequency)^power (0: unweighted)")
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--lora-alpha", type=int, default=32)
    ap.add_argument("--lora-dropout", type=float, default=0.1)
    ap.add_argument("--lora-targets", default="query,key,value,dense")
    ap.add_argument("--train-layers", type=int, default=4,
                    help="adapt only the top N layers; the frozen lower layers are computed once "
                         "and cached (0: all layers)")
    ap.add_argument("--num-layers", type=int, default=0,
                    help="keep only the first N encoder layers of the base (0: all)")
    ap.add_argument("--keep", choices=["best", "last"], default="best")
    ap.add_argument("--quantize", default="auto",
                    help="auto | none | int8 | int8-pc | int8-ffnfp32 (auto: compare on validation)")
    ap.add_argument("--max-size-mb", type=float, default=60.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--no-report", action="store_true")
    args = ap.parse_args()

    import torch

    torch.manual_seed(args.seed)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.set_num_threads(args.threads)
    corpus = args.corpus.resolve()
    out = args.out.resolve()
    name = args.name or out.name
    work = (args.work or HERE / ".cache" / "runs" / name).resolve()
    work.mkdir(parents=True, exist_ok=True)
    prefix = args.prefix if args.prefix is not None else ("query: " if "e5" in args.base.lower() else "")

    # 1. texts
    if args.texts:
        texts = read_jsonl(args.texts)
        log(f"texts from {args.texts}: {len(texts)}")
    else:
        texts = extract_texts(corpus, args.mailgrip, work / "texts.jsonl")
        log(f"texts from mailgrip extract: {len(texts)} (saved to {work / 'texts.jsonl'})")
    mails, skipped = load_corpus(corpus, texts)
    splits = {s: [m for m in mails if m.split == s] for s in ("train", "validation", "test")}
    log(f"mails: {len(mails)} ({ {k: len(v) for k, v in splits.items()} }); skipped {skipped}")
    if not splits["train"]:
        raise SystemExit("no training mails")

    # 2. tokenizer + model
    tok_path = load_tokenizer_json(args.base, work / "tokenizer.json")
    from common import encode, load_tokenizer, pad_id_of

    tok = load_tokenizer(tok_path, args.max_tokens)
    pad_id = pad_id_of(tok)
    enc = {s: encode(tok, [m.text for m in v], prefix) for s, v in splits.items()}
    ys = {s: np.array([m.label for m in v], dtype=np.int64) for s, v in splits.items()}
    lens = [len(x) for x in enc["train"]]
    log(f"train tokens/mail: mean {np.mean(lens):.0f}, truncated at {args.max_tokens}: "
        f"{np.mean(np.array(lens) >= args.max_tokens):.0%}")
    model = build_classifier(args.base, len(LABELS), args.pooling, args.dropout, args.num_layers)

    # 3. train
    state = train(args, model, enc["train"], ys["train"], enc["validation"], ys["validation"], pad_id, work)

    # 4. export + quantize
    fp32 = work / "model-fp32.onnx"
    export_onnx(model, fp32, pad_id)
    check = (enc["validation"] or enc["train"])[:32]
    tl = torch_logits(model, check, pad_id)
    ol = onnx_logits(ort_session(fp32, args.threads), check, pad_id)
    diff = float(np.abs(tl - ol).max())
    log(f"ONNX fp32 vs torch: max |diff| {diff:.2e} over {len(check)} mails")
    if diff > 1e-3:
        raise SystemExit("ONNX export does not reproduce torch")

    val_seqs, val_y = enc["validation"], ys["validation"]
    if not val_seqs:  # tiny runs without a validation split
        val_seqs, val_y = enc["train"], ys["train"]
    cand = {"fp32": fp32}
    q = args.quantize
    variants = ["int8", "int8-pc", "int8-ffnfp32"] if q == "auto" else ([] if q == "none" else [q])
    if variants:
        cand.update(quantize_variants(fp32, work, variants))
    ref = None
    results = {}
    for v, p in cand.items():
        lg = onnx_logits(ort_session(p, args.threads), val_seqs, pad_id)
        if ref is None:
            ref = lg
        pred = lg.argmax(1)
        results[v] = dict(path=p, logits=lg, size_mb=p.stat().st_size / 1e6,
                          val_macro_f1=macro_f1(val_y, pred), val_leak=privacy_leak(val_y, pred),
                          mean_abs_dlogit=float(np.abs(lg - ref).mean()),
                          max_abs_dlogit=float(np.abs(lg - ref).max()))
        log(f"{v:>13}: {results[v]['size_mb']:.1f} MB, val macro-F1 {results[v]['val_macro_f1']:.4f}, "
            f"leak {results[v]['val_leak']:.4f}, |dlogit| mean {results[v]['mean_abs_dlogit']:.4f} "
            f"max {results[v]['max_abs_dlogit']:.3f}")
    if q == "auto" and results["int8-ffnfp32"]["size_mb"] > args.max_size_mb - tok_path.stat().st_size / 1e6 - 1.0:
        n_low = ffn_low_layers_fitting(results, args.max_size_mb - tok_path.stat().st_size / 1e6,
                                       model.encoder.config.num_hidden_layers)
        if n_low:
            v = f"int8-ffnfp32-low{n_low}"
            variants.append(v)
            cand[v] = quantize_variants(fp32, work, [v])[v]
            lg = onnx_logits(ort_session(cand[v], args.threads), val_seqs, pad_id)
            pred = lg.argmax(1)
            results[v] = dict(path=cand[v], logits=lg, size_mb=cand[v].stat().st_size / 1e6,
                              val_macro_f1=macro_f1(val_y, pred), val_leak=privacy_leak(val_y, pred),
                              mean_abs_dlogit=float(np.abs(lg - ref).mean()),
                              max_abs_dlogit=float(np.abs(lg - ref).max()))
            log(f"{v:>13}: {results[v]['size_mb']:.1f} MB, val macro-F1 {results[v]['val_macro_f1']:.4f}, "
                f"leak {results[v]['val_leak']:.4f}, |dlogit| mean {results[v]['mean_abs_dlogit']:.4f}")
    if q == "auto":
        # the limit is for the whole model directory: model.onnx + tokenizer.json + report
        onnx_budget = args.max_size_mb - tok_path.stat().st_size / 1e6
        fitting = [v for v in variants if results[v]["size_mb"] <= onnx_budget - 1.0] or variants
        best_f1 = max(results[v]["val_macro_f1"] for v in fitting)
        # prefer the variant closest to fp32 (smallest mean |dlogit|) among those within 0.005
        # macro-F1 of the best fitting one; ties go to the smaller file
        ok = [v for v in fitting if results[v]["val_macro_f1"] >= best_f1 - 0.005]
        chosen = min(ok, key=lambda v: (round(results[v]["mean_abs_dlogit"], 3), results[v]["size_mb"]))
    else:
        chosen = q if q != "none" else "fp32"
    log(f"chosen: {chosen}")

    # 5. temperature + model directory
    T = fit_temperature(results[chosen]["logits"], val_y)
    log(f"temperature {T}")
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(results[chosen]["path"], out / "model.onnx")
    shutil.copyfile(tok_path, out / "tokenizer.json")
    files = {n: sha256_file(out / n) for n in ("model.onnx", "tokenizer.json")}
    base_desc = args.base_model_desc or args.base
    manifest = f'''name = "{name}"
version = "{args.version}"
kind = "onnx"
labels = [{", ".join(json.dumps(l) for l in LABELS)}]
max_tokens = {args.max_tokens}
created = "{dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}"
training_data_sha256 = "{training_data_sha256(corpus, mails)}"
base_model = {json.dumps(base_desc)}

[text]
layout = "subject-body-v1"
prefix = {json.dumps(prefix)}

[onnx]
model = "model.onnx"
tokenizer = "tokenizer.json"
output = "logits"

[calibration]
temperature = {T}

[files]
"model.onnx" = "{files["model.onnx"]}"
"tokenizer.json" = "{files["tokenizer.json"]}"
'''
    (out / "manifest.toml").write_text(manifest, encoding="utf-8")
    info = {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "prefix": prefix, "splits": {k: len(v) for k, v in splits.items()}, "skipped": skipped,
        "history": state["history"], "best_epoch": state["best_epoch"],
        "onnx_fp32_vs_torch_max_abs_diff": diff, "temperature": T, "chosen": chosen,
        "variants": {v: {k: x for k, x in r.items() if k not in ("path", "logits")} for v, r in results.items()},
    }
    (out / "report").mkdir(exist_ok=True)
    (out / "report" / "training.json").write_text(json.dumps(info, indent=1), encoding="utf-8")
    log(f"wrote {out}")

    if not args.no_report and splits["test"]:
        import evaluate

        evaluate.run(model_dir=out, mails=mails, split="test", threads=args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
