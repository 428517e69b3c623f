"""Shared by the Hugging Face parity tests: weight mappings from transformers' MoE blocks to
switchyard's layout, and a mode that keeps the peers' float64 runs in float64.

Imported by test_moe_parity_hf.py (one MoE block), test_transformer_parity_hf.py (whole
models) and test_hf_convert.py (checkpoint import/export). Block mappings take a peer block and return a MoELayer state dict; the *_grads
functions map a MoELayer's gradients back to the peer's parameter names.
"""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode


class KeepFloat64(TorchFunctionMode):
    """Drops the peers' float64 -> float32 casts of router tensors (see the module doc)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        self_t = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if self_t is not None and self_t.dtype == torch.float64:
            if func is torch.Tensor.float:
                return self_t
            if func in (torch.Tensor.type, torch.Tensor.to):
                target = args[1] if len(args) > 1 else kwargs.get("dtype")
                if target is torch.float32 and len(args) <= 2 and set(kwargs) <= {"dtype"}:
                    return self_t
            if func in (torch.softmax, torch.nn.functional.softmax, torch.Tensor.softmax):
                if kwargs.get("dtype") is torch.float32:
                    kwargs.pop("dtype")
        return func(*args, **kwargs)


# ---------------------------------------------------------------------------------------
# Weight mappings. The peers store experts as gate_up_proj [E, 2f, d] (gate rows first,
# then up rows; nn.Linear's [out, in]) and down_proj [E, d, f]; MoELayer stores
# [E, in, out]: gate_proj/up_proj [E, d, f], down_proj [E, f, d].
# ---------------------------------------------------------------------------------------


def experts_to_ours(gate_up_E2fd: torch.Tensor, down_Edf: torch.Tensor) -> dict[str, torch.Tensor]:
    f = down_Edf.shape[2]
    return {
        "experts.gate_proj": gate_up_E2fd[:, :f, :].transpose(1, 2).contiguous(),
        "experts.up_proj": gate_up_E2fd[:, f:, :].transpose(1, 2).contiguous(),
        "experts.down_proj": down_Edf.transpose(1, 2).contiguous(),
    }


def experts_grads_to_peer(grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    gate_up = torch.cat([grads["experts.gate_proj"].transpose(1, 2), grads["experts.up_proj"].transpose(1, 2)], dim=1)
    return {"experts.gate_up_proj": gate_up, "experts.down_proj": grads["experts.down_proj"].transpose(1, 2)}


def mixtral_state_dict(block: torch.nn.Module) -> dict[str, torch.Tensor]:
    sd = {"router.weight": block.gate.weight.detach().clone()}
    sd.update(experts_to_ours(block.experts.gate_up_proj.detach(), block.experts.down_proj.detach()))
    return sd


def mixtral_grads(grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {"gate.weight": grads["router.weight"]}
    out.update(experts_grads_to_peer(grads))
    return out


def qwen2_moe_state_dict(block: torch.nn.Module) -> dict[str, torch.Tensor]:
    sd = mixtral_state_dict(block)  # same router and experts layout
    for proj in ("gate_proj", "up_proj", "down_proj"):
        sd[f"shared_experts.{proj}.weight"] = getattr(block.shared_expert, proj).weight.detach().clone()
    sd["shared_expert_gate.weight"] = block.shared_expert_gate.weight.detach().clone()
    return sd


def qwen2_moe_grads(grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = mixtral_grads(grads)
    for proj in ("gate_proj", "up_proj", "down_proj"):
        out[f"shared_expert.{proj}.weight"] = grads[f"shared_experts.{proj}.weight"]
    out["shared_expert_gate.weight"] = grads["shared_expert_gate.weight"]
    return out


def randomize_(model: torch.nn.Module, seed: int) -> None:
    """Every parameter random: weights and biases N(0, 0.1^2), norms 1 + N(0, 0.1^2)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.1
            p.copy_(noise + 1.0 if "norm" in name else noise)


def float64_rope(peer: torch.nn.Module, head_dim: int, theta: float) -> None:
    """The peer's rotary tables in float64 (its inv_freq buffer is float32)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)

    def forward(x, position_ids):
        freqs = position_ids[..., None].to(torch.float64) * inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)

    peer.model.rotary_emb.forward = forward
