#!/usr/bin/env python3
"""Build the tiny test model in tests/fixtures/tiny-model/ (fully offline, deterministic).

A 2-layer BERT (hidden 64) with a small WordPiece vocabulary (written below) and a randomly
initialised 5-label classification head. It exists only so that the Rust daemon and the training
pipeline can be tested without real weights: its predictions are meaningless.

Writes:
  model.onnx       torch.onnx.export(dynamo=False, opset 17), inputs input_ids/attention_mask
                   (int64 [batch, seq], dynamic), output logits (float32 [batch, 5])
  tokenizer.json   WordPiece, [CLS] ... [SEP], no padding/truncation stored
  manifest.toml    see models/MANIFEST.md
  expected.jsonl   {"text", "probs"}: softmax(logits / T) by Python onnxruntime on
                   prefix + text, tokenized with truncation at max_tokens, batch of one, no padding

Run with the training venv:
  models/training/.venv/bin/python scripts/make_tiny_model.py [--out tests/fixtures/tiny-model]
  models/training/.venv/bin/python scripts/make_tiny_model.py --hf-only DIR   # HF folder only
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

LABELS = ["functioneel", "prive", "niet-functioneel", "personeelsvertrouwelijk", "partijpolitiek"]
NAME = "tiny-test"
VERSION = "0.0.1"
MAX_TOKENS = 64
PREFIX = ""
TEMPERATURE = 1.0
SEED = 1234
CREATED = "2026-11-23T00:00:00Z"  # fixed so that the output is byte-for-byte reproducible

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

# Single characters (each also as a ##continuation) so that almost any Latin text tokenizes.
CHARS = (
    "abcdefghijklmnopqrstuvwxyz"
    "0123456789"
    "àáâäçèéêëìíîïñòóôöùúûüÿ€ß"
    ".,;:!?'\"()[]{}<>-_/\\@#$%&*+=~|^`"
)

# A short Dutch + English word list (lower case: the normalizer lowercases).
WORDS = """
de het een en van ik je jij u we wij zij ze hij is zijn was waren heb heeft hebben had dat die dit deze
niet wel ook maar of als om op in aan met voor naar bij uit over tot door na onder tegen zonder
graag dank bedankt groet groeten hartelijke vriendelijke beste geachte hallo hoi tot morgen vandaag
gisteren week maand jaar dag uur vergadering overleg afspraak agenda notulen besluit advies beleid
brief mail bericht bijlage document rapport verslag nota memo concept versie vraag vragen antwoord
gemeente provincie ministerie rijk rijksoverheid kamer tweede eerste minister staatssecretaris
wethouder burgemeester raad college directie afdeling team project subsidie vergunning aanvraag
woo verzoek besluit bezwaar beroep contract offerte factuur budget begroting planning
ziek ziekmelding verzuim re-integratie beoordeling functioneringsgesprek salaris loon sollicitatie
vertrouwenspersoon reorganisatie plaatsing ontslag verlof
partij congres kandidaat kandidatenlijst campagne fractie leden lid verkiezing verkiezingen
nieuwsbrief melding storing afwezig afwezigheid kantine lunch koffie taart uitnodiging webinar
familie vrienden verjaardag feest vakantie kinderen school sport club weekend etentje
the of and to in for on with at by from is are was were be have has had this that these those
please thanks thank you regards best dear hello hi meeting agenda minutes report policy decision
request permit grant contract invoice budget team project office holiday birthday party newsletter
campaign candidate sick leave salary review confidential personal private family friends
""".split()


def _vocab() -> list[str]:
    seen: dict[str, None] = {}
    for tok in SPECIALS:
        seen[tok] = None
    for ch in CHARS:
        seen[ch] = None
    for ch in CHARS:
        seen["##" + ch] = None
    for w in WORDS:
        seen[w] = None
        # a few common suffix pieces, so that inflections split sensibly
    for suf in ["en", "e", "s", "er", "ing", "ed", "heid", "lijk", "tje", "je", "ie", "t", "d", "n"]:
        seen["##" + suf] = None
    return list(seen)


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    vocab = {tok: i for i, tok in enumerate(_vocab())}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=True
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens(SPECIALS)  # already in the vocabulary: keeps their ids
    tok.no_padding()
    tok.no_truncation()
    return tok


def build_hf_model(out_dir: Path, hidden: int = 64, layers: int = 2, heads: int = 2,
                   intermediate: int = 128, max_positions: int = 128, seed: int = SEED):
    """Write a tiny, randomly initialised BERT folder loadable by transformers (offline)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer()
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=max_positions,
        type_vocab_size=2,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)),
        label2id={l: i for i, l in enumerate(LABELS)},
        pad_token_id=0,
        # A large init range so that logits differ clearly between texts: a parity test
        # at 1e-4 must be able to tell a tokenization or truncation error apart.
        initializer_range=0.5,
    )
    cfg._attn_implementation = "eager"  # exports a plain MatMul/Softmax graph
    model = BertForSequenceClassification(cfg)
    model.save_pretrained(out_dir)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]", model_max_length=max_positions,
    )
    fast.save_pretrained(out_dir)
    # save_pretrained may store padding/truncation; keep tokenizer.json clean.
    tok.save(str(out_dir / "tokenizer.json"))
    return model, tok


