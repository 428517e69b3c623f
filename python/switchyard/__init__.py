"""switchyard: distributed Mixture-of-Experts training in C++/CUDA, driven from Python.

The compute lives in the C++ extension ``switchyard._C`` (and the operators it registers as
``torch.ops.switchyard.*``); this package re-exports it with documentation.

    import switchyard
    info = switchyard.init()            # MPI start-up (plain process or under mpirun)
    cfg = switchyard.load_config("configs/demo.yaml", overrides=["moe.top_k=2"])
    routing = switchyard.ops.route_topk(logits, k=2)
    layer = switchyard.nn.MoELayer.from_config(cfg)
    train, val, info = switchyard.data.build_dataset(cfg, rank, world_size)
"""

import torch as _torch  # noqa: F401  (loads LibTorch before our libraries, which link to it)

from . import _C  # noqa: F401  (registers torch.ops.switchyard.*)
from ._runtime import device, fatal, finalize, init, local_rank, rank, tune_host_allocator, world_size
from .config import Config, load_config
from . import data, nn, ops

__version__ = "0.1.0"

__all__ = [
    "Config",
    "data",
    "device",
    "fatal",
    "finalize",
    "init",
    "load_config",
    "local_rank",
    "nn",
    "ops",
    "rank",
    "tune_host_allocator",
    "world_size",
]
