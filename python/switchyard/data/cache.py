"""The token cache: each tokenized source is built once, by one process, then shared.

Layout: ``<cache root>/<name>-<key>/`` holds ``tokens.bin`` (the whole stream, flat uint16
or uint32), ``tokenizer.json`` (for ``bpe``) and ``meta.json`` (counts, separator, what it
was built from). ``key`` hashes everything the bytes depend on, so a changed source,
tokenizer, vocabulary size, split or dtype gets a new entry and a stale one is never read.

Concurrency (several MPI ranks start at once): a builder takes an exclusive ``flock`` on
``<key>.lock``, builds into a private temporary folder and renames it into place. The
others block on the lock and then find the finished folder. The rename alone already makes
a half-written entry impossible to read (e.g. where ``flock`` is not honoured).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
from typing import Callable, Dict, Iterator

from .errors import DataError

CACHE_FORMAT = 1  # bump when the layout or the tokenization changes


def default_root() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "switchyard", "data")


def cache_key(parts: Dict[str, object]) -> str:
    text = json.dumps({"format": CACHE_FORMAT, **parts}, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def read_meta(folder: str) -> Dict[str, object]:
    with open(os.path.join(folder, "meta.json"), encoding="utf-8") as f:
        return json.load(f)


def get_or_build(root: str, name: str, key: str, build: Callable[[str], Dict[str, object]]) -> str:
    """The cache folder for ``key``; calls ``build(tmp_folder) -> meta`` once if it is missing.

    ``build`` writes its files into ``tmp_folder``; its returned dict becomes meta.json."""
    folder = os.path.join(root, f"{name}-{key}")
    if os.path.isfile(os.path.join(folder, "meta.json")):
        return folder
    try:
        os.makedirs(root, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create the data cache folder {root}: {e}") from None
    with _locked(os.path.join(root, f"{name}-{key}.lock")):
        if os.path.isfile(os.path.join(folder, "meta.json")):  # another process built it
            return folder
        tmp = os.path.join(root, f".tmp-{name}-{key}-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        try:
            meta = build(tmp)
            with open(os.path.join(tmp, "meta.json"), "w", encoding="utf-8") as f:
                json.dump({"format": CACHE_FORMAT, **meta}, f, indent=2, sort_keys=True)
            shutil.rmtree(folder, ignore_errors=True)  # a leftover without meta.json
            os.rename(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder
