"""The data pipeline: corpus or user files -> tokens -> sharded, resumable batches.

    from switchyard.data import build_dataset
    train, val, info = build_dataset(cfg, rank, world_size)
    x_BS, y_BS = train.next_batch(8)          # int64 [8, data.seq_len]; y = x shifted by one
    state = train.state_dict()                # save beside the checkpoint; the same on all ranks
    train.load_state_dict(state)              # continue exactly there
    train.unigram_entropy()                   # nats/token: the loss of a frequency-only model

Sources (``data.source``): ``bundled`` (the World English Bible from Debian's
sword-text-web), ``text``, ``jsonl``, ``tokens`` (flat uint16/uint32 files). Tokenizers
(``data.tokenizer``): ``byte``, ``bpe`` (trained once and cached), or a ``tokenizer.json``.
``python -m switchyard.data prepare --config FILE`` fills the cache ahead of a run.
See docs/data.md.
"""

from .bundled_corpus import documents as bundled_documents
from .dataset import DatasetInfo, build_dataset
from .errors import DataError
from .formats import read_jsonl_documents, read_text_documents, read_tokens, write_tokens
from .loader import TokenLoader, unigram_entropy
from .tokenizer import Tokenizer, byte_tokenizer, load_tokenizer_file, train_bpe

__all__ = [
    "DataError",
    "DatasetInfo",
    "TokenLoader",
    "Tokenizer",
    "build_dataset",
    "bundled_documents",
    "byte_tokenizer",
    "load_tokenizer_file",
    "read_jsonl_documents",
    "read_text_documents",
    "read_tokens",
    "train_bpe",
    "unigram_entropy",
    "write_tokens",
]
