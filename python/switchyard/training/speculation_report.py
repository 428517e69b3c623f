"""What speculation did in a run (docs/speculation.md): every MoE block's dispatcher
counters, summed over the ranks of the job, written to ``speculation.json`` in the run
directory at the end of training and summarised in one log line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch


def job_counters(model, world) -> Optional[list]:
    """Per MoE block, its ExpertParallel counters summed over every rank (collective over
    ``world``); None when the model has no expert-parallel block."""
    eps = [layer.cpp_module.expert_parallelism for layer in model.moe_layers()]
    if not eps or any(ep is None or not hasattr(ep, "counters") for ep in eps):
        return None
    keys = list(eps[0].counters)
    t = torch.tensor([[ep.counters[k] for k in keys] for ep in eps], dtype=torch.int64)
    world.all_reduce(t)
    return [dict(zip(keys, row)) for row in t.tolist()]


def summary_line(layers: list, ranks: int, options: str) -> str:
    """One line: how the dispatches were sized and what they cost, per rank and dispatch."""
    tot = {k: sum(layer[k] for layer in layers) for k in layers[0]}
    n = max(tot["dispatches"], 1)  # rank-dispatches: every rank counts its own
    return (f"[switchyard] speculation ({options}): {tot['dispatches'] // max(ranks, 1)} dispatches per rank, "
            f"{100 * tot['speculative_dispatches'] / n:.0f}% speculative "
            f"({100 * tot['route_predicted_dispatches'] / n:.0f}% sized from predicted routes), "
            f"second round in {100 * tot['second_rounds'] / n:.1f}%, "
            f"{tot['collectives'] / n:.2f} collectives and {tot['host_syncs_before_payload'] / n:.2f} host syncs "
            f"before the payload per dispatch, {tot['padding_bytes'] / max(tot['bytes_moved'], 1):.1%} of bytes padding")


def write(path: Path, layers: list, ranks: int, options: str) -> None:
    path.write_text(json.dumps({"ranks": ranks, "options": options, "layers": layers}, indent=1) + "\n")
