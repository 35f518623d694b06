#!/usr/bin/env python3
"""Render the mailgrip corpus: models/corpus/src/*.jsonl mail specs -> eml/<id>.eml + labels.csv.

Usage:
    python3 models/corpus/build.py            # (re)build eml/ and labels.csv
    python3 models/corpus/build.py --check    # validate specs, .eml files and labels.csv; print counts

Python 3.11 standard library only. The output is fully deterministic: every choice (mail client,
MIME shape, charset, transfer encoding, boundaries, Message-IDs, attachment payloads) is derived
from a SHA-256 of the spec id, never from the wall clock or an unseeded random generator, so two
runs give byte-identical files. The choice of shape never looks at the label; only the spec's own
`html_only`, `calendar` and `attachments` fields (content the writers chose) steer it.
See SPEC.md for the spec format and README.md for the corpus itself.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import csv
import datetime as dt
import hashlib
import html
import io
import json
import random
import re
import struct
import sys
import zipfile
import zlib
from email import policy
from email.parser import BytesParser
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE / "src"
EML = HERE / "eml"
LABELS = HERE / "labels.csv"

LABEL_SET = ("functioneel", "prive", "niet-functioneel", "personeelsvertrouwelijk", "partijpolitiek")
LANG_SET = ("nl", "en", "mixed")
SPLITS = ("train", "validation", "test")
CRLF = "\r\n"
UTC = dt.timezone.utc
SEED = "mailgrip-corpus-v1"
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,80}$")
ADDR_RE = re.compile(r"^\s*(.*?)\s*<\s*([^<>\s]+@[^<>\s]+)\s*>\s*$")
BARE_ADDR_RE = re.compile(r"^\s*<?([^<>\s,;]+@[^<>\s,;]+?)>?\s*$")


# --------------------------------------------------------------------------------------------
# Deterministic helpers
# --------------------------------------------------------------------------------------------

def digest(*parts: str) -> bytes:
    return hashlib.sha256("\x1f".join((SEED,) + parts).encode("utf-8")).digest()


def rng_for(*parts: str) -> random.Random:
    return random.Random(digest(*parts))


def pick(rng: random.Random, weighted: list[tuple[object, float]]):
    total = sum(w for _, w in weighted)
    x = rng.random() * total
    for value, w in weighted:
        x -= w
        if x < 0:
            return value
    return weighted[-1][0]


def hexstr(rng: random.Random, n: int, upper: bool = False) -> str:
    s = "".join(rng.choice("0123456789abcdef") for _ in range(n))
    return s.upper() if upper else s


def alnum(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789") for _ in range(n))


def uuid_from(rng: random.Random, upper: bool = False) -> str:
    h = hexstr(rng, 32, upper)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def split_for(thread: str) -> str:
    v = int.from_bytes(hashlib.sha256(thread.encode("utf-8")).digest()[:8], "big") % 100
    return "train" if v < 80 else ("validation" if v < 90 else "test")


# --------------------------------------------------------------------------------------------
# Spec loading and validation
# --------------------------------------------------------------------------------------------

def parse_addr(s: str) -> tuple[str, str] | None:
    if not isinstance(s, str) or "\n" in s or "\r" in s:
        return None
    m = ADDR_RE.match(s)
    if m:
        name = m.group(1).strip()
        if len(name) >= 2 and name[0] == name[-1] and name[0] in "\"'":
            name = name[1:-1].replace('\\"', '"')
        return name, m.group(2)
    m = BARE_ADDR_RE.match(s)
    if m:
        return "", m.group(1)
    return None


def parse_date(s) -> dt.datetime | None:
    if not isinstance(s, str):
        return None
    try:
        d = dt.datetime.fromisoformat(s.strip())
    except ValueError:
        return None
    if d.tzinfo is None:  # lenient: treat as Dutch local time (warned about by --check)
        d = d.replace(tzinfo=dt.timezone(dt.timedelta(hours=ams_offset_hours(d.replace(tzinfo=UTC)))))
    return d


def validate(obj) -> tuple[list[str], list[str]]:
    """Return (errors, warnings) for one spec object. Errors make the spec unusable."""
    errs, warns = [], []
    if not isinstance(obj, dict):
        return ["not a JSON object"], warns
    sid = obj.get("id")
    if not isinstance(sid, str) or not ID_RE.match(sid):
        errs.append(f"bad or missing id {sid!r}")
    if not isinstance(obj.get("thread"), str) or not obj["thread"].strip():
        errs.append("bad or missing thread")
    if obj.get("label") not in LABEL_SET:
        errs.append(f"bad label {obj.get('label')!r}")
    if obj.get("lang") not in LANG_SET:
        errs.append(f"bad lang {obj.get('lang')!r}")
    if parse_addr(obj.get("from")) is None:
        errs.append(f"bad from {obj.get('from')!r}")
    for key in ("to", "cc"):
        v = obj.get(key, [])
        if key == "to" and "to" not in obj:
            errs.append("missing to")
        elif isinstance(v, str):
            errs.append(f"{key} must be a list")
        elif not isinstance(v, list) or any(parse_addr(a) is None for a in v):
            errs.append(f"bad address in {key}: {v!r}")
    d = obj.get("date")
    if parse_date(d) is None:
        errs.append(f"bad date {d!r}")
    elif isinstance(d, str):
        try:
            if dt.datetime.fromisoformat(d.strip()).tzinfo is None:
                warns.append("date without UTC offset (assumed Dutch local time)")
        except ValueError:
            pass
    subj = obj.get("subject", "")
    if not isinstance(subj, str):
        errs.append("subject must be a string")
    elif "\n" in subj or "\r" in subj:
        warns.append("line break in subject (rendered as a space)")
    if not isinstance(obj.get("body"), str):
        errs.append("bad or missing body")
    att = obj.get("attachments", [])
    if not isinstance(att, list) or any(not isinstance(a, str) or not a.strip() or re.search(r"[/\\\x00-\x1f]", a)
                                        for a in att):
        errs.append(f"bad attachments {att!r}")
    for flag in ("html_only", "ambiguous"):
        if flag in obj and not isinstance(obj[flag], bool):
            errs.append(f"{flag} must be true/false")
    cal = obj.get("calendar")
    if cal is not None:
        if not isinstance(cal, dict) or not isinstance(cal.get("summary"), str) or parse_date(cal.get("start")) is None:
            errs.append(f"bad calendar {cal!r}")
        elif cal.get("end") is not None and parse_date(cal.get("end")) is None:
            errs.append(f"bad calendar end {cal.get('end')!r}")
        elif cal.get("end") is not None and parse_date(cal["end"]) < parse_date(cal["start"]):
            errs.append("calendar end before start")
    if obj.get("ambiguous") and not str(obj.get("note", "")).strip():
        warns.append("ambiguous without note")
    return errs, warns


def load_specs():
    """Read all src/*.jsonl. Returns (specs, problems, warnings); bad lines are skipped."""
    specs, problems, warnings = [], [], []
    seen: dict[str, str] = {}
    for path in sorted(SRC.glob("*.jsonl")):
        try:
            lines = path.read_bytes().decode("utf-8").split("\n")
        except UnicodeDecodeError as e:
            problems.append(f"{path.name}: not UTF-8 ({e})")
            continue
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            where = f"{path.name}:{n}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                problems.append(f"{where}: invalid JSON ({e.msg} at col {e.colno})")
                continue
            errs, warns = validate(obj)
            warnings += [f"{where} {obj.get('id') if isinstance(obj, dict) else ''}: {w}" for w in warns]
            if errs:
                problems += [f"{where} {obj.get('id') if isinstance(obj, dict) else ''}: {e}" for e in errs]
                continue
            if obj["id"] in seen:
                problems.append(f"{where}: duplicate id {obj['id']} (first at {seen[obj['id']]})")
                continue
            if not obj["id"].startswith(path.stem + "-"):
                warnings.append(f"{where}: id {obj['id']} does not start with batch prefix {path.stem}-")
            seen[obj["id"]] = where
            obj["_where"] = where
            specs.append(obj)
    return specs, problems, warnings


# --------------------------------------------------------------------------------------------
# Header encoding
# --------------------------------------------------------------------------------------------

PYCODEC = {"utf-8": "utf-8", "iso-8859-1": "latin-1", "windows-1252": "cp1252", "us-ascii": "ascii",
           "iso-8859-15": "iso8859-15"}


def representable(text: str, charset: str) -> bool:
    try:
        text.encode(PYCODEC[charset.lower()])
        return True
    except UnicodeEncodeError:
        return False


def q_word(data: bytes) -> str:
    out = []
    for c in data:
        ch = chr(c)
        if ch == " ":
            out.append("_")
        elif c < 128 and (ch.isalnum() or ch in "!*+-/"):
            out.append(ch)
        else:
            out.append("=%02X" % c)
    return "".join(out)


def encoded_words(text: str, charset: str, enc: str, maxlen: int = 70) -> list[str]:
    """Split text into RFC 2047 encoded-words of at most maxlen chars, never splitting a character."""
    codec = PYCODEC[charset.lower()]
    prefix, suffix = f"=?{charset}?{enc}?", "?="

    def enc_text(s: str) -> str:
        b = s.encode(codec)
        return q_word(b) if enc == "Q" else base64.b64encode(b).decode("ascii")

    words, cur = [], ""
    for ch in text:
        if cur and len(prefix) + len(enc_text(cur + ch)) + len(suffix) > maxlen:
            words.append(prefix + enc_text(cur) + suffix)
            cur = ch
        else:
            cur += ch
    if cur:
        words.append(prefix + enc_text(cur) + suffix)
    return words


def fold(line: str, width: int = 78) -> str:
    """Fold an unfolded 'Name: value' header by inserting CRLF before single spaces."""
    if len(line) <= width:
        return line
    out, start, last_ok = [], 0, -1
    i = line.find(": ") + 2
    while i < len(line):
        if line[i] == " " and line[i - 1] != " " and i + 1 < len(line) and line[i + 1] != " ":
            if i - start > width and last_ok > start:
                out.append(line[start:last_ok])
                start = last_ok
            last_ok = i
        i += 1
    if len(line) - start > width and last_ok > start:
        out.append(line[start:last_ok])
        start = last_ok
    out.append(line[start:])
    return CRLF.join(out)


def encode_unstructured(text: str, rng: random.Random, style: dict) -> str:
    """Encode a Subject-like value; returns the (unfolded, space-joined) header value."""
    text = re.sub(r"[\r\n]+", " ", text)
    if all(ord(c) < 128 for c in text):
        return text
    charset = style["hdr_charset"]
    if not representable(text, charset):
        charset = "utf-8"
    enc = style["hdr_enc"]
    if style["hdr_partial"]:
        # keep the leading pure-ASCII words literal, encode from the first non-ASCII word on
        tokens = text.split(" ")
        k = next(i for i, t in enumerate(tokens) if any(ord(c) > 127 for c in t))
        if k > 0:
            head = " ".join(tokens[:k])
            if "=?" not in head:
                return head + " " + " ".join(encoded_words(" ".join(tokens[k:]), charset, enc))
    return " ".join(encoded_words(text, charset, enc))


def encode_addr(spec_addr: str, rng: random.Random, style: dict) -> str:
    name, addr = parse_addr(spec_addr)
    if not name:
        return addr if style["bare_addr_plain"] else f"<{addr}>"
    if all(ord(c) < 128 for c in name):
        if re.search(r'[()<>\[\]:;@\\,."]', name) or style["quote_names"]:
            name = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return f"{name} <{addr}>"
    return encode_phrase(name, style) + f" <{addr}>"


def encode_phrase(name: str, style: dict) -> str:
    """RFC 2047 display name: plain atoms stay literal, runs of words with non-ASCII or specials become
    one encoded-word each (never two adjacent encoded-words, whose joining decoders disagree on)."""
    charset = style["hdr_charset"] if representable(name, style["hdr_charset"]) else "utf-8"
    codec = PYCODEC[charset.lower()]
    out, run = [], []

    def flush():
        if run:
            text = " ".join(run)
            b = text.encode(codec)
            body = q_word(b) if style["hdr_enc"] == "Q" else base64.b64encode(b).decode("ascii")
            out.append(f"=?{charset}?{style['hdr_enc']}?{body}?=")
            run.clear()

    for tok in name.split(" "):
        if tok and all(ord(c) < 128 for c in tok) and not re.search(r'[()<>\[\]:;@\\,."=?]', tok):
            flush()
            out.append(tok)
        else:
            run.append(tok)
    flush()
    return " ".join(out)


def header(name: str, value: str) -> str:
    return fold(f"{name}: {value}")


# --------------------------------------------------------------------------------------------
# Body encodings
# --------------------------------------------------------------------------------------------

def normalize_body(body: str) -> str:
    body = body.replace("\r\n", "\n").replace("\r", "\n")
    if not body.endswith("\n"):
        body += "\n"
    return body


def to_crlf(text: str) -> str:
    return text.replace("\n", CRLF)


def enc_qp(data: bytes) -> str:
    qp = binascii.b2a_qp(data.replace(b"\r\n", b"\n"), istext=True).decode("ascii")
    return qp.replace("\n", CRLF)


def enc_b64(data: bytes) -> str:
    return to_crlf(base64.encodebytes(data).decode("ascii"))


def flow_text(text: str, width: int = 72) -> str:
    """RFC 3676 format=flowed (DelSp=no): wrap long lines with trailing-space soft breaks."""
    out = []
    for line in text.split("\n"):
        if line != "-- ":
            line = line.rstrip(" ")
        m = re.match(r"^>+", line)
        prefix = m.group(0) if m else ""
        content = line[len(prefix):]
        pieces = []
        while len(prefix) + len(content) > width + 6:
            limit = width - len(prefix)
            cut = content.rfind(" ", 1, limit + 1)
            if cut <= 0:
                cut = content.find(" ", limit)
                if cut <= 0:
                    break
            pieces.append(content[:cut + 1])
            content = content[cut + 1:]
        pieces.append(content)
        for j, p in enumerate(pieces):
            if prefix:
                if j > 0 or (p and not p.startswith(" ")):
                    p = " " + p
            elif p.startswith(" ") or p.startswith("From ") or p.startswith(">"):
                p = " " + p  # space-stuffing
            out.append(prefix + p)
    return "\n".join(out)


class Part:
    """A MIME entity: header lines plus either an encoded body or child parts."""

    def __init__(self, headers: list[str], body: str = "", children: list["Part"] | None = None,
                 boundary: str = "", preamble: str = ""):
        self.headers, self.body, self.children = headers, body, children
        self.boundary, self.preamble = boundary, preamble


def text_part(content: str, subtype: str, plan: dict, style: dict, params: str = "") -> Part:
    """Encode text (LF line endings) as a text/<subtype> part per plan: charset + cte."""
    charset, cte = plan["charset"], plan["cte"]
    codec = PYCODEC[charset.lower()]
    cs_label = charset.upper() if style["charset_upper"] else charset
    if subtype == "plain" and cte in ("8bit", "7bit") and plan.get("flowed"):
        content = flow_text(content)
        params = "; format=flowed" + params
    data = to_crlf(content).encode(codec)
    if cte == "quoted-printable":
        body = enc_qp(data)
    elif cte == "base64":
        body = enc_b64(data)
    else:
        body = data.decode(codec)  # 7bit / 8bit: raw (re-encoded to the charset when written)
    q = '"' if style["quote_charset"] else ""
    ctype = f"text/{subtype}; charset={q}{cs_label}{q}{params}"
    if style["apple_fold"]:
        ctype = ctype.replace("; ", ";" + CRLF + "\t")
    p = Part([f"Content-Type: {ctype}", f"Content-Transfer-Encoding: {cte}"], body)
    p.codec = codec
    return p


# --------------------------------------------------------------------------------------------
# HTML renderings of a plain-text body
# --------------------------------------------------------------------------------------------

BULLET_RE = re.compile(r"^\s*([-*\u2022\u25aa]|\d+[.)])\s+")
URL_RE = re.compile(r"(https?://[^\s<>\"]+[^\s<>\".,;:!?)\]])")
HDR_LINE_RE = re.compile(r"^(Van|From|Verzonden|Sent|Aan|To|CC|Cc|Onderwerp|Subject|Datum|Date|Bijlagen|Attachments):(\s|$)")


def esc(s: str, links: bool = True) -> str:
    e = html.escape(s, quote=False)
    if links:
        e = URL_RE.sub(lambda m: f'<a href="{m.group(1)}">{m.group(1)}</a>', e)
    return e


def segments(lines: list[str]):
    """Yield ('text', [lines]) and ('quote', [lines with one '>' level removed]) runs."""
    cur, kind = [], None
    for ln in lines:
        k = "quote" if ln.startswith(">") else "text"
        if k != kind and cur:
            yield kind, cur
            cur = []
        kind = k
        if k == "quote":
            ln = ln[1:]
            if ln.startswith(" "):
                ln = ln[1:]
        cur.append(ln)
    if cur:
        yield kind, cur


def html_lines_generic(lines, line_fmt, empty, quote_open, quote_close) -> list[str]:
    out = []
    for kind, run in segments(lines):
        if kind == "quote":
            out.append(quote_open)
            out += html_lines_generic(run, line_fmt, empty, quote_open, quote_close)
            out.append(quote_close)
        else:
            out += [line_fmt(ln) if ln.strip() else empty for ln in run]
    return out


def html_outlook(text: str, charset: str, lang: str) -> str:
    lines = text.rstrip("\n").split("\n")
    body, in_hdr = [], False
    for i, ln in enumerate(lines):
        prev_blank = i == 0 or not lines[i - 1].strip() or set(lines[i - 1].strip()) <= set("_-")
        if set(ln.strip()) <= set("_") and len(ln.strip()) >= 10:
            body.append('<div class="MsoNormal" align="center" style="text-align:center"><hr size="2" width="100%" align="center"></div>')
            continue
        m = HDR_LINE_RE.match(ln)
        if m and m.group(1) in ("Van", "From") and prev_blank and not in_hdr:
            body.append('<div style="border:none;border-top:solid #E1E1E1 1.0pt;padding:3.0pt 0cm 0cm 0cm">')
            in_hdr = True
        if in_hdr and not ln.strip():
            body.append("</div>")
            in_hdr = False
        if not ln.strip():
            body.append('<p class="MsoNormal"><o:p>&nbsp;</o:p></p>')
        elif m and in_hdr:
            label = m.group(1)
            body.append(f'<p class="MsoNormal"><b>{label}:</b>{esc(ln[len(label) + 1:])}<o:p></o:p></p>')
        else:
            body.append(f'<p class="MsoNormal">{esc(ln)}<o:p></o:p></p>')
    if in_hdr:
        body.append("</div>")
    lang_attr = {"en": "EN-US"}.get(lang, "NL")
    head = (
        '<html xmlns:v="urn:schemas-microsoft-com:vml" xmlns:o="urn:schemas-microsoft-com:office:office" '
        'xmlns:w="urn:schemas-microsoft-com:office:word" xmlns:m="http://schemas.microsoft.com/office/2004/12/omml" '
        'xmlns="http://www.w3.org/TR/REC-html40">\n<head>\n'
        f'<meta http-equiv="Content-Type" content="text/html; charset={charset}">\n'
        '<meta name="Generator" content="Microsoft Word 15 (filtered medium)">\n'
        '<style><!--\n/* Font Definitions */\n@font-face\n\t{font-family:"Cambria Math";\n\tpanose-1:2 4 5 3 5 4 6 3 2 4;}\n'
        '@font-face\n\t{font-family:Aptos;}\n/* Style Definitions */\n'
        'p.MsoNormal, li.MsoNormal, div.MsoNormal\n\t{margin:0cm;\n\tfont-size:11.0pt;\n\tfont-family:"Aptos",sans-serif;\n\tmso-ligatures:standardcontextual;\n\tmso-fareast-language:EN-US;}\n'
        'a:link, span.MsoHyperlink\n\t{mso-style-priority:99;\n\tcolor:#467886;\n\ttext-decoration:underline;}\n'
        'span.E-mailStijl17\n\t{mso-style-type:personal-compose;\n\tfont-family:"Aptos",sans-serif;\n\tcolor:windowtext;}\n'
        '.MsoChpDefault\n\t{mso-style-type:export-only;\n\tfont-size:10.0pt;\n\tmso-ligatures:none;}\n'
        '@page WordSection1\n\t{size:612.0pt 792.0pt;\n\tmargin:70.85pt 70.85pt 70.85pt 70.85pt;}\n'
        'div.WordSection1\n\t{page:WordSection1;}\n--></style><!--[if gte mso 9]><xml>\n<o:shapedefaults v:ext="edit" spidmax="1026" />\n'
        '</xml><![endif]--><!--[if gte mso 9]><xml>\n<o:shapelayout v:ext="edit">\n<o:idmap v:ext="edit" data="1" />\n'
        '</o:shapelayout></xml><![endif]-->\n</head>\n'
        f'<body lang="{lang_attr}" link="#467886" vlink="#96607D" style="word-wrap:break-word">\n<div class="WordSection1">\n'
    )
    return head + "\n".join(body) + "\n</div>\n</body>\n</html>\n"


