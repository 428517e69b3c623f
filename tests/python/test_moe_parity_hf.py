"""switchyard.nn.MoELayer against the Hugging Face transformers MoE blocks it claims to match.

Each test builds a peer block from a small config with random weights (no hub access),
copies its weights into a MoELayer (one mapping function per peer, below), runs forward and
backward on both with the same input and upstream gradient, and compares the outputs, the
input gradient and every parameter gradient (mapped back to the peer's layout), plus the
experts each token chose (MoELayer's expert_load against the peer's selection counts).

Peers (transformers 5.x):
- MixtralSparseMoeBlock: softmax over experts, top-k, renormalised weights.
- Qwen2MoeSparseMoeBlock: softmax top-k (norm_topk_prob False or True), one shared expert of
  its own width whose output is scaled by sigmoid(x @ w_gate).
- DeepseekV3MoE: sigmoid scores, e_score_correction_bias steering selection only, groups
  scored by the sum of their two best keys (n_group / topk_group), shared experts,
  norm_topk_prob and routed_scaling_factor.

float64: the peers compute their routers in float32 even for float64 inputs (`.float()`,
`.type(torch.float32)`, `softmax(dtype=torch.float)`). `hf_peers.KeepFloat64` removes exactly
those down-casts while the peer runs (a TorchFunctionMode; the peer's code is unchanged),
so the float64 comparison is a float64 computation on both sides.
"""

from __future__ import annotations

import pytest
import torch

import switchyard
from hf_peers import KeepFloat64 as _KeepFloat64
from hf_peers import experts_to_ours as _experts_to_ours
from hf_peers import mixtral_grads, mixtral_state_dict, qwen2_moe_grads, qwen2_moe_state_dict

transformers = pytest.importorskip("transformers")
from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3Config, DeepseekV3MoE  # noqa: E402
from transformers.models.mixtral.modeling_mixtral import MixtralConfig, MixtralSparseMoeBlock  # noqa: E402
from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeConfig, Qwen2MoeSparseMoeBlock  # noqa: E402

D_MODEL = 64

# Shapes fed to both sides: [B, S, d] as the peers take them, and [T, d] (the peer gets
# [1, T, d]); T is never a multiple of anything interesting, and one token alone is covered.
SHAPES = [(1, 1), (3, 37), (2, 50), (149,)]

# (rtol, atol) per dtype; atol is scaled by the largest magnitude of the reference tensor
# (weight gradients sum over every token, so their scale grows with T).
TOLERANCES = {torch.float32: (1e-5, 1e-5), torch.float64: (1e-10, 1e-10)}


def _init_random_(module: torch.nn.Module, seed: int, std: float = 0.1) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(module.named_parameters()):
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * std)


def deepseek_v3_state_dict(block: DeepseekV3MoE) -> dict[str, torch.Tensor]:
    sd = {
        "router.weight": block.gate.weight.detach().clone(),
        "router.selection_bias": block.gate.e_score_correction_bias.detach().clone(),
    }
    sd.update(_experts_to_ours(block.experts.gate_up_proj.detach(), block.experts.down_proj.detach()))
    for proj in ("gate_proj", "up_proj", "down_proj"):
        sd[f"shared_experts.{proj}.weight"] = getattr(block.shared_experts, proj).weight.detach().clone()
    return sd


