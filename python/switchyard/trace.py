"""Routing statistics and routing trace files -- ``switchyard.trace``.

The statistics are C++ (``csrc/switchyard/placement/routing_statistics.h``,
docs/routing_trace.md). Per MoE layer, from each rank's own tokens (kept slots only), with no
communication while recording:

* ``tokens`` [E] and ``tokens_ema`` [E] (EMA of the per-step counts, folded by ``end_step``)
* ``traffic`` [R, E]: tokens sent from source rank s to expert e (a rank fills its own row)
* ``coactivation`` [E, E]: tokens that chose both e and f (symmetric, zero diagonal)
* ``transitions`` [E, E_next]: tokens that chose i here and j at the next MoE layer

::

    from switchyard import trace
    stats = trace.for_model(model, num_source_ranks=ep_size, source_rank=ep_rank)
    ...                                   # training forwards record; call stats.end_step()
    total = stats.reduced(world)          # collective: summed over the job
    if world.rank == 0:
        trace.save("routing.safetensors", total, world_size=world.size)
    t = trace.load("routing.safetensors")  # validated; t.statistics.layer(0)["traffic"]

``python -m switchyard.trace FILE [--json]`` summarises a trace file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any, Dict, List, Optional, Sequence

import torch

from . import _C

_ct = _C.trace

__all__ = ["RoutingStatistics", "Trace", "for_model", "moe_layers", "save", "load", "check_matches",
           "summarize", "format_summary", "main"]

#: The C++ class. ``RoutingStatistics(experts_per_layer, num_source_ranks=1, source_rank=0,
#: ema_decay=0.9)``; methods ``record(layer, topk_experts [T,K] int64, kept [T,K] bool)``,
#: ``end_step()``, ``reset()``, ``layer(l) -> dict`` (num_experts, tokens, tokens_ema,
#: traffic, coactivation, transitions or None, transitions_skipped; float64 copies),
#: ``reduced(communicator)`` (collective), ``attach(model) -> int``, ``detach(model)``
#: (static), ``clone()``, ``placement_problem(layer, use_ema=True)``; properties ``steps``,
#: ``num_layers``, ``num_source_ranks``, ``source_rank``, ``ema_decay``,
#: ``experts_per_layer``, ``layer_info``.
RoutingStatistics = _ct.RoutingStatistics


@dataclasses.dataclass
class Trace:
    """A loaded trace file: the (reduced) statistics and where they came from."""
    path: str
    format_version: int
    statistics: Any  # RoutingStatistics, source_rank 0
    total_tokens: List[float]
    created: Dict[str, Any]


def moe_layers(model) -> List[Dict[str, Any]]:
    """The MoE layers of a switchyard C++ model (a wrapper with ``.cpp_module`` or the bound
    module) in forward order: ``name``, ``num_experts``, ``top_k``, ``router``, ``observed``."""
    return _ct.moe_layers(model)


def for_model(model, num_source_ranks: int = 1, source_rank: int = 0, ema_decay: float = 0.9):
    """A RoutingStatistics sized for ``model``'s MoE layers and attached to them: every
    training forward with grad enabled records. ``num_source_ranks``/``source_rank``: the
    expert-parallel group's size and this rank's index in it (1 / 0 without expert
    parallelism)."""
    experts = [layer["num_experts"] for layer in moe_layers(model)]
    if not experts:
        raise ValueError("switchyard.trace.for_model: the model has no MoE layer")
    stats = RoutingStatistics(experts, num_source_ranks, source_rank, ema_decay)
    stats.attach(model)
    return stats


def save(path: str, statistics, world_size: int = 0, note: str = "") -> None:
    """Write ``statistics`` (normally ``reduced`` over the job; call on one rank) to ``path``
    atomically as a safetensors trace file."""
    _ct.save_trace(str(path), statistics, int(world_size), str(note))


def load(path: str) -> Trace:
    """Read and validate a trace; ``ValueError`` naming the file and the field otherwise."""
    d = _ct.load_trace(str(path))
    return Trace(path=d["path"], format_version=d["format_version"], statistics=d["statistics"],
                 total_tokens=list(d["total_tokens"]), created=dict(d["created"]))


def check_matches(trace: Trace, experts_per_layer: Sequence[int], num_ranks: int) -> None:
    """``ValueError`` when ``trace`` was recorded on a model of another shape (MoE layers,
    experts per layer, expert-parallel size)."""
    _ct.check_trace_matches(trace.path, trace.statistics, [int(e) for e in experts_per_layer], int(num_ranks))


# --- summary ---------------------------------------------------------------------------------

def contiguous_ranks(num_experts: int, num_ranks: int) -> Optional[List[int]]:
    """ExpertPlacement.contiguous: the first E % R ranks hold E // R + 1 experts, the others
    E // R. None when E < R (no contiguous placement)."""
    if num_experts < num_ranks:
        return None
    base, extra = divmod(num_experts, num_ranks)
    ranks: List[int] = []
    for r in range(num_ranks):
        ranks += [r] * (base + (1 if r < extra else 0))
    return ranks


def _load_stats(v: torch.Tensor) -> Dict[str, float]:
    total = float(v.sum())
    mean = total / v.numel()
    mx = float(v.max())
    return {"max": mx, "mean": mean, "max_over_mean": mx / mean if mean > 0 else 0.0}


