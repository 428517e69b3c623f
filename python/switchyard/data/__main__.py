"""``python -m switchyard.data``: build the token cache of a config ahead of a run.

    python -m switchyard.data prepare --config configs/demo.yaml [--set data.tokenizer=bpe ...]

Prints what was read, the split sizes, the tokenizer, the cache folder and the unigram
entropy of the training tokens. Exit status 0 on success; 1 with ``error: <message>`` on
stderr for a bad config or bad data; 2 for bad command-line usage. Safe to run while ranks
start: the cache is built under a lock (see cache.py).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from typing import List, Optional


def _prepare(args: argparse.Namespace) -> int:
    from ..config import load_config
    from .dataset import build_dataset

    cfg = load_config(args.config, args.set or [])
    t0 = time.perf_counter()
    train, val, info = build_dataset(cfg, 0, 1, cache_dir=args.cache_dir)
    seconds = time.perf_counter() - t0
    h = train.unigram_entropy()
    print(f"data:       {info.description}")
    if info.meta:
        print(f"            {info.meta['documents']} documents, {info.meta['bytes'] / 1e6:.2f} MB of text")
    print(f"tokenizer:  {info.tokenizer.kind}, {info.vocab_size} ids (separator id {info.eos_id})"
          + (f", {info.tokenizer.path}" if info.tokenizer.path else ""))
    print(f"tokens:     {info.n_train_tokens} train, {info.n_val_tokens} val "
          f"({train.num_samples} train samples of seq_len {train.seq_len})")
    print(f"unigram entropy of the train tokens: {h:.4f} nats/token ({h / math.log(2):.4f} bits)")
    if info.cache_dir:
        print(f"cache:      {info.cache_dir} ({seconds:.1f} s)")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m switchyard.data", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="tokenize the config's data into the cache")
    p.add_argument("--config", required=True, help="the run's YAML config")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    p.add_argument("--cache-dir", default=None, help="cache root (default ~/.cache/switchyard/data)")
    args = parser.parse_args(argv)
    from ..config import ConfigError
    from .errors import DataError

    try:
        return _prepare(args)
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