def deepseek_v3_grads(grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = mixtral_grads(grads)
    for proj in ("gate_proj", "up_proj", "down_proj"):
        out[f"shared_experts.{proj}.weight"] = grads[f"shared_experts.{proj}.weight"]
    return out


# ---------------------------------------------------------------------------------------
# Peers, built from configs, and the matching MoELayer options.
# ---------------------------------------------------------------------------------------


def build_mixtral(num_experts=8, top_k=2, ffn=96):
    cfg = MixtralConfig(hidden_size=D_MODEL, intermediate_size=ffn, num_local_experts=num_experts,
                        num_experts_per_tok=top_k, hidden_act="silu", router_jitter_noise=0.0)
    cfg._experts_implementation = "eager"  # the Python loop over experts, not a hub kernel
    block = MixtralSparseMoeBlock(cfg)
    options = dict(num_experts=num_experts, top_k=top_k, ffn_hidden=ffn, score_func="softmax", renormalize=True)
    return block, options, mixtral_state_dict, mixtral_grads


def build_qwen2_moe(num_experts=8, top_k=4, ffn=48, shared_ffn=80, norm_topk_prob=False):
    cfg = Qwen2MoeConfig(hidden_size=D_MODEL, moe_intermediate_size=ffn, shared_expert_intermediate_size=shared_ffn,
                         num_experts=num_experts, num_experts_per_tok=top_k, norm_topk_prob=norm_topk_prob,
                         hidden_act="silu")
    cfg._experts_implementation = "eager"
    block = Qwen2MoeSparseMoeBlock(cfg)
    options = dict(num_experts=num_experts, top_k=top_k, ffn_hidden=ffn, score_func="softmax",
                   renormalize=norm_topk_prob, num_shared_experts=1, shared_ffn_hidden=shared_ffn,
                   shared_expert_gate=True)
    return block, options, qwen2_moe_state_dict, qwen2_moe_grads


def build_deepseek_v3(num_experts=16, top_k=4, ffn=32, n_group=4, topk_group=2, n_shared=2, scaling=2.5,
                      norm_topk_prob=True):
    cfg = DeepseekV3Config(hidden_size=D_MODEL, moe_intermediate_size=ffn, n_routed_experts=num_experts,
                           num_experts_per_tok=top_k, n_group=n_group, topk_group=topk_group,
                           n_shared_experts=n_shared, routed_scaling_factor=scaling, norm_topk_prob=norm_topk_prob,
                           hidden_act="silu")
    cfg._experts_implementation = "eager"
    block = DeepseekV3MoE(cfg)
    options = dict(num_experts=num_experts, top_k=top_k, ffn_hidden=ffn, score_func="sigmoid",
                   renormalize=norm_topk_prob, scaling_factor=scaling, num_groups=n_group, topk_groups=topk_group,
                   group_score="top2_sum", num_shared_experts=n_shared, selection_bias=True, bias_update_rate=0.0)
    return block, options, deepseek_v3_state_dict, deepseek_v3_grads


PEERS = {
    "mixtral-e8k2": lambda: build_mixtral(),
    "mixtral-e4k1": lambda: build_mixtral(num_experts=4, top_k=1, ffn=40),
    "qwen2_moe": lambda: build_qwen2_moe(norm_topk_prob=False),
    "qwen2_moe-norm": lambda: build_qwen2_moe(num_experts=6, top_k=2, norm_topk_prob=True),
    "deepseek_v3": lambda: build_deepseek_v3(),
    "deepseek_v3-nonorm": lambda: build_deepseek_v3(num_experts=8, top_k=3, n_group=4, topk_group=3, n_shared=1,
                                                    scaling=1.7, norm_topk_prob=False),
}


def _selection_counts(block: torch.nn.Module, num_experts: int):
    """Hooks the peer's router; returns a list that receives its per-expert selection counts."""
    counts = []

    def hook(_module, _inputs, outputs):
        _logits, _weights, indices = outputs
        counts.append(torch.bincount(indices.reshape(-1), minlength=num_experts))

    block.gate.register_forward_hook(hook)
    return counts


def _assert_close(actual, expected, dtype, what):
    rtol, atol = TOLERANCES[dtype]
    scale = max(1.0, float(expected.abs().max())) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol * scale, msg=lambda m: f"{what}: {m}")


