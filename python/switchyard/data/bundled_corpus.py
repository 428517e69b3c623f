"""The bundled corpus: the World English Bible, read from Debian's ``sword-text-web``.

Why this text: it is real English prose (not generated), about 4.9 MB once its markup is
stripped, in the public domain, and installs from Debian's archive (scripts/install-deps)
rather than being committed to this repository. See docs/data.md.

How it is stored: a SWORD "zText" module. ``ot.bzs`` / ``nt.bzs`` list the compressed
blocks (three little-endian uint32 per block: offset, compressed size, uncompressed size),
``ot.bzz`` / ``nt.bzz`` hold them (zlib), and the uncompressed blocks, concatenated in
order, are the whole text as OSIS XML markup. We keep the words and drop the footnotes
and Strong's-number annotations: 1. decompress every block, 2. cut the text into one
document per book (plus the preface and the glossary), 3. turn markup into plain text.
"""

from __future__ import annotations

import glob
import os
import re
import struct
import zlib
from typing import List

from .errors import DataError

SWORD_ROOT = "/usr/share/sword"
DEBIAN_PACKAGE = "sword-text-web"
LICENSE = "public domain (World English Bible; see /usr/share/doc/sword-text-web/copyright)"

# A book, the front matter and the glossary each start with an empty milestone <div sID=..>.
_DOC_START = re.compile(r'<div\b[^>]*\bsID="[^"]*"[^>]*\btype="(?:book|front|glossary)"[^>]*/>')
_NOTE = re.compile(r"<note\b.*?</note>", re.S)       # footnotes: not part of the text
_TITLE = re.compile(r"<title\b[^>]*>(.*?)</title>", re.S)
_BREAK = re.compile(r"<(?:lb|l|lg|chapter)\b[^>]*/>|<div\b[^>]*type=\"x-p\"[^>]*/>")
_TAG = re.compile(r"<[^>]*>")
_SPACES = re.compile(r"[ \t]+")
_SPACE_BEFORE_CLOSING = re.compile(r" +([,.;:!?)\]’”])")
_BLANK_LINES = re.compile(r"\n\s*\n+")


def module_dir() -> str:
    """The installed World English Bible module's data folder; a DataError naming the
    package and the install command when it is missing."""
    found = sorted(glob.glob(os.path.join(SWORD_ROOT, "modules", "texts", "ztext", "engWEB*")))
    for d in found:
        if all(os.path.isfile(os.path.join(d, f"{t}.{e}")) for t in ("ot", "nt") for e in ("bzs", "bzz")):
            return d
    raise DataError(
        f"data.source: bundled needs the Debian package {DEBIAN_PACKAGE} (the World English "
        f"Bible, expected under {SWORD_ROOT}/modules/texts/ztext/engWEB*/); run scripts/install-deps "
        f"(or: apt-get install -y {DEBIAN_PACKAGE})")


def _read_testament(folder: str, testament: str) -> str:
    index_path = os.path.join(folder, f"{testament}.bzs")
    with open(index_path, "rb") as f:
        index = f.read()
    with open(os.path.join(folder, f"{testament}.bzz"), "rb") as f:
        blob = f.read()
    if len(index) % 12:
        raise DataError(f"{index_path}: size {len(index)} is not a multiple of 12 (damaged module?)")
    blocks = []
    for offset, size, raw_size in struct.iter_unpack("<III", index):
        block = zlib.decompress(blob[offset:offset + size])
        if len(block) != raw_size:
            raise DataError(f"{index_path}: block at {offset} inflates to {len(block)} bytes, "
                            f"the index says {raw_size} (damaged module?)")
        blocks.append(block)
    return b"".join(blocks).decode("utf-8")


def _plain_text(osis: str) -> str:
    text = _NOTE.sub(" ", osis)
    text = _TITLE.sub(lambda m: "\n" + m.group(1) + "\n", text)
    text = _BREAK.sub("\n", text)
    text = _TAG.sub("", text)
    text = _SPACES.sub(" ", text)
    text = _SPACE_BEFORE_CLOSING.sub(r"\1", text)
    lines = (line.strip() for line in text.split("\n"))
    text = "\n".join(lines)
    return _BLANK_LINES.sub("\n", text).strip() + "\n"


def documents() -> List[str]:
    """The corpus as plain-text documents in canonical order: the preface, each book of
    the Old Testament, Deuterocanon and New Testament, the glossary. Deterministic."""
    folder = module_dir()
    osis = _read_testament(folder, "ot") + _read_testament(folder, "nt")
    starts = [m.start() for m in _DOC_START.finditer(osis)]
    cuts = [0] + starts + [len(osis)]
    docs = [_plain_text(osis[a:b]) for a, b in zip(cuts, cuts[1:])]
    return [d for d in docs if d.strip()]


def identity() -> str:
    """What the corpus's content depends on (file names and sizes): part of the cache key."""
    folder = module_dir()
    parts = [os.path.basename(folder)]
    for name in sorted(os.listdir(folder)):
        parts.append(f"{name}:{os.path.getsize(os.path.join(folder, name))}")
    return ";".join(parts)
