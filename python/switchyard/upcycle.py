"""Upcycling dense checkpoints into MoEs, and MoEs into larger MoEs: ``switchyard.upcycle``.

The methods are C++ (``csrc/switchyard/checkpoint/upcycle.h``, docs/upcycling.md): a
dense model's FFN becomes the experts (copies, partly re-drawn copies, or segments) and
optionally the shared expert; an E-expert MoE becomes an m*E-expert MoE by duplication with
top-k held fixed. The result is a step-0 switchyard checkpoint: train from it with
``--set checkpoint.resume=<out>``::

    python -m switchyard.upcycle --from runs/dense/checkpoints --config configs/moe.yaml \\
        --out runs/upcycled [--method sparse|drop|fine_grained] [--noise 0.01] [--set k=v ...]

``--from`` is a switchyard checkpoint (a ``step_*`` directory or a root holding them) or a
Hugging Face Llama / Mistral / Qwen2 directory (``config.json`` + safetensors).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from . import _C

UpcycleOptions = _C.checkpoint.UpcycleOptions

__all__ = ["UpcycleOptions", "options", "upcycle_state", "upcycle", "expert_utility", "copies_by_utility", "main"]


def options(method: str = "sparse", noise: float = 0.0, drop_fraction: float = 0.5, shared_fraction: float = 0.5,
            router_std: float = 0.0, seed: int = 0, extra_copies: Optional[List[List[int]]] = None) -> UpcycleOptions:
    """An :class:`UpcycleOptions` (see docs/upcycling.md for each field)."""
    o = UpcycleOptions()
    o.method, o.noise, o.drop_fraction = method, float(noise), float(drop_fraction)
    o.shared_fraction, o.router_std, o.seed = float(shared_fraction), float(router_std), int(seed)
    o.extra_copies = [list(map(int, layer)) for layer in (extra_copies or [])]
    return o


def expert_utility(model, batches) -> List[torch.Tensor]:
    """Per MoE layer (block order), each expert's utility: |sum over its weights of
    gradient x weight|, accumulated over ``batches`` of ``(input_ids, targets)`` -- the
    first-order estimate of how much the loss would change without the expert (the
    gradient-based importance of the Expert Upcycling paper's non-uniform duplication)."""
    layers = model.moe_layers()
    model.train()
    model.zero_grad(set_to_none=True)
    for input_ids, targets in batches:
        out = model(input_ids, targets)
        (out.loss + (out.aux_loss if out.aux_loss is not None else 0)).backward()
    scores = []
    for layer in layers:
        total = None
        for name, w in layer.named_parameters():
            if not name.startswith("experts.") or w.grad is None:
                continue
            s = (w.grad * w).detach().flatten(1).sum(1)
            total = s if total is None else total + s
        scores.append(total.abs())
    model.zero_grad(set_to_none=True)
    return scores


def copies_by_utility(scores: List[torch.Tensor], m: int) -> List[List[int]]:
    """(m-1)*E extra copies per layer shared out in proportion to utility (largest
    remainder), so useful experts are duplicated more: the ``extra_copies`` option."""
    out = []
    for s in scores:
        E = s.numel()
        slots = (m - 1) * E
        share = s.double() / s.double().sum().clamp_min(1e-30) * slots
        counts = share.floor().long()
        rest = int(slots - counts.sum())
        counts[torch.argsort(share - counts.double(), descending=True, stable=True)[:rest]] += 1
        out.append([e for e in range(E) for _ in range(int(counts[e]))])
    return out


def upcycle_state(state: Dict[str, torch.Tensor], from_config, to_config, opts: Optional[UpcycleOptions] = None) -> dict:
    """The target model's state from a source state dict (switchyard parameter names):
    ``{"state", "preserves_function", "reason", "consumed"}``. Every source tensor must be
    consumed, or ValueError names the first left over."""
    return _C.checkpoint.upcycle(dict(state), from_config, to_config, opts or options())


def _is_hf_directory(path: Path) -> bool:
    return (path / "config.json").is_file() and not (path / "index.json").is_file()


def _hf_source(path: Path, target):
    """(state, from_config) of a Hugging Face dense checkpoint, its model section mapped onto
    the target config with MoE layers switched off."""
    import switchyard
    from . import hf

    imported = hf.import_checkpoint(path)
    from_cfg = switchyard.config.loads_config(target.to_yaml(), f"{path} (imported)",
                                              list(imported["overrides"]) + ["model.moe_layer_freq=0"])
    return imported["state"], from_cfg


def upcycle(source, target, out, opts: Optional[UpcycleOptions] = None) -> dict:
    """Upcycles ``source`` (switchyard checkpoint or Hugging Face directory) into the model
    of ``target`` (a :class:`switchyard.Config`) and writes a step-0 checkpoint under ``out``.
    Returns the result dict of :func:`upcycle_state` (without the state) plus ``path``."""
    from . import checkpoint
    from ._runtime import init

    init()  # writing the checkpoint runs the engine (MPI: alone, or every rank of a job)
    opts = opts or options()
    source = Path(source)
    if _is_hf_directory(source):
        state, from_cfg = _hf_source(source, target)
        result = upcycle_state(state, from_cfg, target, opts)
        meta = {"source": str(source), "method": opts.method, "noise": opts.noise,
                "preserves_function": result["preserves_function"], "reason": result["reason"]}
        path = _C.checkpoint.write_initial_checkpoint(result["state"], target, str(out),
                                                      {"upcycled": json.dumps(meta)})
    else:
        result = _C.checkpoint.upcycle_checkpoint(str(source), target, str(out), opts)
        path = checkpoint.latest(out)
    result.pop("state", None)
    result["path"] = path
    return result


def _utility_copies(source, target, num_batches: int) -> List[List[int]]:
    """extra_copies for an MoE checkpoint `source` grown into `target`, from the utility of
    its experts on `num_batches` training batches of the source's own data config."""
    from . import checkpoint
    from .data import build_dataset

    src_cfg = checkpoint.read_config(source)
    model = checkpoint.load_model(source)
    train, _, _ = build_dataset(src_cfg, 0, 1)
    batches = [train.next_batch(src_cfg.train.micro_batch_size) for _ in range(num_batches)]
    m = target.moe.num_experts // src_cfg.moe.num_experts
    return copies_by_utility(expert_utility(model, batches), m)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m switchyard.upcycle", description=__doc__.split("\n\n")[0])
    parser.add_argument("--from", dest="source", required=True,
                        help="a switchyard checkpoint (or a directory of them), or a Hugging Face model directory")
    parser.add_argument("--config", required=True, help="the target model's YAML config")
    parser.add_argument("--out", required=True, help="directory for the upcycled (step 0) checkpoint")
    parser.add_argument("--method", default="sparse", choices=["sparse", "drop", "fine_grained"],
                        help="dense -> MoE: copies, Drop-Upcycling, or fine-grained segments (ignored for MoE sources)")
    parser.add_argument("--noise", type=float, default=0.0, help="relative std of noise added to the copies")
    parser.add_argument("--drop-fraction", type=float, default=0.5, help="drop: share of each expert re-drawn")
    parser.add_argument("--shared-fraction", type=float, default=0.5,
                        help="with a shared expert: the share of the dense FFN's output it carries")
    parser.add_argument("--router-std", type=float, default=0.0, help="router init std (0 = zeros)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--utility-batches", type=int, default=0,
                        help="expert upcycling: duplicate experts in proportion to a gradient-based utility "
                             "measured on this many training batches of the source's data (0 = every expert m times)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of the target config")
    args = parser.parse_args(argv)

    import switchyard
    from switchyard.config import ConfigError

    switchyard.init()
    try:
        target = switchyard.load_config(args.config, overrides=args.overrides)
        extra = None
        if args.utility_batches > 0:
            extra = _utility_copies(args.source, target, args.utility_batches)
        result = upcycle(args.source, target, args.out,
                         options(args.method, args.noise, args.drop_fraction, args.shared_fraction,
                                 args.router_std, args.seed, extra))
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"switchyard.upcycle: {e}", file=sys.stderr, flush=True)
        return 2
    verdict = "yes" if result["preserves_function"] else "no"
    print(f"[switchyard.upcycle] {args.source} -> {result['path']} ({target.moe.num_experts} experts, "
          f"top-{target.moe.top_k}, method {args.method}, {len(result['consumed'])} source tensors consumed)\n"
          f"[switchyard.upcycle] function preserved at initialisation: {verdict} ({result['reason']})\n"
          f"[switchyard.upcycle] train from it: --set checkpoint.resume={result['path']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
