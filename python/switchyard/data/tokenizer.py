"""Tokenizers: bytes, a byte-level BPE trained here, or a user's ``tokenizer.json``.

``data.tokenizer`` picks one:

- ``byte``: one id per UTF-8 byte (0-255). Documents are separated by id 0 (the NUL byte,
  which text files do not contain).
- ``bpe``: a byte-level BPE with ``model.vocab_size`` ids, trained with Hugging Face
  ``tokenizers`` on the training split and cached beside the tokens (see cache.py). Id 0 is
  the separator ``<|endoftext|>``, ids 1-256 the bytes, the rest merges. Training is
  deterministic: the same text and size give the same ``tokenizer.json``.
- a path to a ``tokenizer.json`` (any Hugging Face fast tokenizer): its vocabulary must fit
  ``model.vocab_size``; the separator is the first of ``SEPARATOR_NAMES`` it knows.

All three encode without adding special tokens: the pipeline places the separators.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np

from .errors import DataError

SEPARATOR = "<|endoftext|>"
_LINE_STARTS = re.compile(r"(?<=\n)(?=\S)")
# Document separators of common tokenizers, in the order we look for them.
SEPARATOR_NAMES = (SEPARATOR, "<|end_of_text|>", "</s>", "<eos>", "[SEP]", "<|im_end|>")


@dataclass
class Tokenizer:
    """Encodes documents to ids and back. ``hf`` is the ``tokenizers.Tokenizer`` (None for
    bytes); ``path`` its ``tokenizer.json``."""

    kind: str            # "byte", "bpe" or "file"
    vocab_size: int
    eos_id: int
    path: Optional[str] = None
    hf: object = None

    def encode(self, text: str) -> List[int]:
        if self.hf is None:
            return list(text.encode("utf-8"))
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_documents(self, docs: Sequence[str], dtype: np.dtype) -> np.ndarray:
        """All documents as one stream, each followed by the separator ``eos_id``."""
        if self.hf is None:
            parts = []
            for d in docs:
                parts.append(np.frombuffer(d.encode("utf-8"), dtype=np.uint8).astype(dtype))
                parts.append(np.array([self.eos_id], dtype=dtype))
            return np.concatenate(parts) if parts else np.zeros(0, dtype)
        # Note [Encoding in lines]: the byte-level pre-tokenizer of our BPE never joins a
        # newline to the non-space character after it, so cutting a document there gives
        # the same ids as encoding it whole, while many short pieces keep every core busy
        # (a book at a time leaves one core to the longest book). Other tokenizers (e.g. a
        # SentencePiece one that marks the start of each piece) encode whole documents.
        pieces, owner = [], []
        for i, d in enumerate(docs):
            cut = _LINE_STARTS.split(d) if self.kind == "bpe" else [d]
            pieces += cut
            owner += [i] * len(cut)
        encoded = self.hf.encode_batch(pieces, add_special_tokens=False)
        parts = []
        for j, enc in enumerate(encoded):
            parts.append(np.asarray(enc.ids, dtype=dtype))
            if j + 1 == len(encoded) or owner[j + 1] != owner[j]:
                parts.append(np.array([self.eos_id], dtype=dtype))
        return np.concatenate(parts) if parts else np.zeros(0, dtype)

    def decode(self, ids: Sequence[int]) -> str:
        ids = [int(i) for i in ids]
        if self.hf is None:
            return bytes(i for i in ids if i != self.eos_id).decode("utf-8", errors="replace")
        return self.hf.decode(ids, skip_special_tokens=False)

    def fingerprint(self) -> str:
        """What the token ids depend on: part of the cache key."""
        if self.hf is None:
            return "byte"
        return hashlib.sha256(self.hf.to_str().encode("utf-8")).hexdigest()[:16]


def byte_tokenizer() -> Tokenizer:
    return Tokenizer(kind="byte", vocab_size=256, eos_id=0)


def _hf():
    try:
        import tokenizers  # noqa: F401  (comes with transformers, pinned in requirements.txt)
    except ImportError as e:  # pragma: no cover - the venv has it
        raise DataError("data.tokenizer needs the Python package `tokenizers`; run scripts/install-deps") from e
    return tokenizers


def load_tokenizer_file(path: str, vocab_limit: int, kind: str = "file") -> Tokenizer:
    """A ``tokenizer.json``; a DataError naming the file (and model.vocab_size) when it
    cannot be read, has too many ids, or has no separator."""
    if not os.path.isfile(path):
        raise DataError(f"data.tokenizer: {path}: no such file (expected byte, bpe, or a tokenizer.json)")
    tk = _hf()
    try:
        hf = tk.Tokenizer.from_file(path)
    except Exception as e:  # tokenizers raises a plain Exception on a bad file
        raise DataError(f"data.tokenizer: {path}: not a Hugging Face tokenizer.json ({e})") from None
    vocab = hf.get_vocab_size(with_added_tokens=True)
    if vocab > vocab_limit:
        raise DataError(f"data.tokenizer: {path} has {vocab} ids, more than model.vocab_size "
                        f"{vocab_limit}; raise model.vocab_size or use a smaller tokenizer")
    eos = next((hf.token_to_id(n) for n in SEPARATOR_NAMES if hf.token_to_id(n) is not None), None)
    if eos is None:
        raise DataError(f"data.tokenizer: {path} has none of the separator tokens "
                        f"{', '.join(SEPARATOR_NAMES)}; add one so documents can be separated")
    return Tokenizer(kind=kind, vocab_size=vocab, eos_id=eos, path=path, hf=hf)


def train_bpe(docs: Sequence[str], vocab_size: int, out_path: str) -> Tokenizer:
    """Train a byte-level BPE of ``vocab_size`` ids on ``docs`` and save it to ``out_path``.

    Byte-level: every string is first mapped to bytes, so any text encodes without an
    unknown token. The separator is added first (id 0); the 256 byte symbols follow; the
    merges fill the rest (fewer when the text runs out of pairs seen twice)."""
    if vocab_size < 257:
        raise DataError(f"model.vocab_size {vocab_size} is too small for data.tokenizer: bpe "
                        f"(needs the 256 bytes and the separator)")
    tk = _hf()
    from tokenizers import decoders, models, pre_tokenizers, trainers

    hf = tk.Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[SEPARATOR],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    hf.train_from_iterator(docs, trainer=trainer, length=len(docs))
    hf.save(out_path)
    return Tokenizer(kind="bpe", vocab_size=hf.get_vocab_size(with_added_tokens=True),
                     eos_id=hf.token_to_id(SEPARATOR), path=out_path, hf=hf)