def summarize(trace: Trace, top: int = 3) -> Dict[str, Any]:
    """Per-layer numbers of a trace (what the CLI prints): tokens (kept slots: a token with k
    experts counts k times), expert load (total and
    EMA: max, mean, max/mean), the ``top`` hottest experts, the fraction of tokens that cross
    ranks under contiguous placement, the ``top`` co-activated pairs (count and fraction of slots) and the transition
    concentration (the fraction of (layer-L choice, layer-L+1 choice) pairs whose layer-L+1
    expert is the most frequent successor of the layer-L expert)."""
    s = trace.statistics
    R = s.num_source_ranks
    layers = []
    for l in range(s.num_layers):
        d = s.layer(l)
        E = d["num_experts"]
        tokens, ema = d["tokens"], d["tokens_ema"]
        total = float(tokens.sum())
        hot = torch.argsort(tokens, descending=True, stable=True)[:top].tolist()
        ranks = contiguous_ranks(E, R)
        cross = None
        if ranks is not None and total > 0:
            rank_of = torch.tensor(ranks)
            mask = torch.arange(R).unsqueeze(1) != rank_of.unsqueeze(0)  # [R, E]
            cross = float(d["traffic"][mask].sum()) / float(d["traffic"].sum())
        co = d["coactivation"]
        iu = torch.triu_indices(E, E, offset=1)
        pair_counts = co[iu[0], iu[1]]
        order = torch.argsort(pair_counts, descending=True, stable=True)[:top].tolist()
        pairs = [{"experts": [int(iu[0, i]), int(iu[1, i])], "tokens": float(pair_counts[i]),
                  "fraction_of_slots": float(pair_counts[i]) / total if total > 0 else 0.0}
                 for i in order if float(pair_counts[i]) > 0]
        layer: Dict[str, Any] = {
            "layer": l,
            "name": s.layer_info[l]["name"],
            "num_experts": E,
            "tokens": total,
            "load": _load_stats(tokens),
            "load_ema": _load_stats(ema),
            "hottest": [{"expert": e, "tokens": float(tokens[e]),
                         "share": float(tokens[e]) / total if total > 0 else 0.0} for e in hot],
            "cross_rank_fraction_contiguous": cross,
            "top_coactivated": pairs,
            "transitions_skipped": d["transitions_skipped"],
        }
        tr = d["transitions"]
        if tr is not None:
            pairs_total = float(tr.sum())
            layer["transition_concentration"] = (float(tr.max(dim=1).values.sum()) / pairs_total
                                                 if pairs_total > 0 else None)
            layer["transition_uniform_baseline"] = 1.0 / tr.shape[1]
        layers.append(layer)
    return {"path": trace.path, "format_version": trace.format_version, "steps": s.steps,
            "num_layers": s.num_layers, "num_ranks": R, "experts_per_layer": list(s.experts_per_layer),
            "ema_decay": s.ema_decay, "created": trace.created, "layers": layers}


def _pct(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{100.0 * x:.1f}%"


def format_summary(summary: Dict[str, Any]) -> str:
    """The human-readable form of :func:`summarize`."""
    out = [f"routing trace {summary['path']} (format {summary['format_version']}): "
           f"{summary['num_layers']} MoE layers, experts {summary['experts_per_layer']}, "
           f"{summary['num_ranks']} expert-parallel ranks, {summary['steps']} steps "
           f"(EMA decay {summary['ema_decay']})"]
    c = summary["created"]
    if c.get("utc"):
        out.append(f"recorded {c['utc']} on {c.get('host', '?')}, world size {c.get('world_size', 0)}"
                   + (f", {c['note']}" if c.get("note") else ""))
    for l in summary["layers"]:
        name = f" ({l['name']})" if l["name"] else ""
        out.append(f"layer {l['layer']}{name}: {l['tokens']:.0f} routed slots (token-expert assignments) "
                   f"over {l['num_experts']} experts")
        for key, label in (("load", "total"), ("load_ema", "EMA")):
            v = l[key]
            out.append(f"  load {label}: max {v['max']:.1f}, mean {v['mean']:.1f}, max/mean {v['max_over_mean']:.3f}")
        hot = ", ".join(f"{h['expert']} ({_pct(h['share'])})" for h in l["hottest"])
        out.append(f"  hottest experts: {hot}")
        out.append(f"  cross-rank tokens under contiguous placement: {_pct(l['cross_rank_fraction_contiguous'])}")
        pairs = ", ".join(f"{p['experts'][0]}+{p['experts'][1]} ({p['tokens']:.0f}, {_pct(p['fraction_of_slots'])} of slots)"
                          for p in l["top_coactivated"]) or "none"
        out.append(f"  top co-activated pairs: {pairs}")
        if "transition_concentration" in l:
            out.append(f"  transition concentration: {_pct(l['transition_concentration'])} "
                       f"(uniform {_pct(l['transition_uniform_baseline'])}), skipped records {l['transitions_skipped']}")
    return "\n".join(out)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m switchyard.trace",
                                     description="Summarise a switchyard routing trace file.")
    parser.add_argument("file", help="a routing trace (.safetensors) written by switchyard")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--top", type=int, default=3, help="hottest experts and pairs to list (default 3)")
    args = parser.parse_args(argv)
    try:
        summary = summarize(load(args.file), top=args.top)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1) if args.json else format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
