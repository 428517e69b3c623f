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

Replicas of hot experts (the runtime still uses one host per expert; see docs/placement.md)::

    r = placement.solve_replicated(loads, ranks=8, slots=10, replica_budget=4)
    r["hosts"][e], r["shares"][e]   # ranks hosting expert e, fraction of its tokens on each

Projected MoE-layer time (cost_model.h)::

    m = placement.cost_model(hidden_size=4096, flops_per_token=6 * 4096 * 2048, rank_flops=4e14,
                             alpha_intra_s=..., beta_intra_Bps=..., alpha_inter_s=...,
                             beta_inter_Bps=..., ranks_per_node=8)
    placement.project_layer_time(r["hosts"], r["shares"], loads, 8, 10, traffic, model=m)
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

from . import _C

_cp = _C.placement

__all__ = ["problem", "solve", "greedy", "contiguous", "evaluate", "solve_replicated", "greedy_replicated",
           "evaluate_replicated", "check_fits", "single_host", "rank_loads", "rank_traffic", "cost_model",
           "project_layer_time", "LivePlacement"]

class LivePlacement:
    """Live expert re-placement during training (the ``placement:`` config section,
    docs/placement.md). The trainer drives it; tools and tests may too.

    ``LivePlacement(engine, cfg)`` attaches routing statistics to the engine's MoE layers
    (``engine``: a ``switchyard.sharding.ShardedEngine``). Every method is collective."""

    def __init__(self, engine, config) -> None:
        self._engine = engine  # the C++ object refers to it
        self._live = _C.placement.LivePlacement(getattr(engine, "_engine", engine), config)

    def after_step(self, step: int) -> Optional[Dict[str, Any]]:
        """Call after every optimizer step (``step``: steps done). None, or the decision made:
        ``step``, ``reason``, ``layers`` (per layer: ``old_objective`` / ``new_objective``,
        ``old_imbalance`` / ``new_imbalance`` (max/mean rank load), ``old_cross_rank`` /
        ``new_cross_rank`` (tokens per step leaving their rank), ``status``, ``gap``,
        ``solve_seconds``, ``adopted``, ``placement``), ``layers_changed``, ``experts_moved``,
        ``bytes_migrated``, ``solve_seconds``, ``migrate_seconds`` and ``text`` (log lines)."""
        return self._live.after_step(int(step))

    def replace_now(self, step: int, reason: str = "requested") -> Dict[str, Any]:
        """Solve from the statistics so far and move the experts now, whatever the schedule."""
        return self._live.replace_now(int(step), reason)

    def place_from_trace(self, path) -> Dict[str, Any]:
        """Solve from a routing trace file (docs/routing_trace.md) and move the experts; a trace
        of another model shape raises ValueError naming the file and the field."""
        return self._live.place_from_trace(str(path))

    def write_trace(self, path) -> None:
        """Write the job's routing statistics so far as a trace file (world rank 0 writes)."""
        self._live.write_trace(str(path))

    @property
    def steps(self) -> int:
        """Optimizer steps recorded so far."""
        return self._live.steps


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
            coactivation_weight: float = 0.0, coactivation_top_k: int = 256,
            replica_budget: int = 0) -> "_cp.PlacementProblem":
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
    p.replica_budget = int(replica_budget)
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


Hosts = List[List[int]]
Shares = List[List[float]]


def single_host(placement: Sequence[int]) -> "tuple[Hosts, Shares]":
    """(hosts, shares) of a one-host-per-expert placement (rank of each expert)."""
    return [[int(r)] for r in placement], [[1.0] for _ in placement]


def solve_replicated(loads: Any, ranks: int, slots: int, traffic: Any = None, coactivation: Any = None, *,
                     replica_budget: int, time_limit: float = 1.0, mip_gap: float = 1e-6,
                     symmetry_breaking: bool = True, **weights: Any) -> Dict[str, Any]:
    """The replica MILP: a dict with hosts ([E] ascending ranks hosting each expert), shares
    ([E] fraction of its tokens on each host), copies, objective, bound, gap, status, seconds
    and evaluate()'s cost fields. replica_budget = 0 gives solve()'s placement."""
    p = problem(loads, ranks, slots, traffic, coactivation, replica_budget=replica_budget, **weights)
    return _cp.solve_replicated(p, time_limit=float(time_limit), mip_gap=float(mip_gap),
                                symmetry_breaking=bool(symmetry_breaking))


