"""Make a C++ ``torch::nn::Module`` a complete ``torch.nn.Module`` in Python.

``torch::python::bind_module`` gives each bound C++ module a ``torch.nn.cpp.ModuleWrapper``
subclass: parameters and buffers are the C++ tensors themselves, but its submodules come
back as raw C++ objects, which Python's ``state_dict``, ``load_state_dict``, ``to`` and
``apply`` cannot walk. :func:`adopt_children` fixes that by wrapping every child (and its
children) once, at construction: the C++ object stays the only owner of the weights and
the only implementation of ``forward``.
"""

from __future__ import annotations

from torch import nn
from torch.nn.cpp import ModuleWrapper

# ModuleWrapper copies every public method of the C++ object onto the instance. For these,
# torch.nn.Module's own versions are the right ones: they walk the wrapped children and
# accept every argument form Python users pass (``.to("cuda")``, ``.to(other_tensor)``,
# ``named_parameters(prefix=...)``).
_PYTHON_METHODS = (
    "to", "cuda", "cpu", "float", "double", "half", "train", "eval", "zero_grad",
    "parameters", "named_parameters", "buffers", "named_buffers",
    "children", "named_children", "modules", "named_modules",
)


class CppChild(ModuleWrapper):
    """A submodule of a bound C++ module, seen as a torch.nn.Module."""

    def __init__(self, cpp_module) -> None:
        super().__init__(cpp_module)
        adopt_children(self)

    # torch.nn.Module's printing (children indented) instead of the bare C++ type name.
    __repr__ = nn.Module.__repr__

    def _get_name(self) -> str:
        # "switchyard::nn::RouterImpl" -> "Router", "torch::nn::LinearImpl" -> "Linear"
        return str(self.cpp_module).split("::")[-1].removesuffix("Impl")

    def extra_repr(self) -> str:
        return ", ".join(f"{name}: {list(t.shape)}" for name, t in self._parameters.items())


def adopt_children(wrapper: ModuleWrapper) -> None:
    """Give ``wrapper`` Python views of its C++ children and torch.nn.Module's methods."""
    for name in _PYTHON_METHODS:
        wrapper.__dict__.pop(name, None)
    children = {name: CppChild(child) for name, child in wrapper.cpp_module._modules.items()}
    # Plain dict: nn.Module reads self._modules directly (state_dict, apply, named_modules).
    wrapper.__dict__["_modules"] = children
