"""Sharded checkpoints that reshard on load: ``switchyard.checkpoint``.

The format and the I/O are C++ (``csrc/switchyard/checkpoint``, docs/checkpoints.md): one
directory per checkpoint, ``<root>/step_<8 digits>/``, with each rank's pieces of the
training state in a safetensors file, the resolved ``config.yaml``, and an ``index.json``
written last that records every file's size and CRC-32 and where each piece belongs. A
checkpoint written on R ranks loads on any number of ranks, and into one process::

    from switchyard import checkpoint
    path = checkpoint.save(root, step, engine, cfg, metadata={"data": ...})   # collective
    info = checkpoint.load(path, engine, cfg)          # every rank reads what it needs
    model = checkpoint.load_model(path)                # one process: evaluation, export

From the shell::

    python -m switchyard.checkpoint list    runs/demo/checkpoints
    python -m switchyard.checkpoint verify  runs/demo/checkpoints/step_00000200
    python -m switchyard.checkpoint export  runs/demo/checkpoints --out model.safetensors
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

from . import _C

_cc = _C.checkpoint

FORMAT_VERSION = _cc.FORMAT_VERSION

__all__ = ["FORMAT_VERSION", "save", "load", "latest", "list_checkpoints", "resolve", "verify",
           "read_full_state", "read_config", "read_metadata", "load_model", "export"]


def _engine_of(engine):
    return getattr(engine, "_engine", engine)  # switchyard.sharding.ShardedEngine or the C++ one


def save(root: os.PathLike, step: int, engine, config, metadata: Optional[Mapping[str, Any]] = None,
         rank_tensors: Optional[Mapping[str, torch.Tensor]] = None, keep_last: Optional[int] = None) -> str:
    """Writes ``<root>/step_<step>/`` atomically and returns its path. Collective.

    ``metadata``: rank 0's JSON-serialisable values (stored in the index, returned by
    :func:`load`). ``rank_tensors``: this rank's own tensors (e.g. its RNG state), given
    back on load when the job has as many ranks. ``keep_last`` defaults to
    ``config.checkpoint.keep_last``: older complete checkpoints are deleted after the save."""
    meta = {k: json.dumps(v) for k, v in (metadata or {}).items()}
    keep = config.checkpoint.keep_last if keep_last is None else keep_last
    return _cc.save(str(root), int(step), _engine_of(engine), int(keep), config.to_yaml(), meta,
                    dict(rank_tensors or {}))


def load(path: os.PathLike, engine, config=None) -> Dict[str, Any]:
    """Restores ``engine`` (master weights, AdamW state, experts by global id, buffers, step)
    from a checkpoint written on any number of ranks. ``path``: a checkpoint directory or a
    root holding ``step_*`` ones (the newest is taken). With ``config``, a checkpoint whose
    parameter shapes do not fit is refused naming the differing ``model.``/``moe.`` keys.

    Returns a dict: ``path``, ``step``, ``saved_world_size``, ``metadata`` (decoded),
    ``rank_tensors`` (empty when the world size changed), ``changed_keys`` (model/moe keys that
    differ but fit) and ``config_yaml``."""
    resolved = resolve(path)
    out = _cc.load(resolved, _engine_of(engine), config)
    out["metadata"] = {k: json.loads(v) for k, v in out["metadata"].items()}
    return out


def latest(root: os.PathLike) -> Optional[str]:
    """The newest complete checkpoint under ``root``, or None."""
    return _cc.latest_checkpoint(str(root))


def list_checkpoints(root: os.PathLike) -> List[Tuple[int, str]]:
    """``[(step, path), ...]`` of the complete checkpoints under ``root``, oldest first."""
    return [tuple(x) for x in _cc.list_checkpoints(str(root))]


def resolve(path: os.PathLike) -> str:
    """A checkpoint directory as given, or the newest one under a root; ValueError if none."""
    return _cc.resolve_checkpoint(str(path))


def verify(path: os.PathLike) -> str:
    """Checks every file's size and CRC-32 and that every tensor is covered exactly once;
    returns a one-line summary, raises ValueError naming the first bad file."""
    return _cc.verify(resolve(path))


def read_full_state(path: os.PathLike, optimizer: bool = False) -> Dict[str, torch.Tensor]:
    """Every parameter (by model name, whole), every buffer and, with ``optimizer``,
    ``<name>.exp_avg`` / ``<name>.exp_avg_sq`` -- in one process, from any number of shards."""
    return _cc.read_full_state(resolve(path), optimizer)


def read_config(path: os.PathLike, overrides: Optional[List[str]] = None):
    """The checkpoint's config as a :class:`switchyard.Config` (``overrides`` applied)."""
    import switchyard

    resolved = resolve(path)
    return switchyard.config.loads_config(_cc.read_config_yaml(resolved), f"{resolved}/config.yaml",
                                          list(overrides or []))


def read_metadata(path: os.PathLike) -> Dict[str, Any]:
    return {k: json.loads(v) for k, v in _cc.read_metadata(resolve(path)).items()}


def load_model(path: os.PathLike, dtype: Optional[torch.dtype] = None):
    """A single-process :class:`switchyard.nn.MoETransformer` with the checkpoint's weights,
    built from its own config -- for evaluation and export, whatever ranks wrote it."""
    from .nn import MoETransformer

    cfg = read_config(path)
    model = MoETransformer.from_config(cfg)
    # Strict: a tensor missing from the checkpoint or one the model lacks is an error. A tied
    # head is stored once, as the embedding; the model's load_state_dict ties it back.
    try:
        model.load_state_dict(read_full_state(path))
    except RuntimeError as e:
        raise ValueError(f"checkpoint {resolve(path)} does not match its own model: {e}") from None
    if dtype is not None:
        model.to(dtype)
    return model


def export(path: os.PathLike, out: os.PathLike) -> Path:
    """Writes the checkpoint's model weights (no optimizer state) as one safetensors file with
    the model's parameter names (Hugging Face Llama / Mixtral style), and its config beside it
    as ``<out>.yaml``."""
    resolved = resolve(path)
    state = {k: v.contiguous() for k, v in read_full_state(resolved).items()}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _cc.write_safetensors(str(out), sorted(state.items()), {"format": "pt", "switchyard_checkpoint": resolved})
    out.with_suffix(".yaml").write_text(_cc.read_config_yaml(resolved))
    return out


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m switchyard.checkpoint",
                                     description="Inspect, verify and export switchyard checkpoints.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="the complete checkpoints under a directory")
    p.add_argument("root")
    p = sub.add_parser("verify", help="check every file's size and CRC-32 (exit 1 on damage)")
    p.add_argument("path", help="a checkpoint directory, or a root (its newest checkpoint)")
    p = sub.add_parser("export", help="the model weights as one safetensors file")
    p.add_argument("path")
    p.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            for step, path in list_checkpoints(args.root):
                meta = read_metadata(path)
                print(f"{step:>10}  {path}  {meta.get('trainer', {}).get('reason', '')}")
        elif args.command == "verify":
            print(verify(args.path))
        else:
            print(f"wrote {export(args.path, args.out)}")
    except ValueError as e:
        print(f"switchyard.checkpoint: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
