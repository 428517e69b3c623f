"""switchyard operators: routing policies, load-balancing losses, zero-computation experts,
token permutation, grouped expert products.

Each function wraps one ``torch.ops.switchyard.*`` operator implemented in C++ (CPU and
CUDA kernels, autograd in C++); see docs/routing.md, docs/losses.md, docs/permute.md and
docs/moe_layer.md.
"""

from .routing import *  # noqa: F401,F403
from .losses import *  # noqa: F401,F403
from .router import *  # noqa: F401,F403
from .zero_compute import *  # noqa: F401,F403
from .permute import *  # noqa: F401,F403
from .grouped import *  # noqa: F401,F403
from . import routing as _routing, losses as _losses, router as _router, zero_compute as _zero_compute
from . import permute as _permute, grouped as _grouped

__all__ = [
    *_routing.__all__,
    *_losses.__all__,
    *_router.__all__,
    *_zero_compute.__all__,
    *_permute.__all__,
    *_grouped.__all__,
]