def html_gmail(text: str, charset: str, lang: str) -> str:
    lines = text.rstrip("\n").split("\n")
    inner = html_lines_generic(
        lines, lambda ln: f"<div>{esc(ln)}</div>", "<div><br></div>",
        '<blockquote class="gmail_quote" style="margin:0px 0px 0px 0.8ex;border-left:1px solid rgb(204,204,204);padding-left:1ex">',
        "</blockquote>")
    return '<div dir="ltr">' + "".join(inner) + "</div>\n"


def html_apple(text: str, charset: str, lang: str) -> str:
    lines = text.rstrip("\n").split("\n")
    inner = html_lines_generic(lines, lambda ln: f"<div>{esc(ln)}</div>", "<div><br></div>",
                               '<blockquote type="cite"><div>', "</div></blockquote>")
    return (f'<html><head><meta http-equiv="content-type" content="text/html; charset={charset}"></head>'
            '<body style="overflow-wrap: break-word; -webkit-nbsp-mode: space; line-break: after-white-space;">'
            + "".join(inner) + "</body></html>")


def paragraphs_html(lines: list[str], indent: str = "    ") -> list[str]:
    out, para = [], []

    def flush():
        if para:
            out.append(indent + "<p>" + "<br>\n".join(esc(x) for x in para) + "</p>")
            para.clear()

    for kind, run in segments(lines):
        if kind == "quote":
            flush()
            out.append(indent + '<blockquote type="cite">')
            out += paragraphs_html(run, indent + "  ")
            out.append(indent + "</blockquote>")
            continue
        for ln in run:
            if ln.strip():
                para.append(ln)
            else:
                flush()
    flush()
    return out


def html_thunderbird(text: str, charset: str, lang: str) -> str:
    lines = text.rstrip("\n").split("\n")
    return ("<!DOCTYPE html>\n<html>\n  <head>\n"
            f'    <meta http-equiv="Content-Type" content="text/html; charset={charset}">\n'
            "  </head>\n  <body>\n" + "\n".join(paragraphs_html(lines)) + "\n  </body>\n</html>\n")


def html_plain(text: str, charset: str, lang: str) -> str:
    lines = text.rstrip("\n").split("\n")
    return (f'<html>\n<head>\n<meta charset="{charset}">\n</head>\n<body style="font-family: Arial, sans-serif; font-size: 14px;">\n'
            + "\n".join(paragraphs_html(lines, "")) + "\n</body>\n</html>\n")


def html_newsletter(text: str, charset: str, lang: str, subject: str, rng: random.Random) -> str:
    """Table-based bulk-mail HTML (newsletters, vendor marketing). Text order is preserved."""
    accent = rng.choice(["#154273", "#01689b", "#007bc7", "#39870c", "#d52b1e", "#42145f", "#e17000", "#275937"])
    width = rng.choice([600, 620, 640, 680])
    lines = text.rstrip("\n").split("\n")
    first = next((i for i, ln in enumerate(lines) if ln.strip()), None)
    title_html = ""
    if first is not None and len(lines[first]) <= 90:
        title_html = (f'<tr><td style="background-color:{accent};padding:18px 28px;color:#ffffff;'
                      f'font-family:Verdana,Arial,sans-serif;font-size:20px;font-weight:bold;">{esc(lines[first])}</td></tr>\n')
        lines = lines[first + 1:]
    blocks, para = [], []

    def flush():
        if not para:
            return
        if all(BULLET_RE.match(x) for x in para):
            items = "".join('<li style="margin-bottom:6px;">' + esc(x.strip()) + "</li>" for x in para)
            blocks.append(f'<ul style="list-style:none;padding-left:8px;margin:0 0 16px 0;">{items}</ul>')
        else:
            blocks.append('<p style="margin:0 0 16px 0;">' + "<br>\n".join(esc(x) for x in para) + "</p>")
        para.clear()

    for ln in lines:
        if ln.strip():
            para.append(ln)
        else:
            flush()
    flush()
    return (
        '<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN" "http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd">\n'
        f'<html xmlns="http://www.w3.org/1999/xhtml" lang="{"en" if lang == "en" else "nl"}">\n<head>\n'
        f'<meta http-equiv="Content-Type" content="text/html; charset={charset}" />\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1.0" />\n'
        f"<title>{esc(subject, links=False)}</title>\n"
        "<style type=\"text/css\">body{margin:0;padding:0;} table{border-collapse:collapse;} "
        "a{color:" + accent + ";} @media only screen and (max-width:620px){.container{width:100% !important;}}</style>\n"
        "</head>\n"
        '<body style="margin:0;padding:0;background-color:#f2f2f2;">\n'
        '<table role="presentation" width="100%" cellpadding="0" cellspacing="0" border="0" style="background-color:#f2f2f2;">\n'
        '<tr><td align="center" style="padding:24px 8px;">\n'
        f'<table role="presentation" class="container" width="{width}" cellpadding="0" cellspacing="0" border="0" style="background-color:#ffffff;">\n'
        + title_html +
        '<tr><td style="padding:24px 28px;font-family:Verdana,Arial,sans-serif;font-size:14px;line-height:22px;color:#1a1a1a;">\n'
        + "\n".join(blocks) +
        "\n</td></tr>\n</table>\n</td></tr>\n</table>\n</body>\n</html>\n")


HTML_FLAVOUR = {"outlook": html_outlook, "gmail": html_gmail, "apple": html_apple, "iphone": html_apple,
                "thunderbird": html_thunderbird, "generic": html_plain, "bulk": html_plain}


# --------------------------------------------------------------------------------------------
# Attachment payloads (small but structurally real files)
# --------------------------------------------------------------------------------------------

CTYPES = {
    "pdf": "application/pdf",
    "docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "pptx": "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    "doc": "application/msword", "xls": "application/vnd.ms-excel", "ppt": "application/vnd.ms-powerpoint",
    "msg": "application/vnd.ms-outlook", "odt": "application/vnd.oasis.opendocument.text",
    "ods": "application/vnd.oasis.opendocument.spreadsheet", "png": "image/png", "jpg": "image/jpeg",
    "jpeg": "image/jpeg", "gif": "image/gif", "heic": "image/heic", "txt": "text/plain", "csv": "text/csv",
    "ics": "text/calendar", "vcf": "text/vcard", "zip": "application/zip", "eml": "message/rfc822",
    "html": "text/html", "htm": "text/html", "xml": "application/xml", "json": "application/json",
    "mp3": "audio/mpeg", "m4a": "audio/mp4", "wav": "audio/wav", "mp4": "video/mp4", "mov": "video/quicktime",
    "rtf": "application/rtf", "p7m": "application/pkcs7-mime", "asc": "application/pgp-signature",
}
TEXTUAL = {"txt", "csv", "ics", "vcf", "html", "htm", "xml", "json", "rtf"}
ZIP_DATE = (2025, 1, 1, 0, 0, 0)


def stem_title(name: str) -> str:
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return re.sub(r"\s+", " ", re.sub(r"[_]+", " ", stem)).strip() or "Document"


