"""Expert parallelism: spread an MoE layer's routed experts over the ranks of a group.

The implementation is C++ (``csrc/switchyard/dispatch``): an all-to-all token dispatcher
that sends each token at most once to each rank holding one of its experts, runs the local
experts on contiguous blocks and sends one weighted partial sum per (token, rank) back.
See docs/dispatch.md::

    import switchyard, switchyard.comm as comm
    from switchyard.dispatch import ExpertPlacement, distribute
    switchyard.init()
    torch.manual_seed(0)
    layer = switchyard.nn.MoELayer(d_model=64, num_experts=8, top_k=2, ffn_hidden=128)
    group = comm.world()                       # or comm.groups(cfg).expert_parallel
    distribute(layer, group)                   # contiguous placement; keeps local experts
    y = layer(x_local).output                  # collective over the group

A layer built with the same seed on every rank keeps exactly the single-process weights of
its experts; :func:`load_global_state_dict` loads a single-process state dict (all ``E``
experts) into a distributed layer whatever its placement.
"""

from __future__ import annotations

from typing import Mapping, Optional

import torch

from . import _C
from .nn._cpp_module import adopt_children

ExpertPlacement = _C.dispatch.ExpertPlacement
ExpertParallel = _C.dispatch.ExpertParallel
check_same_config = _C.dispatch.check_same_config
TokenDispatcher = _C.dispatch.TokenDispatcher
SpeculationOptions = _C.dispatch.SpeculationOptions

__all__ = ["ExpertPlacement", "ExpertParallel", "SpeculationOptions", "TokenDispatcher", "check_same_config",
           "distribute", "distribute_model", "load_global_state_dict"]


def distribute(layer, group, placement: Optional[ExpertPlacement] = None,
               speculation: Optional[SpeculationOptions] = None) -> ExpertParallel:
    """Make ``layer`` (a :class:`switchyard.nn.MoELayer`) expert-parallel over ``group``.

    ``placement`` defaults to contiguous blocks; ``speculation`` to the defaults of the
    ``speculation:`` config section (docs/speculation.md). The layer keeps only its rank's experts
    (their current weights); its forward becomes collective over ``group``. Returns the
    :class:`ExpertParallel` (``.last_stats`` reports the bytes of the latest dispatch).
    """
    if placement is None:
        placement = ExpertPlacement.contiguous(layer.options.num_experts, group.size)
    ep = ExpertParallel(group, placement, speculation)
    layer.cpp_module.enable_expert_parallel(ep)
    adopt_children(layer)  # `experts` is a new C++ module: refresh the Python views
    return ep


def distribute_model(model, group, placement: Optional[ExpertPlacement] = None,
                     speculation: Optional[SpeculationOptions] = None) -> list:
    """Make every MoE block of ``model`` (a :class:`switchyard.nn.MoETransformer`)
    expert-parallel over ``group``, as :func:`distribute` does for one layer.

    ``placement`` (default: contiguous blocks) applies to every block. Each block gets its
    own :class:`ExpertParallel`; they are returned in block order. Call once, before
    creating the optimizer: the expert weights are replaced by this rank's rows.
    """
    layers = model.cpp_module.moe_layers()
    if layers and placement is None:
        placement = ExpertPlacement.contiguous(layers[0].options.num_experts, group.size)
    eps = []
    for layer in layers:
        ep = ExpertParallel(group, placement, speculation)
        layer.enable_expert_parallel(ep)
        eps.append(ep)
    adopt_children(model)  # new `experts` C++ modules: refresh every Python view
    return eps


def load_global_state_dict(layer, state_dict: Mapping[str, torch.Tensor], strict: bool = True):
    """Load a state dict whose ``experts.*`` hold all ``E`` experts (a single-process
    layer's) into ``layer``, taking the rows of the experts this rank holds."""
    sd = dict(state_dict)
    names = ("gate_proj", "up_proj", "down_proj")
    full = {n: sd.pop(f"experts.{n}", None) for n in names}
    if full["up_proj"] is None or full["down_proj"] is None:
        raise KeyError("load_global_state_dict: expected experts.up_proj and experts.down_proj")
    gate = full["gate_proj"] if full["gate_proj"] is not None else torch.Tensor()
    layer.cpp_module.load_global_expert_weights(gate, full["up_proj"], full["down_proj"])
    own = layer.state_dict()
    for n in names:
        key = f"experts.{n}"
        if key in own:
            sd[key] = own[key]
    return layer.load_state_dict(sd, strict=strict)