def export_onnx(model, path: Path, vocab_size: int):
    import torch

    class Wrapper(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):
            return self.m(input_ids=input_ids, attention_mask=attention_mask).logits

    w = Wrapper(model).eval()
    ids = torch.randint(5, vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    torch.onnx.export(
        w, (ids, mask), str(path), dynamo=False, opset_version=17,
        input_names=["input_ids", "attention_mask"], output_names=["logits"],
        dynamic_axes={"input_ids": {0: "batch", 1: "sequence"},
                      "attention_mask": {0: "batch", 1: "sequence"},
                      "logits": {0: "batch"}},
        do_constant_folding=True,
    )
    w.eval()  # the exporter may leave the module in training mode
    return w


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


TEXTS = [
    "",
    "Hoi",
    "Dank je wel!",
    "Beste collega,\n\nHierbij de notulen van het overleg van gisteren.\n\nMet vriendelijke groet,\nAnna",
    "Uitnodiging: kandidatenlijst partijcongres zaterdag",
    "Ziekmelding — ik meld mij vandaag ziek, re-integratie gesprek volgt.",
    "Verzoek op grond van de Woo: alle documenten over de subsidie aan het project.",
    "Please find attached the minutes of the meeting. Best regards, John",
    "Out of office: I am on holiday until Monday.",
    "Café, crème brûlée, één, coöperatie, ruïne, naïef, façade — €12,50 ß",
    "Verjaardag van oma zondag!! Neem je de kinderen mee? 🎂",
    "NIEUWSBRIEF Kantine: lunch & koffie vanaf 12:00 (storing koffieautomaat opgelost)",
    "Re: Re: Fw: offerte/factuur 2026-0042 <budget@gemeente.nl> [bijlage: begroting.xlsx]",
    "\t  spaties   en\ttabs \n\n\n en lege regels  ",
    "mixed: de meeting about het beleid is moved to next week, graag bevestigen",
    "Функционеел 中文 العربية — non-Latin text falls back to [UNK]",
    "1234567890 0612345678 31-12-2026 08:30",
    "Salaris en beoordeling: vertrouwelijk, alleen voor de vertrouwenspersoon.",
    ("Geachte heer, mevrouw,\n\n" + "In de vergadering van de raad is besloten het beleid over de "
     "vergunning en de subsidie aan te passen, en het college vraagt advies aan de directie over "
     "de planning en de begroting van het project voor het komende jaar. " * 12
     + "\n\nHoogachtend,\nDe burgemeester"),
    "query: this text begins with what looks like the e5 prefix",
]


def write_fixture(out: Path) -> None:
    import numpy as np
    import onnxruntime as ort

    out.mkdir(parents=True, exist_ok=True)
    hf_tmp = out / ".hf-tmp"
    model, tok = build_hf_model(hf_tmp)
    model.eval()
    for name in ("model.onnx", "model.onnx.data"):
        if (out / name).exists():
            (out / name).unlink()
    export_onnx(model, out / "model.onnx", tok.get_vocab_size())
    tok.save(str(out / "tokenizer.json"))
    for p in sorted(hf_tmp.iterdir()):
        p.unlink()
    hf_tmp.rmdir()

    files = {n: sha256(out / n) for n in ("model.onnx", "tokenizer.json")}
    manifest = f'''name = "{NAME}"
version = "{VERSION}"
kind = "onnx"
labels = [{", ".join(f'"{l}"' for l in LABELS)}]
max_tokens = {MAX_TOKENS}
created = "{CREATED}"
training_data_sha256 = "{hashlib.sha256(b"").hexdigest()}"
base_model = "none (random tiny BERT from scripts/make_tiny_model.py, seed {SEED}; for tests only)"

[text]
layout = "subject-body-v1"
prefix = "{PREFIX}"

[onnx]
model = "model.onnx"
tokenizer = "tokenizer.json"
output = "logits"

[calibration]
temperature = {TEMPERATURE:.1f}

[files]
"model.onnx" = "{files["model.onnx"]}"
"tokenizer.json" = "{files["tokenizer.json"]}"
'''
    (out / "manifest.toml").write_text(manifest, encoding="utf-8")

    # Expected probabilities, computed the way the daemon must: Python onnxruntime, one text at a
    # time, prefix + text, truncation at max_tokens, no padding.
    from tokenizers import Tokenizer

    t = Tokenizer.from_file(str(out / "tokenizer.json"))
    t.enable_truncation(MAX_TOKENS)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(out / "model.onnx"), so, providers=["CPUExecutionProvider"])
    lines = []
    for text in TEXTS:
        enc = t.encode(PREFIX + text)
        ids = np.array([enc.ids], dtype=np.int64)
        mask = np.array([enc.attention_mask], dtype=np.int64)
        (logits,) = sess.run(["logits"], {"input_ids": ids, "attention_mask": mask})
        z = logits[0].astype(np.float64) / TEMPERATURE
        p = np.exp(z - z.max())
        p /= p.sum()
        lines.append(json.dumps({"text": text, "probs": [float(x) for x in p],
                                 "n_tokens": len(enc.ids)}, ensure_ascii=False))
    (out / "expected.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    root = Path(__file__).resolve().parent.parent
    ap.add_argument("--out", type=Path, default=root / "tests" / "fixtures" / "tiny-model")
    ap.add_argument("--hf-only", type=Path, default=None,
                    help="only write a transformers folder (tiny local base model) to this path")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch

    torch.use_deterministic_algorithms(True)
    if args.hf_only:
        build_hf_model(args.hf_only)
        print(f"wrote tiny HF model to {args.hf_only}")
        return 0
    write_fixture(args.out)
    for p in sorted(args.out.iterdir()):
        print(f"{p.stat().st_size:>10}  {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
