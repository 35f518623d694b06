#!/usr/bin/env python3
"""Render the mailgrip held-out evaluation set: models/heldout/src/*.jsonl -> eml/<id>.eml + labels.csv.

Usage:
    python3 models/heldout/build_heldout.py           # (re)build eml/ and labels.csv
    python3 models/heldout/build_heldout.py --check   # validate specs and rendered files, print counts

This set is for EVALUATION ONLY. It must never be used for training, tuning or model selection
(see README.md). It reuses the corpus renderer models/corpus/build.py unchanged: build.py has no
options for source/output folders, so this script imports its functions and points its module-level
paths at this folder. The rendering is as deterministic as the corpus (everything is derived from a
SHA-256 of the spec id). The only difference in the output is labels.csv: split is always "heldout".
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from collections import Counter
from email import policy
from email.parser import BytesParser
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "corpus"))
import build  # noqa: E402  (models/corpus/build.py, not modified)

SRC = HERE / "src"
EML = HERE / "eml"
LABELS = HERE / "labels.csv"
SPLIT = "heldout"

# load_specs() reads build.SRC; point it at our source folder.
build.SRC = SRC


def labels_csv(specs: list[dict]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["file", "label", "thread", "split", "lang", "ambiguous"])
    for s in sorted(specs, key=lambda s: s["id"]):
        w.writerow([f"eml/{s['id']}.eml", s["label"], s["thread"], SPLIT, s["lang"],
                    "true" if s.get("ambiguous") else "false"])
    return buf.getvalue().encode("utf-8")


def do_build() -> int:
    specs, problems, _ = build.load_specs()
    EML.mkdir(exist_ok=True)
    outputs, _ = build.render_all(specs)
    changed = sum(build.write_if_changed(EML / f"{sid}.eml", data) for sid, data in outputs.items())
    stale = [p for p in EML.glob("*.eml") if p.stem not in outputs]
    for p in stale:
        p.unlink()
    for p in EML.iterdir():
        if p.name.endswith(".tmp"):
            p.unlink()
    build.write_if_changed(LABELS, labels_csv(specs))
    print(f"rendered {len(outputs)} mails ({changed} changed, {len(stale)} stale removed) -> {EML}")
    if problems:
        print(f"{len(problems)} bad spec line(s) skipped:", file=sys.stderr)
        for p in problems:
            print("  " + p, file=sys.stderr)
        return 1
    return 0


def do_check() -> int:
    specs, problems, warnings = build.load_specs()
    problems = list(problems)
    outputs, infos = build.render_all(specs)
    parser = BytesParser(policy=policy.default)
    for s in specs:
        sid = s["id"]
        path = EML / f"{sid}.eml"
        if not path.exists():
            problems.append(f"{sid}: missing .eml")
            continue
        data = path.read_bytes()
        if data != outputs[sid]:
            problems.append(f"{sid}: .eml differs from a fresh render (run build_heldout.py)")
        msg = parser.parsebytes(data)
        if msg.defects or any(p.defects for p in msg.walk()):
            problems.append(f"{sid}: parser defects")
        if build.norm_ws(str(msg.get("Subject", ""))) != build.norm_ws(s.get("subject", "")):
            problems.append(f"{sid}: subject round-trip mismatch")
        names = [p.get_filename() for p in msg.iter_attachments()]
        names = [n for n in names if n != "invite.ics" or "invite.ics" in (s.get("attachments") or [])]
        if names != list(s.get("attachments") or []):
            problems.append(f"{sid}: attachment names {names} != {s.get('attachments')}")
        for n in build.bsn_like(s["body"] + " " + (s.get("subject") or "")):
            warnings.append(f"{sid}: nine-digit number {n} passes the BSN 11-test")
    stale = sorted({p.stem for p in EML.glob("*.eml")} - set(outputs)) if EML.exists() else []
    if stale:
        problems.append(f"{len(stale)} stale .eml file(s), e.g. {stale[:3]}")
    if not LABELS.exists() or LABELS.read_bytes() != labels_csv(specs):
        problems.append("labels.csv missing or out of date")
    _, _, by_thread = build.thread_maps(specs)
    for t, lst in sorted(by_thread.items()):
        if len({x["label"] for x in lst}) > 1 and not any(x.get("ambiguous") for x in lst):
            warnings.append(f"thread {t}: mixed labels without an ambiguous mark")

    cl = Counter((s["label"], s["lang"]) for s in specs)
    ca = Counter(s["label"] for s in specs if s.get("ambiguous"))
    print(f"{len(specs)} specs, {len(by_thread)} threads, {sum(ca.values())} ambiguous\n")
    print("class".ljust(26) + "".join(c.rjust(8) for c in build.LANG_SET) + "total".rjust(8) + "ambig".rjust(8))
    for lab in build.LABEL_SET:
        vals = [cl[(lab, g)] for g in build.LANG_SET]
        print(lab.ljust(26) + "".join(str(v).rjust(8) for v in vals) + str(sum(vals)).rjust(8) + str(ca[lab]).rjust(8))
    print("\nshapes:  " + ", ".join(f"{k} {v}" for k, v in sorted(Counter(i["shape"] for i in infos.values()).items())))
    print("mailers: " + ", ".join(f"{k} {v}" for k, v in sorted(Counter(i["mailer"] for i in infos.values()).items())))
    for w in warnings:
        print("warning: " + w)
    if problems:
        print(f"\n{len(problems)} PROBLEM(S):")
        for p in problems:
            print("  " + p)
        return 1
    print("\ncheck OK")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true")
    return do_check() if ap.parse_args().check else do_build()


if __name__ == "__main__":
    sys.exit(main())
