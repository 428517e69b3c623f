"""Process start-up and shut-down: MPI, this rank's place, its device, and the fatal path.

See docs/runtime.md. ``init()`` is safe to call several times and works both as a plain
process and under ``mpirun``.
"""

from __future__ import annotations

import atexit
import sys
import traceback

import torch

from . import _C

_info = None
_device = None


def init() -> "_C.ProcessInfo":
    """Initialise MPI once and return this process's ``ProcessInfo``.

    Also picks the device (the local rank's GPU when one is visible, else the CPU),
    finalises MPI at interpreter exit, and -- when the job has several ranks -- installs an
    exception hook so that an uncaught Python exception on one rank prints its traceback
    with the rank and aborts the whole job (``MPI_Abort``) instead of leaving the other
    ranks waiting for it forever.
    """
    global _info, _device
    if _info is not None:
        return _info
    _info = _C.init()
    _device = _C.select_device()
    atexit.register(finalize)
    if _info.world_size > 1:
        sys.excepthook = _abort_job_on_uncaught_exception
    return _info


def finalize() -> None:
    """Finalise MPI. Idempotent; called automatically at exit after :func:`init`."""
    _C.finalize()


def _require_init():
    if _info is None:
        raise RuntimeError("switchyard is not initialised: call switchyard.init() first")
    return _info


def rank() -> int:
    """This process's rank in the job (0 for a plain process)."""
    return _require_init().rank


def world_size() -> int:
    """The number of ranks in the job."""
    return _require_init().world_size


def local_rank() -> int:
    """This process's rank among the ranks on its host."""
    return _require_init().local_rank


def device() -> torch.device:
    """The device this rank computes on (chosen by :func:`init`)."""
    _require_init()
    return _device


def fatal(message: str) -> None:
    """Print ``message`` with this rank and abort every rank of the job. Never returns."""
    _C.fatal(message)


def _abort_job_on_uncaught_exception(exc_type, exc, tb):
    text = "".join(traceback.format_exception(exc_type, exc, tb)).rstrip()
    sys.stderr.write(text + "\n")
    sys.stderr.flush()
    _C.fatal(f"uncaught {exc_type.__name__}: {exc}")


def tune_host_allocator() -> bool:
    """Keep large CPU buffers in the heap between steps instead of re-mapping them.

    glibc maps every block above 32 MiB afresh and unmaps it on free, so each training step
    page-faults its large activations again. This raises glibc's mmap and trim thresholds
    for the whole process (the memory it reached is kept for reuse, as a caching allocator
    would). :func:`init` does it; benchmarks call it so every variant they compare runs with
    the same setting. ``SWITCHYARD_HOST_ALLOCATOR=system`` opts out. Returns whether the
    setting is in effect.
    """
    return _C.tune_host_allocator()
