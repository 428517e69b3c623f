"""``build_dataset``: from the ``data:`` and ``model:`` config sections to two loaders.

1. read the source (the bundled corpus, text, JSONL; or memory-map a token file),
2. tokenize it once into the cache (training a BPE first for ``data.tokenizer: bpe``),
3. split the stream by position: the last ``floor(N * data.val_fraction)`` tokens are the
   validation split, the rest the training split (a token folder's val.bin overrides this),
4. wrap each split in a TokenLoader for this rank.

Every rank calls it; the first to get the cache lock tokenizes, the others wait and reuse.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from . import bundled_corpus, cache, formats
from .errors import DataError
from .loader import TokenLoader
from .tokenizer import Tokenizer, byte_tokenizer, load_tokenizer_file, train_bpe


@dataclass
class DatasetInfo:
    """What the loaders read: the tokenizer (``encode`` / ``decode``), split sizes, where
    the cached tokens live, and a one-line description for logs."""

    tokenizer: Tokenizer
    n_train_tokens: int
    n_val_tokens: int
    description: str
    cache_dir: Optional[str] = None
    meta: Dict[str, object] = field(default_factory=dict)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def eos_id(self) -> int:
        return self.tokenizer.eos_id


def _file_identity(files: List[str]) -> List[Tuple[str, int, int]]:
    # Content hashes of multi-GB inputs would cost a full read on every start; a file's
    # absolute path, size and modification time identify a version well enough.
    return [(os.path.abspath(f), os.path.getsize(f), os.stat(f).st_mtime_ns) for f in files]


def _source(data) -> Tuple[str, object, Callable[[], List[str]], str]:
    """(cache name, identity, reader of the documents, description) of a text source."""
    if data.source == "bundled":
        identity = bundled_corpus.identity()
        return "bundled-web", identity, bundled_corpus.documents, \
            f"World English Bible (Debian {bundled_corpus.DEBIAN_PACKAGE})"
    if data.source == "text":
        files = formats.list_files(data.path, ".txt")
        return "text", _file_identity(files), lambda: formats.read_text_documents(data.path), \
            f"text {data.path} ({len(files)} file{'s' * (len(files) != 1)})"
    if data.source == "jsonl":
        files = formats.list_files(data.path, ".jsonl")
        return "jsonl", _file_identity(files), lambda: formats.read_jsonl_documents(data.path), \
            f"jsonl {data.path} ({len(files)} file{'s' * (len(files) != 1)})"
    raise DataError(f"data.source: expected bundled, text, jsonl or tokens, got {data.source!r}")


def _training_documents(docs: List[str], val_fraction: float) -> List[str]:
    """The leading documents within the first (1 - val_fraction) of the characters: what
    the BPE learns from, so the validation text stays (nearly all) unseen by it."""
    total = sum(len(d) for d in docs)
    budget, used, out = (1.0 - val_fraction) * total, 0, []
    for d in docs:
        if out and used + len(d) > budget:
            break
        out.append(d)
        used += len(d)
    return out


def _tokenize_cached(data, vocab_limit: int, cache_root: str) -> Tuple[Tokenizer, np.ndarray, str, Dict]:
    name, identity, read_docs, description = _source(data)
    dtype_name = data.token_dtype
    file_tok = None
    if data.tokenizer == "byte":
        spec: object = "byte"
    elif data.tokenizer == "bpe":
        spec = {"bpe": vocab_limit, "val_fraction": data.val_fraction}
    else:
        file_tok = load_tokenizer_file(data.tokenizer, vocab_limit)
        spec = {"file": file_tok.fingerprint()}
    key = cache.cache_key({"source": name, "identity": identity, "tokenizer": spec, "dtype": dtype_name})

    def build(tmp: str) -> Dict[str, object]:
        t0 = time.perf_counter()
        docs = read_docs()
        if not docs:
            raise DataError(f"{description}: no documents to read")
        if data.tokenizer == "bpe":
            tok = train_bpe(_training_documents(docs, data.val_fraction), vocab_limit,
                            os.path.join(tmp, "tokenizer.json"))
        else:
            tok = file_tok or byte_tokenizer()
        ids = tok.encode_documents(docs, formats.token_dtype(dtype_name))
        formats.write_tokens(os.path.join(tmp, "tokens.bin"), ids, dtype_name)
        return {"source": description, "documents": len(docs),
                "bytes": sum(len(d.encode("utf-8")) for d in docs), "tokens": int(len(ids)),
                "tokenizer": tok.kind, "vocab_size": tok.vocab_size, "eos_id": tok.eos_id,
                "token_dtype": dtype_name, "build_seconds": round(time.perf_counter() - t0, 2)}

    folder = cache.get_or_build(cache_root, name, key, build)
    meta = cache.read_meta(folder)
    if data.tokenizer == "bpe":
        tok = load_tokenizer_file(os.path.join(folder, "tokenizer.json"), vocab_limit, kind="bpe")
    else:
        tok = file_tok or byte_tokenizer()
    tokens = formats.read_tokens(os.path.join(folder, "tokens.bin"), dtype_name)
    return tok, tokens, folder, meta


def _check_ids(tokens: np.ndarray, vocab_limit: int, path: str) -> None:
    start = 0
    for chunk in formats.iter_chunks(tokens):
        top = int(chunk.max())
        if top >= vocab_limit:
            at = start + int(np.argmax(chunk >= vocab_limit))
            raise DataError(f"{path}: token id {int(tokens[at])} at position {at} is >= model.vocab_size "
                            f"{vocab_limit}; raise model.vocab_size or check data.token_dtype")
        start += len(chunk)


def _token_source(data, vocab_limit: int) -> Tuple[Tokenizer, np.ndarray, Optional[np.ndarray], str]:
    train_file, val_file = formats.token_files(data.path)
    if data.tokenizer == "byte":
        tok = byte_tokenizer()
    elif data.tokenizer == "bpe":
        raise DataError("data.tokenizer: bpe trains on text, but data.source: tokens is already tokenized; "
                        "set data.tokenizer to the tokenizer.json that made the ids (or byte)")
    else:
        tok = load_tokenizer_file(data.tokenizer, vocab_limit)
    train = formats.read_tokens(train_file, data.token_dtype)
    _check_ids(train, vocab_limit, train_file)
    val = None
    if val_file is not None:
        val = formats.read_tokens(val_file, data.token_dtype)
        _check_ids(val, vocab_limit, val_file)
    return tok, train, val, f"tokens {data.path}"


def build_dataset(cfg, rank: int = 0, world_size: int = 1, cache_dir: Optional[str] = None
                  ) -> Tuple[TokenLoader, Optional[TokenLoader], DatasetInfo]:
    """``(train_loader, val_loader or None, info)`` for data-parallel ``rank`` of
    ``world_size`` (the ranks that read distinct samples). ``cfg`` is a loaded Config;
    ``cache_dir`` defaults to ``~/.cache/switchyard/data`` (``$XDG_CACHE_HOME`` respected)."""
    data = cfg.data
    vocab_limit = int(cfg.model.vocab_size)
    seed = int(cfg.train.seed)
    seq_len = int(data.seq_len)
    folder, meta = None, {}
    if data.source == "tokens":
        tok, stream, val_stream, description = _token_source(data, vocab_limit)
    else:
        tok, stream, folder, meta = _tokenize_cached(data, vocab_limit, cache_dir or cache.default_root())
        val_stream = None
        description = str(meta.get("source"))
    if tok.vocab_size > vocab_limit:  # bytes and bpe fit by construction; a file is checked on load
        raise DataError(f"data.tokenizer has {tok.vocab_size} ids, more than model.vocab_size {vocab_limit}")
    if val_stream is None:
        n_val = int(len(stream) * float(data.val_fraction))
        train_stream, val_stream = stream[:len(stream) - n_val], stream[len(stream) - n_val:]
    else:
        train_stream = stream
    train = TokenLoader(train_stream, seq_len, rank, world_size, seed, shuffle=True,
                        name=f"train split of {description}", vocab_size=vocab_limit)
    val = None
    if len(val_stream):
        try:
            val = TokenLoader(val_stream, seq_len, rank, world_size, seed, shuffle=False,
                              name=f"validation split of {description}", vocab_size=vocab_limit)
        except DataError as e:
            raise DataError(f"{e} (data.val_fraction {data.val_fraction} leaves {len(val_stream)} "
                            f"validation tokens)") from None
    info = DatasetInfo(tokenizer=tok, n_train_tokens=len(train_stream), n_val_tokens=len(val_stream),
                       description=description, cache_dir=folder, meta=meta)
    return train, val, info