def _run_pair(peer_name: str, shape: tuple[int, ...], dtype: torch.dtype, seed: int = 0):
    block, options, to_ours, grads_to_peer = PEERS[peer_name]()
    _init_random_(block, seed)
    if hasattr(block.gate, "e_score_correction_bias"):
        gen = torch.Generator().manual_seed(seed + 1)
        block.gate.e_score_correction_bias.copy_(torch.randn(options["num_experts"], generator=gen) * 0.1)
    block = block.to(dtype)

    layer = switchyard.nn.MoELayer(d_model=D_MODEL, aux_loss_coeff=0.0, **options).to(dtype)
    layer.load_state_dict(to_ours(block), strict=True)

    gen = torch.Generator().manual_seed(seed + 2)
    x = torch.randn(*shape, D_MODEL, generator=gen, dtype=torch.float64).to(dtype)
    grad_out = torch.randn(*shape, D_MODEL, generator=gen, dtype=torch.float64).to(dtype)

    x_peer = x.clone().requires_grad_(True)
    peer_in = x_peer if x.dim() == 3 else x_peer.unsqueeze(0)
    counts = _selection_counts(block, options["num_experts"])
    with _KeepFloat64():
        y_peer = block(peer_in)
    y_peer = y_peer[0] if isinstance(y_peer, tuple) else y_peer  # older versions return (y, logits)
    y_peer = y_peer.reshape(shape + (D_MODEL,))
    y_peer.backward(grad_out)

    x_ours = x.clone().requires_grad_(True)
    out = layer(x_ours)
    out.output.backward(grad_out)
    return block, layer, x_peer, y_peer, x_ours, out, counts[0], grads_to_peer


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("peer", list(PEERS))
def test_matches_peer_forward_and_backward(peer, shape, dtype):
    block, layer, x_peer, y_peer, x_ours, out, peer_counts, grads_to_peer = _run_pair(peer, shape, dtype)

    # The same experts were chosen: expert_load counts selections per expert.
    assert out.expert_load.dtype == torch.int64
    assert torch.equal(out.expert_load, peer_counts), f"expert_load {out.expert_load} != peer {peer_counts}"
    assert torch.equal(out.expert_counts, peer_counts)  # no capacity: every selection kept
    assert int(out.num_dropped) == 0

    assert out.output.shape == y_peer.shape and out.output.dtype == dtype
    _assert_close(out.output, y_peer.detach(), dtype, "output")
    _assert_close(x_ours.grad, x_peer.grad, dtype, "input gradient")

    ours = {name: p.grad for name, p in layer.named_parameters()}
    assert all(g is not None for g in ours.values()), [n for n, g in ours.items() if g is None]
    mapped = grads_to_peer(ours)
    peer_params = dict(block.named_parameters())
    assert set(mapped) == set(peer_params), (sorted(mapped), sorted(peer_params))
    for name, p in peer_params.items():
        _assert_close(mapped[name], p.grad, dtype, f"gradient of {name}")


@pytest.mark.parametrize("peer", ["mixtral-e8k2", "deepseek_v3"])
def test_router_logits_match_peer(peer):
    captured = []
    block, options, to_ours, _ = PEERS[peer]()
    _init_random_(block, 5)
    block.gate.register_forward_hook(lambda _m, _i, o: captured.append(o[0]))
    layer = switchyard.nn.MoELayer(d_model=D_MODEL, aux_loss_coeff=0.0, **options)
    layer.load_state_dict(to_ours(block), strict=True)
    x = torch.randn(2, 21, D_MODEL, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        block(x)
        out = layer(x)
    assert out.router_logits.shape == (42, options["num_experts"])
    torch.testing.assert_close(out.router_logits.float(), captured[0].float(), rtol=1e-5, atol=1e-5)


def test_selection_bias_changes_choice_not_weights():
    # A large bias on one expert forces it into every token's choice on both sides.
    block, options, to_ours, _ = PEERS["deepseek_v3"]()
    _init_random_(block, 7)
    block.gate.e_score_correction_bias.zero_()
    block.gate.e_score_correction_bias[5] = 10.0
    layer = switchyard.nn.MoELayer(d_model=D_MODEL, aux_loss_coeff=0.0, **options)
    layer.load_state_dict(to_ours(block), strict=True)
    x = torch.randn(1, 30, D_MODEL, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        y_peer = block(x)
        out = layer(x)
    assert int(out.expert_load[5]) == 30
    torch.testing.assert_close(out.output, y_peer, rtol=1e-5, atol=1e-5)
