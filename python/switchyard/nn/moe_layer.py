"""``switchyard.nn.MoELayer``: the C++ ``switchyard::nn::MoELayer`` as a torch.nn.Module."""

from __future__ import annotations

import difflib

from .. import _C
from ._cpp_module import CppChild, adopt_children

MoELayerOptions = _C.nn.MoELayerOptions
MoEOutput = _C.nn.MoEOutput

__all__ = ["MoELayer", "MoELayerOptions", "MoEOutput"]


def _options(options: MoELayerOptions | None, fields: dict) -> MoELayerOptions:
    opts = MoELayerOptions() if options is None else options
    known = MoELayerOptions.field_names
    for key, value in fields.items():
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise TypeError(f"MoELayer: unknown option {key!r}{hint} (options: {', '.join(known)})")
        setattr(opts, key, value)
    opts.validate()
    return opts


class MoELayer(_C.nn.MoELayer):
    """One Mixture-of-Experts feed-forward block, computed by the C++ module.

    ``MoELayer(d_model=512, num_experts=8, top_k=2, ffn_hidden=1024, ...)`` takes the keys
    of the YAML ``moe:`` section (see docs/configuration.md) plus ``d_model``,
    ``selection_bias`` and ``init_std``; or ``MoELayer(options=MoELayerOptions)``; or
    :meth:`from_config`. Unknown keys raise ``TypeError`` naming the closest option.

    ``layer(x, prev_router_logits=None)`` takes ``x`` of shape ``[..., d_model]`` and
    returns a :class:`MoEOutput`: ``output`` (like ``x``), ``aux_loss`` (add it to the
    training loss), the unweighted losses, ``router_logits`` and routing statistics
    (``expert_counts``, ``expert_load``, ``num_dropped``, ``real_experts_per_token``).

    It is a torch.nn.Module: ``parameters()``, ``state_dict()``, ``load_state_dict()``,
    ``.to()``, ``train()``/``eval()`` and any torch optimizer work; the weights are the C++
    module's own tensors. With ``bias_update_rate > 0`` call :meth:`update_selection_bias`
    once per optimizer step. See docs/moe_layer.md.
    """

    def __init__(self, options: MoELayerOptions | None = None, **fields) -> None:
        super().__init__(_options(options, fields))
        adopt_children(self)

    __repr__ = CppChild.__repr__

    def extra_repr(self) -> str:
        o = self.cpp_module.options
        return (f"d_model={o.d_model}, num_experts={o.num_experts}, top_k={o.top_k}, "
                f"ffn_hidden={o.ffn_hidden}, router={o.router!r}, score_func={o.score_func!r}")

    @classmethod
    def from_config(cls, config) -> "MoELayer":
        """The MoE block a run's config describes (its ``moe:`` section and ``model.d_model``)."""
        return cls(MoELayerOptions.from_config(config))
