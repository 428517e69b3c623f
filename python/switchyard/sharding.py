"""FSDP-style sharded training: ``switchyard.sharding.ShardedEngine``.

The engine is C++ (``csrc/switchyard/sharding``, docs/sharding.md). It drives a model that
describes itself as a chain of units (``switchyard::nn::UnitSequence``): dense parameters
are flattened per unit and sharded over every rank (gathered just before a unit runs,
freed after, gradients reduce-scattered), routed experts are spread over the
expert-parallel group, and AdamW keeps float32 master weights and state for the local
shard only::

    import switchyard, switchyard.comm as comm
    from switchyard.sharding import ShardedEngine
    switchyard.init()
    cfg = switchyard.load_config("configs/tiny.yaml")
    engine = ShardedEngine(model, cfg)                 # collective
    out = engine.step([(input_ids, targets)] * cfg.train.grad_accum, lr=3e-4)
    out["loss"], out["grad_norm"], out["clipped"], out["skipped"]

Every method that runs the model is collective over the world.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence, Tuple, Union

import torch

from . import _C
from . import comm as _comm
from .nn._cpp_module import CppChild, adopt_children

ShardingOptions = _C.sharding.ShardingOptions

__all__ = ["ShardedEngine", "ShardingOptions", "ToyMoEStack"]

MicroBatch = Tuple[torch.Tensor, torch.Tensor]


class ToyMoEStack(_C.sharding.ToyMoEStack):
    """The engine's test and benchmark model (csrc/switchyard/sharding/toy_model.h):
    embedding -> ``num_blocks`` residual blocks alternating MLP and MoELayer (``moe``: a
    :class:`switchyard.nn.MoELayerOptions`) -> linear head + cross entropy.
    ``model(input_ids, targets)`` returns ``(loss, aux_loss)``."""

    def __init__(self, vocab: int, num_blocks: int, mlp_hidden: int, moe, tie_embeddings: bool = False) -> None:
        super().__init__(vocab, num_blocks, mlp_hidden, tie_embeddings, moe)
        adopt_children(self)

    __repr__ = CppChild.__repr__


class ShardedEngine:
    """Trains ``model`` sharded over the job (see the module docstring).

    ``model``: a switchyard C++ model implementing ``UnitSequence`` (a Python wrapper with
    ``.cpp_module``, or the bound C++ module itself); anything else raises ``TypeError``.
    Every rank must build it identically (same seed); its MoE layers become
    expert-parallel over ``parallel.expert_parallel`` ranks and its dense parameters
    belong to the engine: on more than one rank they are empty tensors between steps
    (read them with :meth:`gather_dense_parameters`).
    ``config``: a :class:`switchyard.Config` (``parallel:`` and ``train:`` sections).
    ``groups``: a :class:`switchyard.comm.ProcessGroups`, or a world
    :class:`switchyard.comm.Communicator` to derive them from, or None (``comm.world()``).
    ``options``: overrides the :class:`ShardingOptions` read from ``config``.
    """

    def __init__(self, model, config, groups=None, options: Optional[ShardingOptions] = None) -> None:
        if isinstance(groups, _comm.ProcessGroups):
            pg = groups
        else:
            pg = _comm.groups(config, groups)
        opts = options if options is not None else ShardingOptions.from_config(config)
        self._engine = _C.sharding.ShardedEngine(model, pg, opts)
        if hasattr(model, "cpp_module"):
            adopt_children(model)  # expert parallelism replaced the MoE layers' `experts`
        self.model = model
        self.groups = pg

    def step(self, micro_batches: Sequence[MicroBatch], lr: float) -> dict:
        """One optimizer step over this rank's ``train.grad_accum`` micro-batches
        ``(input_ids, targets)`` (int64 ``[B, S]``). Returns a dict: ``loss`` and
        ``aux_loss`` (means over ranks and micro-batches), ``grad_norm`` (before clipping),
        ``clip_coef``, ``clipped``, ``skipped`` (non-finite gradient: no update),
        ``loss_scale``, ``bytes_gathered`` / ``bytes_reduced`` / ``bytes_expert_reduced``
        (this rank's traffic), ``max_units_gathered``, ``seconds`` and ``stats`` (each
        unit's last-micro-batch statistics, ``"<unit>.<name>"``)."""
        return self._engine.step(list(micro_batches), float(lr))

    def eval_loss(self, micro_batches: Sequence[MicroBatch]) -> float:
        """Mean language-model loss over the micro-batches of every rank, in eval mode, no
        gradients. The aux losses (load balancing, z-loss) are training regularisers and are
        not included, so MoE and dense models compare on the same quantity."""
        return self._engine.eval_loss(list(micro_batches))

    def locate_non_finite(self, input_ids: torch.Tensor, targets: torch.Tensor) -> dict:
        """Where a non-finite loss comes from: runs the micro-batch forward unit by unit (no
        gradients, no update) and returns ``{"unit": i, "unit_name": ..., "ranks": [...]}`` for
        the first unit, over every rank, whose outputs hold a NaN or Inf (``unit`` -1 when all
        stay finite). Collective; meant for a run about to stop."""
        return self._engine.locate_non_finite(input_ids, targets)

    def shard_state_dict(self) -> dict:
        """This rank's shard: flat master weights and AdamW moments per unit, this rank's
        experts, ``step`` and ``loss_scale`` -- a dict of tensors."""
        return self._engine.shard_state_dict()

    def load_shard_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore what :meth:`shard_state_dict` returned on this rank (same layout)."""
        self._engine.load_shard_state_dict(dict(state))

    def gather_dense_parameters(self) -> dict:
        """Every dense parameter, whole, by name (collective)."""
        return self._engine.gather_dense_parameters()

    def local_expert_parameters(self) -> dict:
        """This rank's expert parameters by name (rows: its local experts)."""
        return self._engine.local_expert_parameters()

    def expert_layers(self) -> list:
        """The expert-parallel MoE layers in model order: ``[{"name", "num_experts",
        "placement"}]`` (``placement[e]``: the rank of the expert-parallel group holding
        expert e); empty without expert parallelism."""
        return self._engine.expert_layers()

    def set_expert_placements(self, placements: Sequence[Sequence[int]]) -> dict:
        """Live re-placement: moves every expert whose rank changes, with its master weights
        and AdamW moments, so that layer i follows ``placements[i]``, and switches the
        dispatchers (docs/placement.md). Between steps; collective; every rank passes the same
        maps. Returns what this rank moved: layers_changed, experts_sent / experts_received,
        bytes_sent / bytes_received, seconds."""
        return self._engine.set_expert_placements([list(map(int, p)) for p in placements])

    def memory_report(self) -> dict:
        """Dense-parameter bytes on this rank: ``persistent_dense_bytes`` (shards),
        ``unsharded_dense_bytes`` (the same state unsharded), ``largest_unit_bytes``,
        ``peak_transient_bytes`` (gathered units + gradient buffers, last step), the
        engine allocator's ``allocator_current_bytes`` / ``allocator_peak_bytes``, and
        ``expert_bytes``."""
        return self._engine.memory_report()

    def analytic_dense_bytes_per_micro_batch(self) -> float:
        """ZeRO-3's traffic per rank per micro-batch: 2 all-gathers + 1 reduce-scatter."""
        return self._engine.analytic_dense_bytes_per_micro_batch()

    @property
    def optimizer_step(self) -> int:
        return self._engine.optimizer_step

    @property
    def loss_scale(self) -> float:
        return self._engine.loss_scale
