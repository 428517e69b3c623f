"""Readers (and writers) for the data formats users already have.

- text:   UTF-8 files; each file is one document. ``data.path`` is a file, or a folder whose
          ``*.txt`` files (recursively, sorted by relative path) are read in that order.
- jsonl:  one JSON object per line with a string ``"text"``; each line is one document.
          ``data.path`` is a file, or a folder of ``*.jsonl`` files (sorted). Blank lines
          are skipped.
- tokens: a flat binary file of token ids, native little-endian uint16 or uint32 (the
          nanoGPT ``train.bin`` convention, and what ``write_tokens`` and the cache write).
          ``data.path`` is that file, or a folder with ``train.bin`` (and optionally
          ``val.bin``, which then is the validation split).

Every error names the file, and for JSONL the line.
"""

from __future__ import annotations

import json
import os
from typing import Iterator, List, Optional, Tuple

import numpy as np

from .errors import DataError

TOKEN_DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}


def token_dtype(name: str) -> np.dtype:
    if name not in TOKEN_DTYPES:
        raise DataError(f"data.token_dtype: expected one of {sorted(TOKEN_DTYPES)}, got {name!r}")
    return TOKEN_DTYPES[name]


def _require(path: str, key: str = "data.path") -> None:
    if not path:
        raise DataError(f"{key} is empty; set it to the file or folder to read")
    if not os.path.exists(path):
        raise DataError(f"{key}: {path}: no such file or directory")


def list_files(path: str, suffix: str) -> List[str]:
    """``path`` itself, or the files under the folder ``path`` ending in ``suffix``,
    sorted by their path relative to it (so the order does not depend on the file system)."""
    _require(path)
    if os.path.isfile(path):
        return [path]
    found = []
    for root, _, names in os.walk(path):
        found += [os.path.join(root, n) for n in names if n.endswith(suffix)]
    found.sort(key=lambda p: os.path.relpath(p, path))
    if not found:
        raise DataError(f"data.path: {path}: the folder holds no *{suffix} files")
    return found


def read_text_documents(path: str) -> List[str]:
    """One document per UTF-8 text file."""
    docs = []
    for file in list_files(path, ".txt"):
        with open(file, "rb") as f:
            raw = f.read()
        try:
            docs.append(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise DataError(f"{file}: byte {e.start}: not valid UTF-8 ({e.reason})") from None
    return docs


def read_jsonl_documents(path: str, key: str = "text") -> List[str]:
    """One document per non-blank line ``{"text": "..."}``."""
    docs = []
    for file in list_files(path, ".jsonl"):
        with open(file, "r", encoding="utf-8", errors="strict") as f:
            try:
                lines = list(f)
            except UnicodeDecodeError as e:
                raise DataError(f"{file}: not valid UTF-8 ({e.reason})") from None
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{file}:{number}: bad JSON: {e.msg} (column {e.colno})") from None
            if not isinstance(record, dict) or key not in record:
                raise DataError(f"{file}:{number}: expected an object with a {key!r} key, got "
                                f"{type(record).__name__}" + (f" with keys {sorted(record)}" if isinstance(record, dict) else ""))
            if not isinstance(record[key], str):
                raise DataError(f"{file}:{number}: {key!r} must be a string, got {type(record[key]).__name__}")
            docs.append(record[key])
    return docs


def read_tokens(path: str, dtype_name: str) -> np.ndarray:
    """The token ids of one flat binary file, memory-mapped read-only (no copy)."""
    _require(path)
    dtype = token_dtype(dtype_name)
    size = os.path.getsize(path)
    if size % dtype.itemsize:
        raise DataError(f"{path}: size {size} bytes is not a multiple of {dtype.itemsize} "
                        f"(data.token_dtype: {dtype_name}); wrong dtype, or a truncated file?")
    if size == 0:
        raise DataError(f"{path}: the token file is empty")
    return np.memmap(path, dtype=dtype, mode="r")


def token_files(path: str) -> Tuple[str, Optional[str]]:
    """(train file, val file or None) for ``data.source: tokens``."""
    _require(path)
    if os.path.isfile(path):
        return path, None
    train = os.path.join(path, "train.bin")
    if not os.path.isfile(train):
        raise DataError(f"data.path: {path}: a folder of tokens needs train.bin (and optionally val.bin)")
    val = os.path.join(path, "val.bin")
    return train, (val if os.path.isfile(val) else None)


def write_tokens(path: str, ids, dtype_name: str) -> None:
    """Write ``ids`` as a flat binary token file (atomically: a partial file never appears
    under ``path``). Ids must fit the dtype."""
    dtype = token_dtype(dtype_name)
    arr = np.asarray(ids)
    if arr.size and (arr.min() < 0 or arr.max() > np.iinfo(dtype).max):
        raise DataError(f"{path}: token ids span [{arr.min()}, {arr.max()}], which {dtype_name} cannot hold")
    tmp = f"{path}.tmp-{os.getpid()}"
    arr.astype(dtype, copy=False).tofile(tmp)
    os.replace(tmp, path)


def iter_chunks(tokens: np.ndarray, chunk: int = 1 << 24) -> Iterator[np.ndarray]:
    """``tokens`` in slices, so a scan of a large memory-mapped file needs little memory."""
    for start in range(0, len(tokens), chunk):
        yield np.asarray(tokens[start:start + chunk])
