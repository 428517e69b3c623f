"""switchyard modules: C++ ``torch::nn::Module`` classes seen as ``torch.nn.Module``.

Each class here is the C++ module itself (bound with ``torch::python::bind_module``); the
Python side adds keyword construction and nothing else. See docs/moe_layer.md and
docs/model.md.
"""

from .moe_layer import MoELayer, MoELayerOptions, MoEOutput
from .transformer import MoETransformer, MoETransformerOptions, TransformerOutput

__all__ = ["MoELayer", "MoELayerOptions", "MoEOutput", "MoETransformer", "MoETransformerOptions",
           "TransformerOutput"]
