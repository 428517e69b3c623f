"""Expert placement: which rank hosts each routed expert -- ``switchyard.placement``.

The solver is C++ (``csrc/switchyard/placement``, docs/placement.md): a GLPK MILP that
minimises the straggler rank's load plus a weighted cost for tokens that cross ranks (more
across nodes), optionally minus a reward for co-activated experts sharing a rank, warm-started
from greedy (longest-processing-time first) placement and stopped at a time limit::

    from switchyard import placement
    r = placement.solve(loads, ranks=8, slots=8, traffic=T_RE, time_limit=1.0)
    r["placement"]            # [E] rank of each expert (ExpertPlacement's rank_of_expert)
    r["objective"], r["bound"], r["gap"], r["status"], r["seconds"]

Loads are tokens per expert ([E]); traffic is tokens sent from each source rank to each
expert ([R, E]); coactivation is a symmetric [E, E] matrix of pair counts. Lists, numpy
arrays and tensors are accepted.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

from . import _C

_cp = _C.placement

__all__ = ["problem", "solve", "greedy", "contiguous", "evaluate"]


def _flat(name: str, value: Any, shape: Sequence[int]) -> List[float]:
    """Row-major float list of `value`, checked against `shape` (errors name both)."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().double().tolist()
    elif hasattr(value, "tolist"):
        value = value.tolist()
    got: List[int] = []
    rows = value
    for _ in shape:
        if not isinstance(rows, (list, tuple)):
            break
        got.append(len(rows))
        rows = rows[0] if len(rows) else []
    if got != list(shape):
        raise ValueError(f"placement: expected {name} of shape {list(shape)}, got shape {got}")
    out: List[float] = []

    def walk(v: Any, depth: int) -> None:
        if depth == len(shape):
            out.append(float(v))
            return
        if not isinstance(v, (list, tuple)) or len(v) != shape[depth]:
            raise ValueError(f"placement: expected {name} of shape {list(shape)}, got a ragged row")
        for x in v:
            walk(x, depth + 1)

    walk(value, 0)
    return out


def problem(loads: Any, ranks: int, slots: int, traffic: Any = None, coactivation: Any = None, *,
            ranks_per_node: int = 0, traffic_weight: float = 1.0, node_factor: float = 2.0,
            coactivation_weight: float = 0.0, coactivation_top_k: int = 256) -> "_cp.PlacementProblem":
    """Builds (and validates) the C++ PlacementProblem; see placement_problem.h for the cost model."""
    if hasattr(loads, "detach"):
        loads = loads.detach().cpu().double().tolist()
    elif hasattr(loads, "tolist"):
        loads = loads.tolist()
    p = _cp.PlacementProblem()
    p.load = [float(x) for x in loads]
    p.num_ranks = int(ranks)
    p.slots_per_rank = int(slots)
    E = len(p.load)
    if traffic is not None:
        p.traffic = _flat("traffic", traffic, (int(ranks), E))
        p.traffic_weight = float(traffic_weight)
    else:
        p.traffic_weight = 0.0
    if coactivation is not None:
        p.coactivation = _flat("coactivation", coactivation, (E, E))
        p.coactivation_weight = float(coactivation_weight)
    p.ranks_per_node = int(ranks_per_node)
    p.node_factor = float(node_factor)
    p.coactivation_top_k = int(coactivation_top_k)
    p.validate()
    return p


def solve(loads: Any, ranks: int, slots: int, traffic: Any = None, coactivation: Any = None, *,
          time_limit: float = 1.0, mip_gap: float = 1e-6, symmetry_breaking: bool = True,
          **weights: Any) -> Dict[str, Any]:
    """The MILP placement: a dict with placement (rank of each expert), objective, bound, gap,
    status ("optimal" | "time_limit" | "feasible"), seconds, and evaluate()'s cost fields.
    Raises ValueError for infeasible or malformed instances (e.g. more experts than slots)."""
    p = problem(loads, ranks, slots, traffic, coactivation, **weights)
    return _cp.solve(p, time_limit=float(time_limit), mip_gap=float(mip_gap),
                     symmetry_breaking=bool(symmetry_breaking))


def greedy(loads: Any, ranks: int, slots: int, traffic: Any = None, coactivation: Any = None,
           **weights: Any) -> List[int]:
    """Longest-processing-time-first placement (ignores traffic): the rank of each expert."""
    return _cp.greedy(problem(loads, ranks, slots, traffic, coactivation, **weights))


def contiguous(loads: Any, ranks: int, slots: int, **weights: Any) -> List[int]:
    """Contiguous blocks of experts on consecutive ranks (the dispatcher's default)."""
    return _cp.contiguous(problem(loads, ranks, slots, **weights))


def evaluate(placement: Sequence[int], loads: Any, ranks: int, slots: int, traffic: Any = None,
             coactivation: Any = None, **weights: Any) -> Dict[str, float]:
    """The cost model's terms for a placement: max_load, mean_load, imbalance (max/mean),
    cross_rank_tokens, cross_node_tokens, traffic_cost, coactivation_reward, objective."""
    p = problem(loads, ranks, slots, traffic, coactivation, **weights)
    return _cp.evaluate(p, [int(r) for r in placement])
