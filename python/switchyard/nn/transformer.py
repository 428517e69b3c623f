"""``switchyard.nn.MoETransformer``: the C++ decoder-only language model as a torch.nn.Module."""

from __future__ import annotations

import difflib
from typing import Mapping

from .. import _C
from ._cpp_module import CppChild, adopt_children
from .moe_layer import MoELayerOptions

MoETransformerOptions = _C.nn.MoETransformerOptions
TransformerOutput = _C.nn.TransformerOutput

__all__ = ["MoETransformer", "MoETransformerOptions", "TransformerOutput"]


def _moe_options(moe, d_model: int, init_std: float) -> MoELayerOptions:
    if isinstance(moe, MoELayerOptions):
        return moe
    opts = MoELayerOptions()
    opts.d_model, opts.init_std = d_model, init_std
    known = MoELayerOptions.field_names
    for key, value in dict(moe or {}).items():
        if key not in known or key in ("d_model", "init_std"):
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise TypeError(f"MoETransformer: unknown moe option {key!r}{hint} (d_model and init_std come "
                            f"from the model)")
        setattr(opts, key, value)
    return opts


def _options(options: MoETransformerOptions | None, fields: dict) -> MoETransformerOptions:
    opts = MoETransformerOptions() if options is None else options
    moe = fields.pop("moe", None)
    known = MoETransformerOptions.field_names
    for key, value in fields.items():
        if key not in known:
            close = difflib.get_close_matches(key, known + ["moe"], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise TypeError(f"MoETransformer: unknown option {key!r}{hint} (options: {', '.join(known)}, moe)")
        setattr(opts, key, value)
    if options is None or moe is not None:
        opts.moe = _moe_options(moe, opts.d_model, opts.init_std)
    opts.validate()
    return opts


class MoETransformer(_C.nn.MoETransformer):
    """The decoder-only language model (Llama blocks, dense or MoE FFNs), computed in C++.

    ``MoETransformer(vocab_size=..., d_model=..., n_layers=..., n_heads=..., moe=dict(...))``
    takes the keys of the YAML ``model:`` section (plus ``scale_residual_init``) and ``moe``,
    a dict of ``moe:`` keys or a :class:`MoELayerOptions`; or
    ``MoETransformer(options=MoETransformerOptions)``; or :meth:`from_config`.

    ``model(input_ids, targets=None, return_logits=False)`` returns a
    :class:`TransformerOutput`: ``loss`` (mean cross-entropy over ``targets >= 0``; None
    without targets), ``logits`` (``[B, S, vocab]``; None when targets were given unless
    ``return_logits``), ``aux_loss`` (the MoE blocks' balancing losses, summed; train on
    ``loss + aux_loss``) and ``moe_stats`` (one dict per MoE block).

    Parameter names are Hugging Face Llama's (``model.embed_tokens.weight``,
    ``model.layers.0.self_attn.q_proj.weight``, ``lm_head.weight``, ...): a dense model
    loads a ``LlamaForCausalLM`` state dict directly. See docs/model.md.
    """

    def __init__(self, options: MoETransformerOptions | None = None, **fields) -> None:
        super().__init__(_options(options, fields))
        adopt_children(self)
        self.__dict__.pop("moe_layers", None)  # the Python version below, not the C++ copy

    __repr__ = CppChild.__repr__

    def extra_repr(self) -> str:
        o = self.cpp_module.options
        return (f"vocab_size={o.vocab_size}, d_model={o.d_model}, n_layers={o.n_layers}, "
                f"n_heads={o.n_heads}, n_kv_heads={o.n_kv_heads or o.n_heads}, "
                f"moe_blocks={len(self.cpp_module.moe_layers())}")

    @classmethod
    def from_config(cls, config) -> "MoETransformer":
        """The model a run's config describes (its ``model:`` and ``moe:`` sections)."""
        return cls(MoETransformerOptions.from_config(config))

    def moe_layers(self) -> list:
        """The MoE layers as Python modules (views of ``model.layers.{i}.mlp``), in block order."""
        layers = self._modules["model"]._modules["layers"]._modules
        return [layers[str(i)]._modules["mlp"] for i in range(self.cpp_module.options.n_layers)
                if self.cpp_module.options.is_moe_layer(i)]

    def load_state_dict(self, state_dict: Mapping, strict: bool = True, assign: bool = False):
        """``torch.nn.Module.load_state_dict``; with tied embeddings a missing ``lm_head.weight``
        is taken from ``model.embed_tokens.weight`` (checkpoints often store it once)."""
        if (self.cpp_module.options.tie_embeddings and "lm_head.weight" not in state_dict
                and "model.embed_tokens.weight" in state_dict):
            state_dict = dict(state_dict)
            state_dict["lm_head.weight"] = state_dict["model.embed_tokens.weight"]
        return super().load_state_dict(state_dict, strict=strict, assign=assign)
