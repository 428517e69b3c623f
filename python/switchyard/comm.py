"""Collectives between ranks on tensors: MPI for CPU tensors, NCCL for CUDA tensors.

The implementation is the C++ ``switchyard::comm::Communicator`` (``csrc/switchyard/comm``);
this module re-exports it with documentation and functions that default to the world
group. See docs/communication.md::

    import switchyard, switchyard.comm as comm
    switchyard.init()
    out = comm.all_to_all_v(x, send_splits=[2, 1], recv_splits=[1, 3])   # rows per peer
    comm.all_reduce(grad, "avg")                                          # in place
    work = comm.all_gather(t, async_op=True); ...; work.wait(); work.result

    groups = comm.groups(switchyard.load_config("configs/demo.yaml"))
    comm.all_to_all_v(x, s, r, group=groups.expert_parallel)

Every call is collective over its group: all its ranks make it, in the same order, with
matching arguments. A bad argument raises ``ValueError`` / ``TypeError`` before anything is
sent (under ``mpirun`` an uncaught one aborts the job through ``switchyard.init()``'s
exception hook); a failure inside MPI or NCCL prints the operation, the group, the rank and
the library's message and aborts every rank.

``async_op=True`` returns a :class:`Work` handle instead of the result: ``wait()`` blocks
(CPU) or orders the current CUDA stream after the transfer (CUDA, the host does not
block); ``is_completed()`` polls; ``result`` is the output tensor.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from . import _C

_native = _C.comm

Communicator = _native.Communicator
Work = _native.Work
ProcessGroups = _native.ProcessGroups

Splits = Union[Sequence[int], torch.Tensor]
Result = Union[torch.Tensor, Work]

_world: Optional[Communicator] = None


def world() -> Communicator:
    """The communicator over every rank of the job, named ``"world"``.

    Created on the first call (collective: every rank must make that first call) and
    reused afterwards. Needs :func:`switchyard.init` first.
    """
    global _world
    if _world is None:
        _world = Communicator.world()
    return _world


def groups(config, world_group: Optional[Communicator] = None) -> ProcessGroups:
    """The process groups of ``config.parallel`` (collective over the world).

    ``expert_parallel``: ``expert_parallel`` consecutive ranks, one copy of all experts
    (tokens are exchanged here); ``expert_data_parallel``: the ranks holding the same
    experts (``r % expert_parallel`` equal); ``data_parallel``: every rank (dense
    parameters). ``world size`` must equal ``expert_parallel * data_parallel``; otherwise
    ``ValueError`` names the keys. ``parallel.backend`` is applied to the three groups.
    """
    return ProcessGroups.create(config, world_group if world_group is not None else world())


def _host_splits(splits: Splits, name: str) -> list[int]:
    # Split counts size the transfer on the host. Reading them from a CUDA tensor would be
    # a hidden device synchronisation: the caller must do that explicitly.
    if isinstance(splits, torch.Tensor):
        if splits.device.type != "cpu":
            raise TypeError(
                f"{name} is a tensor on {splits.device}; split counts are read on the host, so move them "
                f"there explicitly (e.g. {name}.tolist()), making the synchronisation visible"
            )
        return [int(v) for v in splits.tolist()]
    return [int(v) for v in splits]


def _group(group: Optional[Communicator]) -> Communicator:
    return group if group is not None else world()


def all_to_all_v(
    send: torch.Tensor,
    send_splits: Splits,
    recv_splits: Splits,
    *,
    group: Optional[Communicator] = None,
    out: Optional[torch.Tensor] = None,
    async_op: bool = False,
) -> Result:
    """Exchange rows: ``send`` ``[sum(send_splits), *T]`` -> ``[sum(recv_splits), *T]``.

    ``send_splits[p]`` consecutive rows go to group rank ``p``; ``recv_splits[p]`` rows come
    from ``p`` and are stored in peer order. Splits are host integers (lists or CPU
    tensors), one per rank of the group; zeros are allowed. ``out`` may supply the
    contiguous output tensor.
    """
    s = _host_splits(send_splits, "send_splits")
    r = _host_splits(recv_splits, "recv_splits")
    return _group(group).all_to_all_v(send, s, r, out=out, async_op=async_op)


def all_gather(
    input: torch.Tensor,
    *,
    group: Optional[Communicator] = None,
    out: Optional[torch.Tensor] = None,
    async_op: bool = False,
) -> Result:
    """``[n, *T]`` from every rank (same shape everywhere) -> ``[size*n, *T]`` in rank order.
    A 0-dim tensor gathers into ``[size]``."""
    return _group(group).all_gather(input, out=out, async_op=async_op)


def reduce_scatter(
    input: torch.Tensor,
    op: str = "sum",
    *,
    group: Optional[Communicator] = None,
    out: Optional[torch.Tensor] = None,
    async_op: bool = False,
) -> Result:
    """``[size*n, *T]`` -> ``[n, *T]``: rank ``p`` gets the reduction of every rank's rows
    ``[p*n, (p+1)*n)``. ``op``: ``"sum"``, ``"avg"`` (floating dtypes), ``"max"``, ``"min"``."""
    return _group(group).reduce_scatter(input, op, out=out, async_op=async_op)


def all_reduce(
    tensor: torch.Tensor, op: str = "sum", *, group: Optional[Communicator] = None, async_op: bool = False
) -> Optional[Work]:
    """Reduce ``tensor`` (contiguous) over the group, in place. ``op`` as in
    :func:`reduce_scatter`. bfloat16/float16 on CPU are summed in float32 and rounded once."""
    return _group(group).all_reduce(tensor, op, async_op=async_op)


def broadcast(
    tensor: torch.Tensor, root: int = 0, *, group: Optional[Communicator] = None, async_op: bool = False
) -> Optional[Work]:
    """Overwrite ``tensor`` (contiguous) on every rank with group rank ``root``'s."""
    return _group(group).broadcast(tensor, root, async_op=async_op)


def barrier(*, group: Optional[Communicator] = None, async_op: bool = False) -> Optional[Work]:
    """Wait until every rank of the group has reached the barrier (host-level, over MPI)."""
    return _group(group).barrier(async_op=async_op)


__all__ = [
    "Communicator",
    "ProcessGroups",
    "Work",
    "all_gather",
    "all_reduce",
    "all_to_all_v",
    "barrier",
    "broadcast",
    "groups",
    "reduce_scatter",
    "world",
]
