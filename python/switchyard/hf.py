"""Hugging Face checkpoints in and out: ``switchyard.hf`` (docs/huggingface.md).

The conversions are C++ (``csrc/switchyard/checkpoint/hf_import.*``, ``hf_export.*``); this
module wraps them and adds the command line::

    from switchyard import hf
    got = hf.import_checkpoint("Llama-3.2-1B")     # overrides, state, ignored, architecture
    cfg = switchyard.load_config("base.yaml", got["overrides"])
    model = hf.load_model("Llama-3.2-1B")          # a dense MoETransformer, float32
    hf.export("runs/demo/checkpoints", "demo-hf", format="mixtral")

From the shell::

    python -m switchyard.hf import HF_DIR --config base.yaml --out CKPT_ROOT
    python -m switchyard.hf export CKPT --out DIR --format mixtral|qwen2_moe [--ignore-capacity]

Imports read LlamaForCausalLM, MistralForCausalLM and Qwen2ForCausalLM directories
(config.json + model.safetensors or a sharded set with model.safetensors.index.json).
Exports write MixtralForCausalLM or Qwen2MoeForCausalLM directories that
``transformers.AutoModelForCausalLM.from_pretrained`` loads. Whatever a side cannot
express is refused with a ValueError naming the config.json field or our config key.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from . import _C

_hf = _C.hf

__all__ = ["read_config", "import_checkpoint", "model_from_import", "load_model", "export", "export_config",
           "save_as_checkpoint", "FORMATS"]

FORMATS = ("mixtral", "qwen2_moe")


def read_config(path: os.PathLike) -> Dict[str, Any]:
    """config.json of a Hugging Face directory, checked and mapped onto our ``model:`` keys:
    ``architecture``, the sizes under our names, ``overrides`` ("model.key=value" strings),
    ``ignored_fields`` (config.json fields that do not change the model). ValueError naming
    the field on anything unsupported."""
    return _hf.read_config(os.fspath(path))


def import_checkpoint(path: os.PathLike, dtype: Optional[torch.dtype] = torch.float32) -> Dict[str, Any]:
    """Reads a Hugging Face Llama / Mistral / Qwen2 directory.

    Returns a dict: ``overrides`` (``"model.key=value"`` strings; ``switchyard.load_config(base,
    overrides)`` builds the config), ``state`` (our parameter names -> CPU tensors, converted
    to ``dtype``; None keeps the stored dtype), ``ignored`` (source tensors skipped on purpose:
    RoPE ``inv_freq`` buffers, a tied ``lm_head.weight``), ``architecture``, ``ignored_fields``,
    ``files``, ``source_dtype`` and the sizes. ValueError naming the field or tensor (with the
    expected and actual shape) when the checkpoint is unsupported or inconsistent."""
    return _hf.import_checkpoint(os.fspath(path), dtype)


def model_from_import(imported: Dict[str, Any], dtype: torch.dtype = torch.float32):
    """The dense :class:`switchyard.nn.MoETransformer` an :func:`import_checkpoint` result
    describes, with its weights (single process)."""
    from .nn import MoETransformer

    fields = {key: imported[key] for key in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "ffn_hidden",
                                             "max_seq_len", "rope_theta", "norm_eps", "tie_embeddings", "qkv_bias")}
    if imported["init_std"] is not None:
        fields["init_std"] = imported["init_std"]
    model = MoETransformer(**fields, moe_layer_freq=0, first_k_dense=0, dtype=_dtype_name(dtype))
    model.load_state_dict(imported["state"], strict=True)
    return model


def load_model(path: os.PathLike, dtype: torch.dtype = torch.float32):
    """A single-process dense :class:`switchyard.nn.MoETransformer` with the weights of the
    Hugging Face directory ``path``, in ``dtype`` (float32 by default)."""
    return model_from_import(import_checkpoint(path, dtype), dtype)


def export(checkpoint: os.PathLike, out_dir: os.PathLike, format: str = "mixtral", ignore_capacity: bool = False,
           dtype: Optional[torch.dtype] = None) -> Dict[str, Any]:
    """Writes the switchyard MoE checkpoint ``checkpoint`` (a step directory, or a root: its
    newest checkpoint) as a Hugging Face directory ``out_dir`` (config.json +
    model.safetensors) in ``format`` "mixtral" or "qwen2_moe". ``out_dir`` must be new or
    empty; on error nothing is left behind. ``dtype`` converts the tensors (default: as
    stored, float32). Returns ``out_dir``, ``architecture``, ``num_tensors`` and ``notes``
    (settings that have no inference-time meaning and were dropped)."""
    return _hf.export_checkpoint(os.fspath(checkpoint), os.fspath(out_dir), format, bool(ignore_capacity), dtype)


def export_config(config, format: str = "mixtral", ignore_capacity: bool = False):
    """``(config.json text, notes)`` that exporting a model with this :class:`switchyard.Config`
    would write; raises ValueError naming our config key when ``format`` cannot express it.
    Reads no checkpoint: a quick check before training for a target format."""
    return _hf.export_config(config, format, bool(ignore_capacity))


def _dtype_name(dtype: torch.dtype) -> str:
    names = {torch.float32: "float32", torch.float64: "float64", torch.bfloat16: "bfloat16", torch.float16: "float16"}
    if dtype not in names:
        raise ValueError(f"switchyard.hf: unsupported dtype {dtype} (float32, float64, bfloat16, float16)")
    return names[dtype]


def save_as_checkpoint(path: os.PathLike, base_config: os.PathLike, out_root: os.PathLike,
                       overrides: Optional[List[str]] = None) -> str:
    """Writes the Hugging Face model in ``path`` as a one-rank switchyard checkpoint
    ``<out_root>/step_00000000``: the config is ``base_config`` with the checkpoint's
    ``model.*`` overrides (then ``overrides``), the optimizer moments are zero and the step is
    0 -- a fresh start. Returns the checkpoint directory."""
    import switchyard
    from . import checkpoint, comm
    from .nn import MoETransformer
    from .sharding import ShardedEngine

    imported = import_checkpoint(path, torch.float32)
    keys = list(imported["overrides"]) + list(overrides or [])
    cfg = switchyard.load_config(os.fspath(base_config), keys)
    model = MoETransformer.from_config(cfg)
    model.load_state_dict(imported["state"], strict=True)
    switchyard.init()
    # One process and one expert-parallel rank here; the checkpoint reshards on load, so the
    # run that resumes it may use any number of ranks and expert-parallel size.
    one_rank = switchyard.load_config(os.fspath(base_config), keys + ["parallel.expert_parallel=1"])
    engine = ShardedEngine(model, one_rank, comm.groups(one_rank))
    meta = {"hf_import": {"source": os.fspath(path), "architecture": imported["architecture"]}}
    return checkpoint.save(out_root, 0, engine, cfg, metadata=meta, keep_last=0)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m switchyard.hf",
                                     description="Import Hugging Face Llama/Mistral/Qwen2 checkpoints; export "
                                                 "switchyard MoE checkpoints as Mixtral or Qwen2-MoE.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("import", help="a Hugging Face directory -> a one-rank switchyard checkpoint (step 0)")
    p.add_argument("path", help="the Hugging Face model directory (config.json + safetensors)")
    p.add_argument("--config", required=True, help="base YAML config (train:, data:, ...); model: comes from config.json")
    p.add_argument("--out", required=True, help="checkpoint root: writes <out>/step_00000000")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="further config overrides")
    p = sub.add_parser("export", help="a switchyard MoE checkpoint -> a Hugging Face directory")
    p.add_argument("path", help="a checkpoint directory, or a root (its newest checkpoint)")
    p.add_argument("--out", required=True, help="the new Hugging Face directory")
    p.add_argument("--format", choices=FORMATS, default="mixtral")
    p.add_argument("--ignore-capacity", action="store_true",
                   help="export a model trained with moe.capacity_factor > 0 as one that drops no tokens")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                   help="convert the weights (default: as stored)")
    p = sub.add_parser("inspect", help="check a Hugging Face directory's config.json and print the overrides")
    p.add_argument("path")
    args = parser.parse_args(argv)
    try:
        if args.command == "import":
            out = save_as_checkpoint(args.path, args.config, args.out, args.set)
            print(f"wrote {out}")
        elif args.command == "export":
            dtype = getattr(torch, args.dtype) if args.dtype else None
            r = export(args.path, args.out, args.format, args.ignore_capacity, dtype)
            for note in r["notes"]:
                print(f"note: {note}")
            print(f"wrote {r['out_dir']} ({r['architecture']}, {r['num_tensors']} tensors)")
        else:
            c = read_config(args.path)
            print(c["architecture"])
            for o in c["overrides"]:
                print(f"  {o}")
            if c["ignored_fields"]:
                print(f"ignored config.json fields: {', '.join(c['ignored_fields'])}")
    except ValueError as e:
        print(f"switchyard.hf: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