def greedy_replicated(loads: Any, ranks: int, slots: int, traffic: Any = None, coactivation: Any = None, *,
                      replica_budget: int, **weights: Any) -> "tuple[Hosts, Shares]":
    """LPT with splitting of the hottest experts (equal shares): (hosts, shares)."""
    p = problem(loads, ranks, slots, traffic, coactivation, replica_budget=replica_budget, **weights)
    hosts, shares = _cp.greedy_replicated(p)
    return hosts, shares


def evaluate_replicated(hosts: Hosts, shares: Shares, loads: Any, ranks: int, slots: int, traffic: Any = None,
                        coactivation: Any = None, **weights: Any) -> Dict[str, float]:
    """evaluate() for a replicated placement (load and traffic split by the shares; a
    co-activated pair counts when both experts have the same host set)."""
    p = problem(loads, ranks, slots, traffic, coactivation, **weights)
    return _cp.evaluate_replicated(p, hosts, shares)


def check_fits(hosts: Hosts, shares: Shares, loads: Any, ranks: int, slots: int, *,
               replica_budget: int = 0) -> None:
    """Raises ValueError when the placement is malformed or breaks the slots or the budget."""
    _cp.check_fits(problem(loads, ranks, slots, replica_budget=replica_budget), hosts, shares)


def rank_loads(hosts: Hosts, shares: Shares, loads: Any, ranks: int, slots: int) -> List[float]:
    """[R] tokens each rank computes."""
    return _cp.rank_loads(problem(loads, ranks, slots), hosts, shares)


def rank_traffic(hosts: Hosts, shares: Shares, loads: Any, ranks: int, slots: int, traffic: Any) -> List[List[float]]:
    """[R, R] tokens sent from each source rank to each rank under the placement."""
    flat = _cp.rank_traffic(problem(loads, ranks, slots, traffic), hosts, shares)
    R = int(ranks)
    return [flat[s * R:(s + 1) * R] for s in range(R)]


def cost_model(*, hidden_size: int, flops_per_token: float, rank_flops: float, alpha_intra_s: float,
               beta_intra_Bps: float, alpha_inter_s: Optional[float] = None,
               beta_inter_Bps: Optional[float] = None, ranks_per_node: int = 0,
               dtype_bytes: float = 2.0) -> "_cp.CostModel":
    """The projected-time parameters (cost_model.h); inter-node values default to intra-node."""
    m = _cp.CostModel()
    m.hidden_size = int(hidden_size)
    m.dtype_bytes = float(dtype_bytes)
    m.flops_per_token = float(flops_per_token)
    m.rank_flops = float(rank_flops)
    m.alpha_intra_s = float(alpha_intra_s)
    m.beta_intra_Bps = float(beta_intra_Bps)
    m.alpha_inter_s = float(alpha_intra_s if alpha_inter_s is None else alpha_inter_s)
    m.beta_inter_Bps = float(beta_intra_Bps if beta_inter_Bps is None else beta_inter_Bps)
    m.ranks_per_node = int(ranks_per_node)
    m.validate()
    return m


def project_layer_time(hosts: Hosts, shares: Shares, loads: Any, ranks: int, slots: int, traffic: Any, *,
                       model: "_cp.CostModel") -> Dict[str, float]:
    """Projected forward time of one MoE layer under the placement: compute_s (the straggler),
    all_to_all_s (one all-to-all, slowest rank), total_s = compute_s + 2 * all_to_all_s."""
    p = problem(loads, ranks, slots, traffic)
    return _cp.project_layer_time(_cp.rank_loads(p, hosts, shares), _cp.rank_traffic(p, hosts, shares), model)