def make_zip(files: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name, data in files:
            zi = zipfile.ZipInfo(name, date_time=ZIP_DATE)
            zi.create_system = 0
            zi.external_attr = 0
            z.writestr(zi, data)
    return buf.getvalue()


def xml_esc(s: str) -> str:
    return html.escape(s, quote=True)


def make_pdf(title: str, rng: random.Random) -> bytes:
    def pdfstr(s: str) -> str:
        s = s.encode("latin-1", "replace").decode("latin-1")
        return s.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    t = pdfstr(title)
    ref = f"Kenmerk {rng.randint(2024, 2026)}-{rng.randint(100000, 999999)}"
    stream = (f"BT /F1 16 Tf 72 770 Td ({t}) Tj ET\nBT /F1 10 Tf 72 745 Td ({ref}) Tj ET\n").encode("latin-1")
    producer = rng.choice(["Microsoft\xae Word voor Microsoft 365", "Microsoft\xae Word 2016", "LibreOffice 7.6",
                           "Adobe PDF Library 23.8.53", "iText\xae 7.2.5", "macOS Versie 14.4 Quartz PDFContext"])
    objs = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"endstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        f"<< /Title ({t}) /Producer ({pdfstr(producer)}) >>".encode("latin-1"),
    ]
    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for i, o in enumerate(objs, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + o + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    for off in offsets:
        out += b"%010d 00000 n \n" % off
    out += b"trailer\n<< /Size %d /Root 1 0 R /Info 6 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref)
    return bytes(out)


def make_docx(title: str, rng: random.Random) -> bytes:
    ct = ('<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
          '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
          '<Default Extension="xml" ContentType="application/xml"/>'
          '<Override PartName="/word/document.xml" ContentType="application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/>'
          '<Override PartName="/docProps/core.xml" ContentType="application/vnd.openxmlformats-package.core-properties+xml"/></Types>')
    rels = ('<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
            '<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" Target="word/document.xml"/>'
            '<Relationship Id="rId2" Type="http://schemas.openxmlformats.org/package/2006/relationships/metadata/core-properties" Target="docProps/core.xml"/></Relationships>')
    doc = ('<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"><w:body>'
           f'<w:p><w:pPr><w:pStyle w:val="Title"/></w:pPr><w:r><w:t>{xml_esc(title)}</w:t></w:r></w:p>'
           f'<w:p><w:r><w:t xml:space="preserve">Versie 0.{rng.randint(1, 9)} - concept</w:t></w:r></w:p>'
           '<w:sectPr><w:pgSz w:w="11906" w:h="16838"/></w:sectPr></w:body></w:document>')
    core = ('<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<cp:coreProperties xmlns:cp="http://schemas.openxmlformats.org/package/2006/metadata/core-properties" '
            'xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:title>' + xml_esc(title) + '</dc:title></cp:coreProperties>')
    return make_zip([("[Content_Types].xml", ct.encode()), ("_rels/.rels", rels.encode()),
                     ("word/document.xml", doc.encode()), ("docProps/core.xml", core.encode())])


def make_xlsx(title: str, rng: random.Random) -> bytes:
    ct = ('<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
          '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
          '<Default Extension="xml" ContentType="application/xml"/>'
          '<Override PartName="/xl/workbook.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/>'
          '<Override PartName="/xl/worksheets/sheet1.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/></Types>')
    rels = ('<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
            '<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" Target="xl/workbook.xml"/></Relationships>')
    wb = ('<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<workbook xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" '
          'xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships"><sheets><sheet name="Blad1" sheetId="1" r:id="rId1"/></sheets></workbook>')
    wbrels = ('<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
              '<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/worksheet" Target="worksheets/sheet1.xml"/></Relationships>')
    rows = [f'<row r="1"><c r="A1" t="inlineStr"><is><t>{xml_esc(title)}</t></is></c></row>']
    for r in range(2, 2 + rng.randint(2, 5)):
        rows.append(f'<row r="{r}"><c r="A{r}" t="inlineStr"><is><t>Regel {r - 1}</t></is></c>'
                    f'<c r="B{r}"><v>{rng.randint(100, 250000)}</v></c></row>')
    sheet = ('<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"><sheetData>'
             + "".join(rows) + "</sheetData></worksheet>")
    return make_zip([("[Content_Types].xml", ct.encode()), ("_rels/.rels", rels.encode()), ("xl/workbook.xml", wb.encode()),
                     ("xl/_rels/workbook.xml.rels", wbrels.encode()), ("xl/worksheets/sheet1.xml", sheet.encode())])


def make_pptx(title: str, rng: random.Random) -> bytes:
    ct = ('<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
          '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
          '<Default Extension="xml" ContentType="application/xml"/>'
          '<Override PartName="/ppt/presentation.xml" ContentType="application/vnd.openxmlformats-officedocument.presentationml.presentation.main+xml"/>'
          '<Override PartName="/ppt/slides/slide1.xml" ContentType="application/vnd.openxmlformats-officedocument.presentationml.slide+xml"/></Types>')
    rels = ('<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
            '<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" Target="ppt/presentation.xml"/></Relationships>')
    pres = ('<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<p:presentation xmlns:p="http://schemas.openxmlformats.org/presentationml/2006/main" '
            'xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships"><p:sldIdLst><p:sldId id="256" r:id="rId2"/></p:sldIdLst>'
            '<p:sldSz cx="12192000" cy="6858000"/></p:presentation>')
    slide = ('<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<p:sld xmlns:p="http://schemas.openxmlformats.org/presentationml/2006/main" '
             'xmlns:a="http://schemas.openxmlformats.org/drawingml/2006/main"><p:cSld><p:spTree><p:sp><p:txBody><a:bodyPr/>'
             f'<a:p><a:r><a:t>{xml_esc(title)}</a:t></a:r></a:p></p:txBody></p:sp></p:spTree></p:cSld></p:sld>')
    return make_zip([("[Content_Types].xml", ct.encode()), ("_rels/.rels", rels.encode()),
                     ("ppt/presentation.xml", pres.encode()), ("ppt/slides/slide1.xml", slide.encode())])


def make_odf(title: str, rng: random.Random, kind: str) -> bytes:
    mt = f"application/vnd.oasis.opendocument.{kind}"
    manifest = ('<?xml version="1.0" encoding="UTF-8"?>\n<manifest:manifest xmlns:manifest="urn:oasis:names:tc:opendocument:xmlns:manifest:1.0" manifest:version="1.3">'
                f'<manifest:file-entry manifest:full-path="/" manifest:media-type="{mt}"/>'
                '<manifest:file-entry manifest:full-path="content.xml" manifest:media-type="text/xml"/></manifest:manifest>')
    content = ('<?xml version="1.0" encoding="UTF-8"?>\n<office:document-content xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0" '
               'xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0" office:version="1.3"><office:body><office:text>'
               f"<text:h>{xml_esc(title)}</text:h></office:text></office:body></office:document-content>")
    return make_zip([("mimetype", mt.encode()), ("META-INF/manifest.xml", manifest.encode()), ("content.xml", content.encode())])


def png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def make_png(rng: random.Random) -> bytes:
    w, h = rng.choice([(16, 16), (24, 16), (32, 20), (12, 12)])
    c1 = [rng.randint(0, 255) for _ in range(3)]
    c2 = [rng.randint(0, 255) for _ in range(3)]
    raw = bytearray()
    for y in range(h):
        raw.append(0)
        for x in range(w):
            raw += bytes(c1 if (x // 4 + y // 4) % 2 == 0 else c2)
    # level 0 (stored deflate blocks) keeps the bytes identical across zlib implementations
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + png_chunk(b"IDAT", zlib.compress(bytes(raw), 0)) + png_chunk(b"IEND", b""))


def make_jpeg(rng: random.Random) -> bytes:
    """A valid 16x16 mid-grey baseline JPEG with one-symbol Huffman tables."""
    seg = lambda marker, payload: b"\xff" + bytes([marker]) + struct.pack(">H", len(payload) + 2) + payload
    dqt = b"\x00" + bytes([1] * 64)
    sof = b"\x08" + struct.pack(">HH", 16, 16) + b"\x01" + b"\x01\x11\x00"
    one = bytes([1] + [0] * 15) + b"\x00"
    exif_note = f"IMG_{rng.randint(1000, 9999)}".encode()
    return (b"\xff\xd8" + seg(0xE0, b"JFIF\x00\x01\x01\x00\x00\x48\x00\x48\x00\x00")
            + seg(0xFE, exif_note) + seg(0xDB, dqt) + seg(0xC0, sof)
            + seg(0xC4, b"\x00" + one) + seg(0xC4, b"\x10" + one)
            + seg(0xDA, b"\x01\x01\x00\x00\x3f\x00") + b"\x00" + b"\xff\xd9")


GIF_1PX = (b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00!\xf9\x04\x01\x00\x00\x00\x00"
           b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;")


def ics_escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace(";", "\\;").replace(",", "\\,").replace("\r\n", "\n").replace("\n", "\\n")


def ics_fold(line: str) -> str:
    data = line.encode("utf-8")
    if len(data) <= 75:
        return line
    out, cur, limit = [], b"", 75
    for ch in line:
        b = ch.encode("utf-8")
        if len(cur) + len(b) > limit:
            out.append(cur.decode("utf-8"))
            cur, limit = b"", 74
        cur += b
    out.append(cur.decode("utf-8"))
    return (CRLF + " ").join(out)


def make_attachment_payload(name: str, spec: dict, rng: random.Random) -> bytes:
    ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    title = stem_title(name)
    if ext == "pdf":
        return make_pdf(title, rng)
    if ext == "docx":
        return make_docx(title, rng)
    if ext == "xlsx":
        return make_xlsx(title, rng)
    if ext == "pptx":
        return make_pptx(title, rng)
    if ext in ("odt", "ods"):
        return make_odf(title, rng, "text" if ext == "odt" else "spreadsheet")
    if ext == "png":
        return make_png(rng)
    if ext in ("jpg", "jpeg"):
        return make_jpeg(rng)
    if ext == "gif":
        return GIF_1PX
    if ext in ("doc", "xls", "ppt", "msg"):  # OLE compound file header + padding
        return (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(16) + b"\x3e\x00\x03\x00\xfe\xff\x09\x00"
                + bytes(rng.randrange(256) for _ in range(480)))
    if ext == "zip":
        return make_zip([(title + ".txt", (title + "\r\n").encode("utf-8"))])
    if ext == "txt":
        return (title + "\r\n" + "=" * min(len(title), 60) + "\r\n\r\n").encode("utf-8")
    if ext == "csv":
        rows = ["omschrijving;aantal;bedrag"] + [f"regel {i};{rng.randint(1, 40)};{rng.randint(10, 9999)},{rng.randint(0, 99):02d}"
                                                 for i in range(1, rng.randint(3, 6))]
        return ("\r\n".join(rows) + "\r\n").encode("utf-8")
    if ext == "vcf":
        return f"BEGIN:VCARD\r\nVERSION:3.0\r\nFN:{title}\r\nN:{title};;;;\r\nEND:VCARD\r\n".encode("utf-8")
    if ext == "ics":
        start = parse_date(spec["date"]).astimezone(UTC) + dt.timedelta(days=7)
        return (f"BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//mailgrip corpus//NL\r\nBEGIN:VEVENT\r\n"
                f"UID:{hexstr(rng, 24)}\r\nDTSTAMP:{start:%Y%m%dT%H%M%SZ}\r\nDTSTART:{start:%Y%m%dT%H%M%SZ}\r\n"
                f"SUMMARY:{ics_escape(title)}\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n").encode("utf-8")
    if ext in ("html", "htm"):
        return f"<html><head><meta charset=\"utf-8\"><title>{esc(title, False)}</title></head><body><h1>{esc(title, False)}</h1></body></html>\r\n".encode("utf-8")
    if ext in ("xml", "json"):
        return (json.dumps({"titel": title}, ensure_ascii=False) + "\r\n").encode("utf-8") if ext == "json" else \
            f'<?xml version="1.0" encoding="UTF-8"?>\r\n<document><titel>{xml_esc(title)}</titel></document>\r\n'.encode("utf-8")
    if ext == "rtf":
        return ("{\\rtf1\\ansi\\deff0 {\\fonttbl {\\f0 Calibri;}}\\f0\\fs22 " + title.encode("ascii", "replace").decode() + "\\par}\r\n").encode("ascii")
    if ext in ("mp4", "mov", "m4a", "heic"):
        brand = {"mp4": b"isom", "mov": b"qt  ", "m4a": b"M4A ", "heic": b"heic"}[ext]
        return struct.pack(">I", 24) + b"ftyp" + brand + b"\x00\x00\x02\x00" + brand + b"mp41" + \
            struct.pack(">I", 8 + 200) + b"mdat" + bytes(rng.randrange(256) for _ in range(200))
    if ext == "mp3":
        return b"ID3\x04\x00\x00\x00\x00\x00\x00" + b"\xff\xfb\x90\x64" + bytes(rng.randrange(256) for _ in range(413))
    if ext == "wav":
        n = 800
        return b"RIFF" + struct.pack("<I", 36 + n) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, 8000, 8000, 1, 8) + \
            b"data" + struct.pack("<I", n) + bytes(128 + rng.randint(-3, 3) for _ in range(n))
    return bytes(rng.randrange(256) for _ in range(rng.randint(300, 900)))


def filename_params(name: str, param: str, style: str) -> list[str]:
    """Parameter strings for a file name: plain quoted, RFC 2231 (with continuations), or RFC 2047-in-quotes."""
    ascii_name = all(ord(c) < 128 for c in name)
    if style == "plain" or (ascii_name and style == "2047"):
        return [f'{param}="' + name.replace("\\", "\\\\").replace('"', '\\"') + '"']
    if style == "2047":
        return [f'{param}="' + " ".join(encoded_words(name, "utf-8", "B", maxlen=900)) + '"']
    enc = "".join(chr(b) if (chr(b).isalnum() and b < 128) or chr(b) in "!#$&+-.^_`|~" else "%%%02X" % b
                  for b in name.encode("utf-8"))
    if len(enc) <= 60:
        return [f"{param}*=UTF-8''{enc}"]
    chunks, cur = [], ""
    i = 0
    while i < len(enc):
        step = 3 if enc[i] == "%" else 1
        if len(cur) + step > 50:
            chunks.append(cur)
            cur = ""
        cur += enc[i:i + step]
        i += step
    chunks.append(cur)
    return [f"{param}*{k}*={'UTF-8' + chr(39) * 2 if k == 0 else ''}{c}" for k, c in enumerate(chunks)]


def attachment_part(name: str, spec: dict, rng: random.Random, style: dict, mailer: str, idx: int) -> Part:
    ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    ctype = CTYPES.get(ext, "application/octet-stream")
    payload = make_attachment_payload(name, spec, rng)
    non_ascii = any(ord(c) > 127 for c in name)
    if mailer in ("outlook", "gmail"):
        fstyle = pick(rng, [("2047", 3), ("2231", 1)]) if non_ascii else pick(rng, [("plain", 9), ("2231", 1)])
    else:
        fstyle = "2231" if non_ascii else pick(rng, [("plain", 4), ("2231", 1)])
    fparams = filename_params(name, "filename", fstyle)
    nparams = filename_params(name, "name", "2047" if fstyle == "2047" else ("plain" if not non_ascii else "2047"))
    sep = ";" + CRLF + "\t"
    ct_extra = '; charset="utf-8"' if ext in TEXTUAL and ext != "ics" else ""
    if ext == "ics":
        ct_extra = '; charset="utf-8"; method=PUBLISH'
    if ctype == "message/rfc822":
        d = parse_date(spec["date"]) - dt.timedelta(days=rng.randint(1, 20), minutes=rng.randint(0, 600))
        inner = (f"From: {encode_addr(spec['from'], rng, style)}{CRLF}Date: {fmt_date(d)}{CRLF}"
                 f"Subject: {stem_title(name) if all(ord(c) < 128 for c in stem_title(name)) else ' '.join(encoded_words(stem_title(name), 'utf-8', 'B'))}{CRLF}"
                 f"Message-ID: <{hexstr(rng, 20)}@{addr_domain(spec['from'])}>{CRLF}MIME-Version: 1.0{CRLF}"
                 f"Content-Type: text/plain; charset=utf-8{CRLF}Content-Transfer-Encoding: base64{CRLF}{CRLF}"
                 + enc_b64((stem_title(name) + "\r\n").encode("utf-8")))
        hdrs = [f"Content-Type: message/rfc822", f"Content-Disposition: attachment{sep}" + sep.join(fparams)]
        return Part(hdrs, inner)
    hdrs = []
    if mailer == "outlook":
        hdrs.append(f"Content-Type: {ctype}{ct_extra}{sep}" + sep.join(nparams))
        desc = name if all(ord(c) < 128 for c in name) else " ".join(encoded_words(name, "utf-8", "B"))
        hdrs.append(fold(f"Content-Description: {desc}"))
        created = (parse_date(spec["date"]) - dt.timedelta(minutes=rng.randint(1, 9000))).astimezone(UTC)
        stamp = f"{created:%a, %d %b %Y %H:%M:%S} GMT"
        hdrs.append(f"Content-Disposition: attachment{sep}" + sep.join(fparams)
                    + f'{sep}size={len(payload)};{CRLF}\tcreation-date="{stamp}";{CRLF}\tmodification-date="{stamp}"')
        hdrs.append("Content-Transfer-Encoding: base64")
    elif mailer == "apple" or mailer == "iphone":
        hdrs.append(f"Content-Disposition: attachment{sep}" + sep.join(fparams))
        hdrs.append(f"Content-Type: {ctype}{sep}x-unix-mode=0644{sep}" + sep.join(nparams))
        hdrs.append("Content-Transfer-Encoding: base64")
    else:
        hdrs.append(f"Content-Type: {ctype}{ct_extra}; " + "; ".join(nparams))
        hdrs.append("Content-Disposition: attachment; " + "; ".join(fparams))
        hdrs.append("Content-Transfer-Encoding: base64")
        if mailer == "gmail":
            att_id = f"f_{alnum(rng, 9).lower()}{idx}"
            hdrs.append(f"Content-ID: <{att_id}>")
            hdrs.append(f"X-Attachment-Id: {att_id}")
    hdrs = [h if CRLF in h else fold(h) for h in hdrs]
    return Part(hdrs, enc_b64(payload))


# --------------------------------------------------------------------------------------------
# Calendar invites
# --------------------------------------------------------------------------------------------

def ams_offset_hours(utc: dt.datetime) -> int:
    y = utc.year

    def last_sunday(month: int) -> dt.datetime:
        d = dt.datetime(y, month, 31, 1, 0, tzinfo=UTC)
        while d.weekday() != 6:
            d -= dt.timedelta(days=1)
        return d
    return 2 if last_sunday(3) <= utc.astimezone(UTC) < last_sunday(10) else 1


def ams_local(d: dt.datetime) -> dt.datetime:
    u = d.astimezone(UTC)
    return (u + dt.timedelta(hours=ams_offset_hours(u))).replace(tzinfo=None)


VTIMEZONE = {
    "W. Europe Standard Time": ["BEGIN:VTIMEZONE", "TZID:W. Europe Standard Time", "BEGIN:STANDARD",
                                "DTSTART:16010101T030000", "TZOFFSETFROM:+0200", "TZOFFSETTO:+0100",
                                "RRULE:FREQ=YEARLY;INTERVAL=1;BYDAY=-1SU;BYMONTH=10", "END:STANDARD", "BEGIN:DAYLIGHT",
                                "DTSTART:16010101T020000", "TZOFFSETFROM:+0100", "TZOFFSETTO:+0200",
                                "RRULE:FREQ=YEARLY;INTERVAL=1;BYDAY=-1SU;BYMONTH=3", "END:DAYLIGHT", "END:VTIMEZONE"],
    "Europe/Amsterdam": ["BEGIN:VTIMEZONE", "TZID:Europe/Amsterdam", "X-LIC-LOCATION:Europe/Amsterdam", "BEGIN:DAYLIGHT",
                         "TZOFFSETFROM:+0100", "TZOFFSETTO:+0200", "TZNAME:CEST", "DTSTART:19700329T020000",
                         "RRULE:FREQ=YEARLY;BYMONTH=3;BYDAY=-1SU", "END:DAYLIGHT", "BEGIN:STANDARD", "TZOFFSETFROM:+0200",
                         "TZOFFSETTO:+0100", "TZNAME:CET", "DTSTART:19701025T030000", "RRULE:FREQ=YEARLY;BYMONTH=10;BYDAY=-1SU",
                         "END:STANDARD", "END:VTIMEZONE"],
}


def cn_param(name: str) -> str:
    if re.search(r'[;:,"]', name):
        return '"' + name.replace('"', "'") + '"'
    return name


def make_ics(spec: dict, body: str, mailer: str, rng: random.Random) -> str:
    cal = spec["calendar"]
    start = parse_date(cal["start"])
    end = parse_date(cal["end"]) if cal.get("end") else start + dt.timedelta(hours=1)
    stamp = parse_date(spec["date"]).astimezone(UTC)
    prodid, tzid = {
        "outlook": ("-//Microsoft Corporation//Outlook 16.0 MIMEDIR//EN", "W. Europe Standard Time"),
        "gmail": ("-//Google Inc//Google Calendar 70.9054//EN", None),
        "apple": ("-//Apple Inc.//macOS 14.4.1//EN", "Europe/Amsterdam"),
        "iphone": ("-//Apple Inc.//iPhone OS 17.4.1//EN", "Europe/Amsterdam"),
        "thunderbird": ("-//Mozilla.org/NONSGML Mozilla Calendar V1.1//EN", "Europe/Amsterdam"),
    }.get(mailer, ("-//Microsoft Corporation//Outlook 16.0 MIMEDIR//EN", "W. Europe Standard Time"))
    oname, oaddr = parse_addr(spec["from"])
    uid = ("040000008200E00074C5B7101A82E00800000000" + hexstr(rng, 72, True)) if mailer == "outlook" else \
        (f"{alnum(rng, 26).lower()}@google.com" if mailer == "gmail" else uuid_from(rng, upper=mailer in ("apple", "iphone")))
    L = ["BEGIN:VCALENDAR", f"PRODID:{prodid}", "VERSION:2.0", "CALSCALE:GREGORIAN", "METHOD:REQUEST"]
    if tzid:
        L += VTIMEZONE[tzid]
    L.append("BEGIN:VEVENT")
    L.append(f"ORGANIZER;CN={cn_param(oname or oaddr)}:mailto:{oaddr}")
    for key, role in (("to", "REQ-PARTICIPANT"), ("cc", "OPT-PARTICIPANT")):
        for a in spec.get(key, []) or []:
            n, ad = parse_addr(a)
            L.append(f"ATTENDEE;ROLE={role};PARTSTAT=NEEDS-ACTION;RSVP=TRUE;CN={cn_param(n or ad)}:mailto:{ad}")
    if tzid:
        L.append(f"DTSTART;TZID={tzid}:{ams_local(start):%Y%m%dT%H%M%S}")
        L.append(f"DTEND;TZID={tzid}:{ams_local(end):%Y%m%dT%H%M%S}")
    else:
        L.append(f"DTSTART:{start.astimezone(UTC):%Y%m%dT%H%M%SZ}")
        L.append(f"DTEND:{end.astimezone(UTC):%Y%m%dT%H%M%SZ}")
    L.append(f"DTSTAMP:{stamp:%Y%m%dT%H%M%SZ}")
    L.append(f"UID:{uid}")
    L.append(f"SEQUENCE:0")
    L.append(f"SUMMARY:{ics_escape(cal['summary'])}")
    if cal.get("location"):
        L.append(f"LOCATION:{ics_escape(str(cal['location']))}")
    L.append(f"DESCRIPTION:{ics_escape(body.rstrip())}")
    L += ["STATUS:CONFIRMED", "TRANSP:OPAQUE"]
    if mailer == "outlook":
        L += ["CLASS:PUBLIC", "PRIORITY:5", "X-MICROSOFT-CDO-BUSYSTATUS:BUSY", "X-MICROSOFT-CDO-IMPORTANCE:1",
              "X-MICROSOFT-DISALLOW-COUNTER:FALSE"]
    L += ["BEGIN:VALARM", "ACTION:DISPLAY", "DESCRIPTION:REMINDER", f"TRIGGER:-PT{rng.choice([10, 15, 30])}M", "END:VALARM",
          "END:VEVENT", "END:VCALENDAR"]
    return CRLF.join(ics_fold(x) for x in L) + CRLF


# --------------------------------------------------------------------------------------------
# Mail clients (styles) and the per-message plan
# --------------------------------------------------------------------------------------------

def addr_domain(a: str) -> str:
    parsed = parse_addr(a)
    return parsed[1].rsplit("@", 1)[-1].lower() if parsed else "localhost"


def fmt_date(d: dt.datetime) -> str:
    off = d.utcoffset() or dt.timedelta(0)
    mins = int(off.total_seconds() // 60)
    sign = "+" if mins >= 0 else "-"
    mins = abs(mins)
    return f"{d:%a}, {d.day} {d:%b} {d:%Y %H:%M:%S} {sign}{mins // 60:02d}{mins % 60:02d}"


def choose_mailer(spec: dict, rng: random.Random) -> str:
    if spec.get("html_only") and not spec.get("calendar"):
        return pick(rng, [("bulk", 6), ("outlook", 2), ("generic", 2)])
    dom = addr_domain(spec["from"])
    if dom in ("gmail.com", "googlemail.com"):
        return pick(rng, [("gmail", 6), ("iphone", 2), ("apple", 1), ("thunderbird", 1)])
    if dom in ("hotmail.com", "outlook.com", "live.nl", "hotmail.nl", "outlook.nl", "live.com", "msn.com"):
        return pick(rng, [("outlook", 6), ("iphone", 2), ("generic", 2)])
    if dom in ("icloud.com", "me.com", "mac.com"):
        return pick(rng, [("iphone", 5), ("apple", 4), ("generic", 1)])
    return pick(rng, [("outlook", 40), ("gmail", 15), ("apple", 8), ("iphone", 5), ("thunderbird", 10), ("generic", 22)])


def make_style(mailer: str, rng: random.Random) -> dict:
    s = {
        "hdr_charset": "utf-8", "hdr_enc": pick(rng, [("Q", 1), ("B", 1)]), "hdr_partial": False,
        "quote_names": False, "bare_addr_plain": True, "charset_upper": False, "quote_charset": False,
        "apple_fold": False,
    }
    if mailer == "outlook":
        s.update(hdr_charset=pick(rng, [("iso-8859-1", 2), ("utf-8", 1)]), hdr_enc="Q", quote_names=rng.random() < 0.5,
                 quote_charset=True, charset_upper=False)
    elif mailer == "gmail":
        s.update(hdr_charset="UTF-8", charset_upper=True, quote_charset=True, bare_addr_plain=True)
    elif mailer in ("apple", "iphone"):
        s.update(hdr_enc=pick(rng, [("Q", 2), ("B", 1)]), apple_fold=rng.random() < 0.7, hdr_partial=rng.random() < 0.3)
    elif mailer == "thunderbird":
        s.update(hdr_charset="UTF-8", hdr_enc="Q", hdr_partial=rng.random() < 0.6, charset_upper=True)
    elif mailer == "bulk":
        s.update(hdr_charset="UTF-8", charset_upper=True, quote_charset=True, hdr_enc=pick(rng, [("Q", 1), ("B", 2)]))
    else:
        s.update(hdr_partial=rng.random() < 0.2, quote_charset=rng.random() < 0.5, charset_upper=rng.random() < 0.5)
    return s


FREEMAIL = {"gmail.com", "googlemail.com", "hotmail.com", "outlook.com", "live.nl", "hotmail.nl", "outlook.nl", "live.com",
            "msn.com", "icloud.com", "me.com", "mac.com", "ziggo.nl", "kpnmail.nl", "xs4all.nl", "planet.nl", "home.nl",
            "yahoo.com", "proton.me", "protonmail.com", "telfort.nl", "hetnet.nl", "chello.nl", "upcmail.nl", "caiway.nl"}


def message_id(spec: dict, mailer: str) -> str:
    rng = rng_for("msgid", spec["id"])
    dom = addr_domain(spec["from"])
    d = parse_date(spec["date"]).astimezone(UTC)
    if mailer == "outlook":
        if rng.random() < 0.65 or dom in FREEMAIL:
            srv = f"{rng.choice(['AM0PR', 'AM9PR', 'DB9PR', 'PA4PR', 'VI1PR', 'AS8PR', 'DU2PR', 'GV1PR', 'PAXPR'])}{rng.randint(1, 9):02d}MB{rng.randint(1000, 9999)}"
            return f"<{srv}{hexstr(rng, 24, True)}@{srv}.eurprd{rng.randint(1, 9):02d}.prod.outlook.com>"
        host = rng.choice(["EXMBX", "exch", "MBX", "ex", "MAIL"]) + f"{rng.randint(1, 12):02d}"
        org = dom.split(".")[0]
        return f"<{hexstr(rng, 32, True)}@{host}.{org}.local>" if rng.random() < 0.5 else f"<{hexstr(rng, 24)}{rng.randint(1, 9)}@{host.lower()}.{dom}>"
    if mailer == "gmail":
        return "<CA" + "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+_-") for _ in range(38)) + "=" + alnum(rng, 6) + "@mail.gmail.com>"
    if mailer in ("apple", "iphone"):
        return f"<{uuid_from(rng, upper=True)}@{dom}>"
    if mailer == "thunderbird":
        return f"<{uuid_from(rng)}@{dom}>"
    if mailer == "bulk":
        return f"<{int(d.timestamp())}.{hexstr(rng, 16)}@{rng.choice(['mail', 'mta', 'nb', 'news'])}{rng.randint(1, 40)}.{dom}>"
    return rng.choice([f"<{int(d.timestamp())}.{rng.randint(10000, 99999)}@{dom}>",
                       f"<{hexstr(rng, 16)}.{hexstr(rng, 8)}@{rng.choice(['smtp', 'mail', 'mx01', 'notifications', 'app'])}.{dom}>",
                       f"<{rng.randint(100000, 999999)}.{rng.randint(10, 9999)}.{int(d.timestamp() * 1000)}@{rng.choice(['javamail', 'app01', 'srv-mail'])}.{dom}>"])


def plan_text(text: str, mailer: str, rng: random.Random) -> dict:
    """Choose charset and transfer encoding for the text/plain body (label-independent)."""
    ascii_only = all(ord(c) < 128 for c in text)
    long_lines = any(len(ln.encode("utf-8")) > 900 for ln in text.split("\n"))
    latin1 = representable(text, "iso-8859-1")
    cp1252 = representable(text, "windows-1252")
    if mailer == "outlook":
        choice = pick(rng, [("cp1252-qp", 4), ("utf8-qp", 3), ("ascii", 2 if ascii_only else 0), ("latin1-qp", 1)])
    elif mailer == "gmail":
        choice = pick(rng, [("utf8-qp", 5), ("utf8-b64", 2), ("ascii", 2 if ascii_only else 0)])
    elif mailer in ("apple", "iphone"):
        choice = pick(rng, [("utf8-qp", 5), ("ascii", 2 if ascii_only else 0), ("latin1-qp", 1)])
    elif mailer == "thunderbird":
        choice = pick(rng, [("utf8-flowed", 6), ("utf8-qp", 1), ("latin1-8bit", 1)])
    else:
        choice = pick(rng, [("utf8-qp", 3), ("utf8-8bit", 3), ("utf8-b64", 3), ("latin1-8bit", 2), ("cp1252-qp", 1),
                            ("ascii", 2 if ascii_only else 0)])
    if choice == "ascii" and not ascii_only:
        choice = "utf8-qp"
    if choice.startswith("latin1") and not latin1:
        choice = "cp1252-qp" if cp1252 else "utf8-qp"
    if choice.startswith("cp1252") and not cp1252:
        choice = "utf8-qp"
    if choice.startswith("cp1252") and latin1 and not ascii_only and rng.random() < 0.3:
        choice = "latin1-qp"
    cs, cte = {
        "ascii": ("us-ascii", "7bit"), "utf8-qp": ("utf-8", "quoted-printable"), "utf8-b64": ("utf-8", "base64"),
        "utf8-8bit": ("utf-8", "8bit"), "utf8-flowed": ("utf-8", "8bit"), "latin1-qp": ("iso-8859-1", "quoted-printable"),
        "latin1-8bit": ("iso-8859-1", "8bit"), "cp1252-qp": ("windows-1252", "quoted-printable"),
    }[choice]
    flowed = choice in ("utf8-flowed",) or (cte in ("8bit", "7bit") and (long_lines or mailer == "thunderbird"))
    if choice == "ascii" and long_lines:
        cte = "7bit"
    if cte == "8bit" and ascii_only:
        cte = "7bit"
    return {"charset": cs, "cte": cte, "flowed": flowed, "name": choice}


def shape_name(spec: dict, alt: bool) -> str:
    if spec.get("calendar"):
        base = "calendar"
    elif spec.get("html_only"):
        base = "html-only"
    elif alt:
        base = "alternative"
    else:
        base = "plain"
    return base + ("+attachments" if spec.get("attachments") else "")


def render(spec: dict, msgids: dict[str, str], thread_prev: dict[str, list[str]], thread_pos: dict[str, int]):
    """Return (eml_bytes, info) for one spec."""
    sid = spec["id"]
    rng = rng_for("render", sid)
    mailer = choose_mailer(spec, rng)
    style = make_style(mailer, rng)
    body = normalize_body(spec["body"])
    subject = spec.get("subject", "") or ""
    date = parse_date(spec["date"])
    lang = spec["lang"]
    attachments = spec.get("attachments", []) or []
    calendar = spec.get("calendar")

    # ---- body structure
    alt = False
    plan = plan_text(body, mailer, rng)
    html_cs = plan["charset"] if plan["charset"] != "us-ascii" else ("us-ascii" if mailer == "outlook" else "utf-8")
    html_cte = pick(rng, [("quoted-printable", 4), ("base64", 1)])
    if mailer == "outlook":
        html_cte = "quoted-printable"
    html_plan = {"charset": html_cs, "cte": html_cte}

    def html_for(text: str) -> str:
        return HTML_FLAVOUR[mailer](text, html_cs, lang)

    if calendar:
        parts = [text_part(body, "plain", plan, style)]
        if mailer in ("outlook", "gmail") or rng.random() < 0.5:
            parts.append(text_part(html_for(body), "html", html_plan, style))
        ics = make_ics(spec, body, mailer, rng)
        ics_cte = "base64" if mailer == "outlook" else pick(rng, [("7bit", 1), ("quoted-printable", 1), ("base64", 1)])
        if ics_cte == "7bit" and any(ord(c) > 127 for c in ics):
            ics_cte = "8bit"
        q = '"' if style["quote_charset"] else ""
        cs = "UTF-8" if style["charset_upper"] else "utf-8"
        ics_body = {"base64": lambda: enc_b64(ics.encode("utf-8")), "quoted-printable": lambda: enc_qp(ics.encode("utf-8")),
                    "7bit": lambda: ics, "8bit": lambda: ics}[ics_cte]()
        parts.append(Part([f"Content-Type: text/calendar; charset={q}{cs}{q}; method=REQUEST",
                           f"Content-Transfer-Encoding: {ics_cte}"], ics_body))
        main = Part([], children=parts)
        main.kind = "alternative"
        alt = True
        if mailer == "gmail":
            attachments_extra = [Part(['Content-Type: application/ics; name="invite.ics"',
                                       'Content-Disposition: attachment; filename="invite.ics"',
                                       "Content-Transfer-Encoding: base64"], enc_b64(ics.encode("utf-8")))]
        else:
            attachments_extra = []
    elif spec.get("html_only"):
        hcs = "utf-8" if not representable(body + subject, "windows-1252") or mailer == "bulk" else pick(rng, [("utf-8", 2), ("windows-1252", 1)])
        if mailer == "bulk":
            h = html_newsletter(body, hcs, lang, subject, rng)
        elif mailer == "outlook":
            h = html_outlook(body, hcs, lang)
        else:
            h = html_newsletter(body, hcs, lang, subject, rng) if rng.random() < 0.6 else html_plain(body, hcs, lang)
        main = text_part(h, "html", {"charset": hcs, "cte": pick(rng, [("quoted-printable", 3), ("base64", 1)])}, style)
        main.kind = "leaf"
        attachments_extra = []
    else:
        p_alt = {"outlook": 0.8, "gmail": 0.9, "apple": 0.5, "iphone": 0.4, "thunderbird": 0.25, "generic": 0.2}[mailer]
        alt = rng.random() < p_alt
        if alt:
            main = Part([], children=[text_part(body, "plain", plan, style), text_part(html_for(body), "html", html_plan, style)])
            main.kind = "alternative"
        else:
            main = text_part(body, "plain", plan, style)
            main.kind = "leaf"
        attachments_extra = []

    # ---- boundaries
    def boundary(kind: str, n: int) -> str:
        if mailer == "outlook":
            return f"_{n:03d}_{thread_token}_"
        if mailer == "gmail":
            return "000000000000" + hexstr(rng, 16)
        if mailer in ("apple", "iphone"):
            return f"Apple-Mail={uuid_from(rng, upper=True)}" if mailer == "apple" else f"Apple-Mail-{uuid_from(rng, upper=True)}"
        if mailer == "thunderbird":
            return "------------" + alnum(rng, 24)
        if mailer == "bulk":
            return f"_----{alnum(rng, 22)}===_{kind[:2].upper()}/{rng.randint(10, 99)}"
        return rng.choice([f"===============" + "".join(rng.choice("0123456789") for _ in range(19)) + "==",
                           f"----=_Part_{rng.randint(1000, 99999)}_{rng.randint(100000000, 999999999)}.{int(date.timestamp() * 1000)}",
                           f"b1_{hexstr(rng, 32)}"])

    thread_token = hexstr(rng, 8, True) + "PR" + hexstr(rng, 2) + "MB" + hexstr(rng, 20, True) + "prod"

    att_parts = [attachment_part(a, spec, rng_for("att", sid, str(i), a), style, mailer, i) for i, a in enumerate(attachments)]
    att_parts += attachments_extra
    preamble = "This is a multi-part message in MIME format." if mailer in ("thunderbird", "generic") and rng.random() < 0.7 else ""
    if main.kind == "alternative":
        main.boundary = boundary("alternative", 0)
        main.headers = [f'Content-Type: multipart/alternative;{CRLF}\tboundary="{main.boundary}"']
        if mailer == "gmail":
            main.headers = [f'Content-Type: multipart/alternative; boundary="{main.boundary}"']
    if att_parts:
        top = Part([], children=[main] + att_parts, boundary=boundary("mixed", 4), preamble=preamble)
        top.headers = [f'Content-Type: multipart/mixed;{CRLF}\tboundary="{top.boundary}"']
        if mailer == "gmail":
            top.headers = [f'Content-Type: multipart/mixed; boundary="{top.boundary}"']
    else:
        top = main
        if main.kind == "alternative":
            main.preamble = preamble

    # ---- top-level headers
    frm = encode_addr(spec["from"], rng, style)
    to = ", ".join(encode_addr(a, rng, style) for a in spec.get("to", []) or []) or "undisclosed-recipients:;"
    cc = ", ".join(encode_addr(a, rng, style) for a in spec.get("cc", []) or [])
    subj_enc = encode_unstructured(subject, rng, style)
    mid = msgids[sid]
    prev = thread_prev.get(sid, [])
    refs = " ".join(msgids[p] for p in prev[-8:])
    irt = msgids[prev[-1]] if prev else ""
    hdate = date
    if mailer == "outlook" and rng.random() < 0.5:
        hdate = date.astimezone(UTC)
    H: dict[str, str] = {}
    H["From"] = frm
    H["To"] = to
    if cc:
        H["Cc"] = cc
    H["Subject"] = subj_enc
    H["Date"] = fmt_date(hdate)
    H["Message-ID"] = mid
    if irt:
        H["In-Reply-To"] = irt
        H["References"] = refs
    content_lang = {"en": rng.choice(["en-US", "en-GB"]), "nl": "nl-NL", "mixed": "nl-NL"}[lang]
    order: list[str]
    extra: list[tuple[str, str]] = []
    mime_version = "1.0"
    if mailer == "outlook":
        topic = re.sub(r"^\s*((re|fw|fwd|antw|doorst|wg|aw)\s*:\s*)+", "", subject, flags=re.I)
        ti_root = digest("thread-index", spec["thread"])[:22]
        ti = ti_root + digest("thread-index-child", sid)[:5] * min(thread_pos.get(sid, 0), 6)
        extra = [("Thread-Topic", encode_unstructured(topic, rng, style)), ("Thread-Index", base64.b64encode(ti).decode())]
        if rng.random() < 0.6:
            extra.append(("X-Mailer", "Microsoft Outlook 16.0"))
        extra += [("Accept-Language", f"{content_lang}, {'en-US' if content_lang != 'en-US' else 'nl-NL'}"),
                  ("Content-Language", content_lang),
                  ("X-MS-Has-Attach", "yes" if attachments else ""), ("X-MS-TNEF-Correlator", "")]
        order = ["From", "To", "Cc", "Subject", "Thread-Topic", "Thread-Index", "Date", "Message-ID", "References",
                 "In-Reply-To", "Accept-Language", "Content-Language", "X-MS-Has-Attach", "X-MS-TNEF-Correlator", "X-Mailer",
                 "MIME-Version"]
    elif mailer == "gmail":
        order = ["MIME-Version", "References", "In-Reply-To", "From", "Date", "Message-ID", "Subject", "To", "Cc"]
    elif mailer == "apple":
        build_no = rng.choice(["3774.500.171.1.1", "3776.700.51", "3731.700.6", "3826.300.87.4.3"])
        extra = [("X-Mailer", f"Apple Mail (2.{build_no})")]
        mime_version = f"1.0 (Mac OS X Mail 16.0 \\({build_no}\\))"
        order = ["From", "MIME-Version", "Subject", "Date", "References", "Cc", "To", "In-Reply-To", "Message-ID", "X-Mailer"]
    elif mailer == "iphone":
        extra = [("X-Mailer", f"iPhone Mail ({rng.choice(['21E236', '21F90', '22B83', '22D72', '20H307'])})")]
        mime_version = "1.0 (1.0)"
        order = ["From", "MIME-Version", "Subject", "Date", "Message-ID", "References", "Cc", "In-Reply-To", "To", "X-Mailer"]
    elif mailer == "thunderbird":
        ua = rng.choice(["Mozilla Thunderbird", "Mozilla Thunderbird",
                         "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:115.0) Gecko/20100101 Thunderbird/115.8.1",
                         "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Thunderbird/128.3.0"])
        extra = [("User-Agent", ua), ("Content-Language", content_lang[:2] if rng.random() < 0.5 else content_lang)]
        order = ["Message-ID", "Date", "MIME-Version", "User-Agent", "Subject", "Content-Language", "To", "Cc", "References",
                 "From", "In-Reply-To"]
    elif mailer == "bulk":
        tool = rng.choice(["Tripolis Dialogue", "Laposta", f"Mailchimp Mailer - **CID{hexstr(rng, 10)}**", "Flexmail",
                           "Copernica Marketing Software", "Spotler Mail+"])
        dom = addr_domain(spec["from"])
        extra = [("X-Mailer", tool), ("Precedence", "bulk")]
        if rng.random() < 0.8:
            extra += [("List-Unsubscribe", f"<https://{rng.choice(['nieuwsbrief', 'mail', 'news', 'lists'])}.{dom}/unsubscribe/{hexstr(rng, 20)}>, <mailto:unsubscribe-{hexstr(rng, 12)}@{dom}>"),
                      ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")]
        order = ["From", "To", "Subject", "Date", "Message-ID", "MIME-Version", "X-Mailer", "Precedence", "List-Unsubscribe",
                 "List-Unsubscribe-Post", "In-Reply-To", "References", "Cc"]
    else:
        if rng.random() < 0.3:
            extra = [("X-Mailer", rng.choice(["PHPMailer 6.9.1 (https://github.com/PHPMailer/PHPMailer)", "Roundcube Webmail/1.6.6",
                                              "Zimbra 10.0.7_GA_4518 (ZimbraWebClient - FF125 (Win)/10.0.7_GA_4518)",
                                              "Microsoft CDO for Windows 2000", "SAP NetWeaver 7.50"]))]
        order = ["Date", "From", "To", "Cc", "Message-ID", "In-Reply-To", "References", "Subject", "MIME-Version", "X-Mailer"]
    H.update(dict(extra))
    H["MIME-Version"] = mime_version
    lines = []
    for name in order + [k for k in H if k not in order]:
        if name in H:
            lines.append(header(name, H[name]) if H[name] else f"{name}: ")
    msg = Part(lines + top.headers, top.body, top.children, top.boundary, top.preamble)
    if top.children is None:
        msg.codec = getattr(top, "codec", "utf-8")
    # ---- serialize: leaf bodies that are 8bit are encoded in their own charset
    out = bytearray()
    serialize(msg, out)
    info = {"mailer": mailer, "shape": shape_name(spec, alt), "text": plan["name"]}
    return bytes(out), info


def serialize(p: Part, out: bytearray) -> None:
    # headers are ASCII except for internationalised (RFC 6532) addresses, which go out as raw UTF-8
    out += (CRLF.join(p.headers) + CRLF + CRLF).encode("utf-8")
    if p.children is None:
        body = p.body
        if body and not body.endswith(CRLF):
            body += CRLF
        out += body.encode(getattr(p, "codec", "utf-8"))
        return
    if p.preamble:
        out += (p.preamble + CRLF + CRLF).encode("ascii")
    for c in p.children:
        out += f"--{p.boundary}{CRLF}".encode("ascii")
        serialize(c, out)
    out += f"--{p.boundary}--{CRLF}".encode("ascii")


# --------------------------------------------------------------------------------------------
# Build
# --------------------------------------------------------------------------------------------

def thread_maps(specs: list[dict]):
    by_thread: dict[str, list[dict]] = {}
    for s in specs:
        by_thread.setdefault(s["thread"], []).append(s)
    prev, pos = {}, {}
    for t, lst in by_thread.items():
        lst.sort(key=lambda s: (parse_date(s["date"]).astimezone(UTC), s["id"]))
        for i, s in enumerate(lst):
            prev[s["id"]] = [x["id"] for x in lst[:i]]
            pos[s["id"]] = i
    return prev, pos, by_thread


def render_all(specs: list[dict]):
    prev, pos, _ = thread_maps(specs)
    msgids = {s["id"]: message_id(s, choose_mailer(s, rng_for("render", s["id"]))) for s in specs}
    outputs, infos = {}, {}
    for s in specs:
        data, info = render(s, msgids, prev, pos)
        outputs[s["id"]] = data
        infos[s["id"]] = info
    return outputs, infos


def labels_csv(specs: list[dict]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["file", "label", "thread", "split", "lang", "ambiguous"])
    for s in sorted(specs, key=lambda s: s["id"]):
        w.writerow([f"eml/{s['id']}.eml", s["label"], s["thread"], split_for(s["thread"]), s["lang"],
                    "true" if s.get("ambiguous") else "false"])
    return buf.getvalue().encode("utf-8")


def write_if_changed(path: Path, data: bytes) -> bool:
    if path.exists() and path.read_bytes() == data:
        return False
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return True


def build() -> int:
    specs, problems, warnings = load_specs()
    EML.mkdir(exist_ok=True)
    outputs, _ = render_all(specs)
    changed = 0
    for sid, data in outputs.items():
        changed += write_if_changed(EML / f"{sid}.eml", data)
    stale = [p for p in EML.glob("*.eml") if p.stem not in outputs]
    for p in EML.iterdir():
        if p.name.endswith(".tmp"):
            p.unlink()
    for p in stale:
        p.unlink()
    write_if_changed(LABELS, labels_csv(specs))
    print(f"rendered {len(outputs)} mails ({changed} changed, {len(stale)} stale removed) -> {EML.relative_to(HERE.parent.parent)}")
    if problems:
        print(f"skipped {len(problems)} bad spec line(s); run --check for details", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------------------------
# Check
# --------------------------------------------------------------------------------------------

TAG_RE = re.compile(r"<(script|style|title)\b.*?</\1>|<[^>]+>", re.S | re.I)


def unsurrogate(s: str) -> str:
    return s.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def norm_ws(s: str) -> str:
    return " ".join(s.split())


def html_text(h: str) -> str:
    return html.unescape(TAG_RE.sub(" ", h))


def bsn_like(text: str) -> list[str]:
    hits = []
    for m in re.finditer(r"(?<![\d.,\-/+])(\d{9})(?![\d.,\-/])", text):
        n = m.group(1)
        if n[0] == "0" or n.startswith("31") or n.startswith("06"):
            continue
        total = sum(int(n[i]) * (9 - i) for i in range(8)) - int(n[8])
        if total % 11 == 0:
            hits.append(n)
    return hits


def check() -> int:
    specs, problems, warnings = load_specs()
    problems = list(problems)
    outputs, infos = render_all(specs)
    parser = BytesParser(policy=policy.default)
    for s in specs:
        sid = s["id"]
        path = EML / f"{sid}.eml"
        if not path.exists():
            problems.append(f"{sid}: {path.name} missing (run build.py)")
            continue
        data = path.read_bytes()
        if data != outputs[sid]:
            problems.append(f"{sid}: {path.name} differs from a fresh render (stale; run build.py)")
        if b"\n" in data.replace(b"\r\n", b""):
            problems.append(f"{sid}: bare LF in .eml")
        if any(len(ln) > 998 for ln in data.split(b"\r\n")):
            problems.append(f"{sid}: line longer than 998 octets")
        try:
            msg = parser.parsebytes(data)
            texts = []
            for part in msg.walk():
                if part.is_multipart() or part.get_content_disposition() == "attachment":
                    continue
                ct = part.get_content_type()
                if ct == "text/plain":
                    texts.append(part.get_content())
                elif ct == "text/html":
                    texts.append(html_text(part.get_content()))
                elif ct == "text/calendar":
                    part.get_content()
            decoded = norm_ws(" ".join(texts))
            head = norm_ws(normalize_body(s["body"])[:30])
            if head and head not in decoded:
                problems.append(f"{sid}: decoded text lacks the body start {head!r}")
            want_subj = norm_ws(re.sub(r"[\r\n]+", " ", s.get("subject", "") or ""))
            if norm_ws(str(msg.get("Subject", ""))) != want_subj:
                problems.append(f"{sid}: Subject round-trip mismatch: {str(msg.get('Subject'))!r} != {want_subj!r}")
            fa = msg["From"].addresses
            fname, faddr = parse_addr(s["from"])
            if len(fa) != 1 or unsurrogate(fa[0].addr_spec).lower() != faddr.lower() or (fname and fa[0].display_name != fname):
                problems.append(f"{sid}: From round-trip mismatch: {str(msg['From'])!r}")
            for key in ("to", "cc"):
                want = [parse_addr(a)[1].lower() for a in s.get(key, []) or []]
                got = [unsurrogate(a.addr_spec).lower() for a in msg[key].addresses if a.addr_spec] if msg[key] else []
                if want != got:
                    problems.append(f"{sid}: {key} round-trip mismatch: {got} != {want}")
            names = [p.get_filename() for p in msg.iter_attachments()]
            names = [n for n in names if n != "invite.ics" or "invite.ics" in (s.get("attachments") or [])]
            if names != list(s.get("attachments") or []):
                problems.append(f"{sid}: attachment names {names} != {s.get('attachments')}")
            if s.get("calendar") and not any(p.get_content_type() == "text/calendar" for p in msg.walk()):
                problems.append(f"{sid}: calendar part missing")
            if msg.defects or any(p.defects for p in msg.walk()):
                problems.append(f"{sid}: parser defects {msg.defects or [d for p in msg.walk() for d in p.defects]}")
        except Exception as e:  # noqa: BLE001 - any parse failure is a problem to report
            problems.append(f"{sid}: re-parse failed: {type(e).__name__}: {e}")
        for n in bsn_like(s["body"] + " " + (s.get("subject") or "")):
            warnings.append(f"{sid}: nine-digit number {n} passes the BSN 11-test")
    on_disk = {p.stem for p in EML.glob("*.eml")} if EML.exists() else set()
    stale = sorted(on_disk - set(outputs))
    if stale:
        problems.append(f"{len(stale)} stale .eml file(s) without a spec, e.g. {stale[:3]} (run build.py)")
    if not LABELS.exists() or LABELS.read_bytes() != labels_csv(specs):
        problems.append("labels.csv missing or out of date (run build.py)")
    _, _, by_thread = thread_maps(specs)
    for t, lst in sorted(by_thread.items()):
        labels = {x["label"] for x in lst}
        if len(labels) > 1 and not any(x.get("ambiguous") for x in lst):
            warnings.append(f"thread {t}: mixed labels {sorted(labels)} without an ambiguous mark")
    bodies: dict[str, str] = {}
    for s in specs:
        key = norm_ws(s["body"])
        if len(key) > 40 and key in bodies:
            warnings.append(f"{s['id']}: same body as {bodies[key]}")
        bodies.setdefault(key, s["id"])

    # ---- report
    def table(title: str, rows: list[str], cols: list[str], count):
        w0 = max([len(title)] + [len(r) for r in rows]) + 2
        print(title.ljust(w0) + "".join(c.rjust(12) for c in cols) + "total".rjust(8))
        for r in rows:
            vals = [count(r, c) for c in cols]
            print(r.ljust(w0) + "".join(str(v).rjust(12) for v in vals) + str(sum(vals)).rjust(8))
        tot = [sum(count(r, c) for r in rows) for c in cols]
        print("total".ljust(w0) + "".join(str(v).rjust(12) for v in tot) + str(sum(tot)).rjust(8))
        print()

    from collections import Counter
    cs = Counter((s["label"], split_for(s["thread"])) for s in specs)
    cl = Counter((s["label"], s["lang"]) for s in specs)
    cb = Counter((s["id"].split("-")[0], s["label"]) for s in specs)
    print(f"{len(specs)} specs, {len(by_thread)} threads, {sum(1 for s in specs if s.get('ambiguous'))} ambiguous\n")
    table("class \\ split", list(LABEL_SET), list(SPLITS), lambda r, c: cs[(r, c)])
    table("class \\ lang", list(LABEL_SET), list(LANG_SET), lambda r, c: cl[(r, c)])
    batches = sorted({s["id"].split("-")[0] for s in specs})
    table("batch \\ class", batches, [l[:11] for l in LABEL_SET], lambda r, c: cb[(r, next(l for l in LABEL_SET if l[:11] == c))])
    shapes = Counter(i["shape"] for i in infos.values())
    mailers = Counter(i["mailer"] for i in infos.values())
    texts = Counter(i["text"] for i in infos.values())
    print("shapes:  " + ", ".join(f"{k} {v}" for k, v in sorted(shapes.items())))
    print("mailers: " + ", ".join(f"{k} {v}" for k, v in sorted(mailers.items())))
    print("text/plain encodings: " + ", ".join(f"{k} {v}" for k, v in sorted(texts.items())))
    if warnings:
        print(f"\n{len(warnings)} warning(s):")
        for w in warnings[:60]:
            print("  " + w)
        if len(warnings) > 60:
            print(f"  ... and {len(warnings) - 60} more")
    if problems:
        print(f"\n{len(problems)} PROBLEM(S):")
        for p in problems[:100]:
            print("  " + p)
        if len(problems) > 100:
            print(f"  ... and {len(problems) - 100} more")
        return 1
    print("\ncheck OK")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="validate specs and rendered files, print counts")
    args = ap.parse_args()
    return check() if args.check else build()


if __name__ == "__main__":
    sys.exit(main())
