"""Fixed-length batches from a token stream, sharded across data-parallel ranks.

Samples: a split of N tokens holds ``n = (N - 1) // S`` samples of ``S = seq_len``; sample
``i`` reads tokens ``[i*S, i*S + S]`` (S + 1 tokens): inputs are the first S, targets the
last S (the inputs shifted by one). Samples do not overlap except in that one token.

Order (Note [One cursor for all ranks]): epoch ``e`` visits the samples in the order of a
permutation ``perm_e`` drawn from (seed, e) (or ``0..n-1`` when not shuffled). All ranks
move one shared cursor ``c`` through it: each global step of one sample per rank takes
``perm_e[c : c + R]``, rank ``r`` the entry ``c + r``, and ``c += R``. When fewer than R
entries are left the epoch ends (those ``n mod R`` samples are skipped this epoch; the next
permutation puts others last) and ``e += 1, c = 0``. So within an epoch the ranks read
disjoint samples that together cover all but the last ``n mod R`` of its order, and the
state ``(seed, epoch, cursor)`` is the same on every rank: saved once, it can be restored on
any world size, which continues the same epoch with nothing read twice or skipped.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np
import torch

from .errors import DataError
from .formats import iter_chunks


def unigram_entropy(tokens: np.ndarray, vocab_size: int) -> float:
    """Entropy of the token frequencies of ``tokens``, in nats per token (the unit of the
    cross-entropy loss): the loss of a model that knows only how often each token occurs,
    a reference the training loss should fall well below."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    for chunk in iter_chunks(tokens):
        counts += np.bincount(chunk, minlength=vocab_size)[:vocab_size]
    total = counts.sum()
    if total == 0:
        return 0.0
    p = counts[counts > 0] / total
    return float(-(p * np.log(p)).sum())


class TokenLoader:
    """Batches of ``(input_ids, targets)``, each ``int64 [B, S]``, for one rank.

    ``tokens`` is the split (a numpy array or memmap); ``rank`` / ``world_size`` the
    data-parallel position. ``shuffle=False`` reads samples in order (validation)."""

    def __init__(self, tokens: np.ndarray, seq_len: int, rank: int, world_size: int,
                 seed: int, shuffle: bool = True, name: str = "train split", vocab_size: Optional[int] = None):
        if world_size < 1 or not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is not in [0, world_size {world_size})")
        if seq_len < 1:
            raise DataError(f"data.seq_len must be >= 1, got {seq_len}")
        self.tokens = tokens
        self.seq_len = seq_len
        self.rank = rank
        self.world_size = world_size
        self.seed = int(seed)
        self.shuffle = shuffle
        self.name = name
        self.vocab_size = vocab_size
        self.num_samples = (len(tokens) - 1) // seq_len if len(tokens) else 0
        if self.num_samples < world_size:
            raise DataError(
                f"data.seq_len {seq_len} is too long for the {name}: its {len(tokens)} tokens "
                f"give {self.num_samples} samples of seq_len + 1 tokens, fewer than the {world_size} "
                f"data-parallel ranks need (one each); lower data.seq_len or add data")
        self.epoch = 0
        self.cursor = 0
        self._perm_epoch = -1
        self._perm: Optional[np.ndarray] = None

    # --- order -------------------------------------------------------------------------
    def permutation(self, epoch: int) -> np.ndarray:
        """The order of sample indices in ``epoch`` (the same on every rank)."""
        if not self.shuffle:
            return np.arange(self.num_samples, dtype=np.int64)
        if self._perm_epoch != epoch:
            rng = np.random.Generator(np.random.PCG64([self.seed, epoch]))
            self._perm = rng.permutation(self.num_samples).astype(np.int64)
            self._perm_epoch = epoch
        return self._perm

    def next_indices(self, batch_size: int) -> np.ndarray:
        """This rank's next ``batch_size`` sample indices; advances the shared cursor."""
        out = np.empty(batch_size, dtype=np.int64)
        R = self.world_size
        for j in range(batch_size):
            if self.cursor + R > self.num_samples:
                self.epoch += 1
                self.cursor = 0
            out[j] = self.permutation(self.epoch)[self.cursor + self.rank]
            self.cursor += R
        return out

    def samples(self, indices: np.ndarray) -> Tuple[torch.Tensor, torch.Tensor]:
        S = self.seq_len
        rows = np.stack([np.asarray(self.tokens[i * S:i * S + S + 1]) for i in indices])
        rows_BS1 = torch.from_numpy(rows.astype(np.int64))
        return rows_BS1[:, :-1].contiguous(), rows_BS1[:, 1:].contiguous()

    def next_batch(self, batch_size: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(input_ids_BS, targets_BS)``, int64 CPU tensors; ``targets[:, t] = input[:, t+1]``
        in the token stream."""
        if batch_size < 1:
            raise DataError(f"batch size must be >= 1, got {batch_size}")
        return self.samples(self.next_indices(batch_size))

    def batches_per_epoch(self, batch_size: int) -> int:
        return (self.num_samples // self.world_size) // batch_size

    def unigram_entropy(self) -> float:
        """Unigram entropy of this split's tokens in nats/token (see :func:`unigram_entropy`)."""
        vocab = self.vocab_size or int(max(np.max(c) for c in iter_chunks(self.tokens))) + 1
        return unigram_entropy(self.tokens, vocab)

    # --- resume ------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, int]:
        """Where the data order stands; identical on every rank (save it once)."""
        return {"seed": self.seed, "epoch": self.epoch, "cursor": self.cursor,
                "num_samples": self.num_samples, "seq_len": self.seq_len}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        """Continue from ``state``. On the same world size the following batches are the
        ones the saved run would have read; on another world size the epoch continues with
        the samples not yet read. Fails when the data or seq_len differ."""
        for key in ("seed", "epoch", "cursor", "num_samples", "seq_len"):
            if key not in state:
                raise DataError(f"data state of the {self.name}: missing {key!r} (got keys {sorted(state)})")
        for key, mine in (("num_samples", self.num_samples), ("seq_len", self.seq_len)):
            if int(state[key]) != mine:
                raise DataError(f"data state of the {self.name} was saved with {key} {state[key]}, this run has "
                                f"{mine}: the data or data.seq_len changed, so the position cannot be restored")
        if not 0 <= int(state["cursor"]) <= self.num_samples or int(state["epoch"]) < 0:
            raise DataError(f"data state of the {self.name}: epoch {state['epoch']} / cursor {state['cursor']} "
                            f"out of range for {self.num_samples} samples")
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])
        self.cursor = int(state["cursor"])
        self._perm_epoch = -1

    def reset(self) -> None:
        """Back to the first sample of epoch 0 (evaluation reads the same batches each time)."""
        self.epoch, self.cursor = 0, 0
