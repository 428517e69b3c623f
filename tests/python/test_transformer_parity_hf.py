"""switchyard.nn.MoETransformer against Hugging Face's LlamaForCausalLM, Qwen2ForCausalLM
(q/k/v biases: model.qkv_bias), MixtralForCausalLM and Qwen2MoeForCausalLM.

Each test builds the peer from a small config with random weights (no hub access), loads
its state_dict into an MoETransformer (as it is for Llama; Mixtral's and Qwen2-MoE's
per-expert layout converted to our stacked experts, hf_peers.py), runs forward and backward
on both with the same tokens and labels, and compares logits, loss and EVERY parameter
gradient, in float64 (tight) and float32.

Labels: Hugging Face shifts them inside the model (position s predicts labels[s + 1]); our
targets are already the next tokens, so ours = labels shifted left, -100 at the end. Some
labels are -100 on both sides (our side writes some of them as -1: any negative is ignored).

float64: the peers compute RoPE tables, RMSNorm statistics, router softmax and loss in
float32 even for float64 models. hf_peers.KeepFloat64 removes those down-casts while the
peer runs, and `_float64_rope` gives the peer float64 rotary tables (its inv_freq buffer is
computed in float32 at construction), so the float64 comparison is float64 on both sides.

Auxiliary loss: Mixtral's router loss is computed once over all layers' logits
concatenated (the product of per-expert means over every layer), ours is a sum of per-layer
Switch losses, and ours divides the slot fraction by top_k. The two objectives differ by
definition, so the model loss comparison is the language-model loss only, and each of our
per-block aux losses is checked against Hugging Face's function applied to that block's
router logits alone: ours = coeff * hf_layer / top_k.
"""

from __future__ import annotations

import pytest
import torch

import switchyard
from hf_peers import (KeepFloat64, float64_rope, mixtral_grads, mixtral_state_dict, qwen2_moe_grads,
                      qwen2_moe_state_dict, randomize_)

transformers = pytest.importorskip("transformers")
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM  # noqa: E402
from transformers.models.mixtral.modeling_mixtral import (  # noqa: E402
    MixtralConfig,
    MixtralForCausalLM,
    load_balancing_loss_func,
)
from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeConfig, Qwen2MoeForCausalLM  # noqa: E402

VOCAB, D, LAYERS, HEADS, MAX_SEQ, THETA, EPS = 101, 64, 3, 8, 32, 500.0, 1e-5
B, S = 2, 19
TOLERANCES = {torch.float32: (2e-5, 2e-5), torch.float64: (1e-10, 1e-10)}
AUX_COEFF = 0.02


def _assert_close(actual, expected, dtype, what):
    rtol, atol = TOLERANCES[dtype]
    scale = max(1.0, float(expected.abs().max()))
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol * scale, msg=lambda m: f"{what}: {m}")


def _randomize_(model: torch.nn.Module, seed: int) -> None:
    randomize_(model, seed)


def _float64_rope(peer: torch.nn.Module, head_dim: int) -> None:
    float64_rope(peer, head_dim, THETA)


def _tokens(seed: int):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (B, S), generator=gen)
    labels = torch.randint(0, VOCAB, (B, S), generator=gen)
    labels[0, 3] = labels[1, 10] = labels[1, 11] = -100
    targets = torch.full_like(labels, -100)
    targets[:, :-1] = labels[:, 1:]
    targets[1, 9] = -1  # == labels[1, 10]: ignored, spelled differently
    return ids, labels, targets


def _common(**extra):
    return dict(vocab_size=VOCAB, hidden_size=D, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                max_position_embeddings=MAX_SEQ, rope_theta=THETA, rms_norm_eps=EPS, **extra)


# ---------------------------------------------------------------------------------------
# Peers: (peer model, our options, peer state dict -> ours, our grads -> peer names)
# ---------------------------------------------------------------------------------------


def _ours_options(n_kv, tie, **extra):
    return dict(vocab_size=VOCAB, d_model=D, n_layers=LAYERS, n_heads=HEADS, n_kv_heads=n_kv, max_seq_len=MAX_SEQ,
                rope_theta=THETA, norm_eps=EPS, tie_embeddings=tie, **extra)


def build_llama(n_kv=2, tie=False, ffn=96):
    cfg = LlamaConfig(**_common(intermediate_size=ffn, num_key_value_heads=n_kv, tie_word_embeddings=tie,
                                attention_bias=False, mlp_bias=False))
    cfg._attn_implementation = "eager"
    peer = LlamaForCausalLM(cfg)
    ours = _ours_options(n_kv, tie, ffn_hidden=ffn, moe_layer_freq=0)
    return peer, ours, lambda p: p.state_dict(), lambda grads: grads  # same names, same layout


def build_qwen2(n_kv=2, ffn=96):
    # Llama's decoder with q/k/v biases: our model.qkv_bias.
    cfg = Qwen2Config(**_common(intermediate_size=ffn, num_key_value_heads=n_kv, tie_word_embeddings=False,
                                use_sliding_window=False))
    cfg._attn_implementation = "eager"
    peer = Qwen2ForCausalLM(cfg)
    ours = _ours_options(n_kv, False, ffn_hidden=ffn, moe_layer_freq=0, qkv_bias=True)
    return peer, ours, lambda p: p.state_dict(), lambda grads: grads  # same names, same layout


def _moe_maps(block_to_ours, block_grads_to_peer, sparse_layers):
    """Whole-model mappings from a per-block mapping: the MoE blocks' mlp.* keys converted."""

    def to_ours(peer):
        sd = {k: v.detach().clone() for k, v in peer.state_dict().items()}
        for i in sparse_layers:
            prefix = f"model.layers.{i}.mlp."
            for k in [k for k in sd if k.startswith(prefix)]:
                del sd[k]
            sd.update({prefix + k: v for k, v in block_to_ours(peer.model.layers[i].mlp).items()})
        return sd

    def grads_to_peer(grads):
        out = dict(grads)
        for i in sparse_layers:
            prefix = f"model.layers.{i}.mlp."
            block = {k[len(prefix):]: out.pop(k) for k in [k for k in out if k.startswith(prefix)]}
            out.update({prefix + k: v for k, v in block_grads_to_peer(block).items()})
        return out

    return to_ours, grads_to_peer


def build_mixtral(n_kv=4, tie=False, num_experts=4, top_k=2, ffn=48):
    cfg = MixtralConfig(**_common(intermediate_size=ffn, num_key_value_heads=n_kv, tie_word_embeddings=tie,
                                  num_local_experts=num_experts, num_experts_per_tok=top_k, router_jitter_noise=0.0,
                                  router_aux_loss_coef=AUX_COEFF, sliding_window=None))
    cfg._attn_implementation = "eager"
    cfg._experts_implementation = "eager"
    peer = MixtralForCausalLM(cfg)
    moe = dict(num_experts=num_experts, top_k=top_k, ffn_hidden=ffn, score_func="softmax", renormalize=True,
               aux_loss_coeff=AUX_COEFF)
    ours = _ours_options(n_kv, tie, moe_layer_freq=1, moe=moe)
    return (peer, ours, *_moe_maps(mixtral_state_dict, mixtral_grads, range(LAYERS)))


def build_qwen2_moe(n_kv=2, num_experts=6, top_k=2, ffn=32, shared_ffn=40, dense_ffn=72):
    # Block 0 dense (mlp_only_layers), 1 and 2 MoE: our first_k_dense = 1.
    cfg = Qwen2MoeConfig(**_common(intermediate_size=dense_ffn, num_key_value_heads=n_kv, tie_word_embeddings=False,
                                   moe_intermediate_size=ffn, shared_expert_intermediate_size=shared_ffn,
                                   num_experts=num_experts, num_experts_per_tok=top_k, norm_topk_prob=False,
                                   decoder_sparse_step=1, mlp_only_layers=[0], qkv_bias=False,
                                   use_sliding_window=False, router_aux_loss_coef=AUX_COEFF))
    cfg._attn_implementation = "eager"
    cfg._experts_implementation = "eager"
    peer = Qwen2MoeForCausalLM(cfg)
    moe = dict(num_experts=num_experts, top_k=top_k, ffn_hidden=ffn, score_func="softmax", renormalize=False,
               num_shared_experts=1, shared_ffn_hidden=shared_ffn, shared_expert_gate=True, aux_loss_coeff=AUX_COEFF)
    ours = _ours_options(n_kv, False, ffn_hidden=dense_ffn, moe_layer_freq=1, first_k_dense=1, moe=moe)
    return (peer, ours, *_moe_maps(qwen2_moe_state_dict, qwen2_moe_grads, range(1, LAYERS)))


PEERS = {
    "llama-gqa": lambda: build_llama(n_kv=2, tie=False),
    "llama-gqa-tied": lambda: build_llama(n_kv=4, tie=True),
    "llama-mha": lambda: build_llama(n_kv=HEADS, tie=False),
    "qwen2-qkv-bias": lambda: build_qwen2(),
    "mixtral": lambda: build_mixtral(),
    "mixtral-gqa-tied-k1": lambda: build_mixtral(n_kv=2, tie=True, num_experts=3, top_k=1),
    "qwen2_moe": lambda: build_qwen2_moe(),
}


def _run_pair(name, dtype, seed=0):
    peer, options, to_ours, grads_to_peer = PEERS[name]()
    _randomize_(peer, seed)
    peer = peer.to(dtype)
    if dtype == torch.float64:
        _float64_rope(peer, D // HEADS)
    model = switchyard.nn.MoETransformer(**options).to(dtype)
    result = model.load_state_dict(to_ours(peer), strict=True)
    assert not result.missing_keys and not result.unexpected_keys

    ids, labels, targets = _tokens(seed + 1)
    with KeepFloat64():
        peer_out = peer(input_ids=ids, labels=labels)
    peer_out.loss.backward()
    out = model(ids, targets, return_logits=True)
    out.loss.backward()
    return peer, model, peer_out, out, grads_to_peer, ids


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("peer_name", list(PEERS))
def test_matches_peer(peer_name, dtype):
    peer, model, peer_out, out, grads_to_peer, _ = _run_pair(peer_name, dtype)

    assert out.logits.shape == (B, S, VOCAB) and out.logits.dtype == dtype
    _assert_close(out.logits, peer_out.logits.detach(), dtype, "logits")
    assert out.loss.dtype == dtype and out.loss.dim() == 0
    _assert_close(out.loss, peer_out.loss.detach(), dtype, "loss")

    ours = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None for g in ours.values()), [n for n, g in ours.items() if g is None]
    mapped = grads_to_peer(ours)
    peer_params = dict(peer.named_parameters())
    assert set(mapped) == set(peer_params), sorted(set(mapped) ^ set(peer_params))
    for name, p in peer_params.items():
        _assert_close(mapped[name], p.grad, dtype, f"gradient of {name}")


def test_dense_state_dict_is_llamas():
    peer, options, _, _ = build_llama(n_kv=2, tie=True)
    model = switchyard.nn.MoETransformer(**options)
    ours, theirs = model.state_dict(), peer.state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in ours)
    # Tied: one tensor under both names, listed once by named_parameters() (as in HF).
    assert ours["lm_head.weight"].data_ptr() == ours["model.embed_tokens.weight"].data_ptr()
    assert "lm_head.weight" not in dict(model.named_parameters())
    # A checkpoint storing the tied matrix once loads too.
    sd = dict(theirs)
    del sd["lm_head.weight"]
    model.load_state_dict(sd)
    torch.testing.assert_close(model.lm_head.weight, peer.lm_head.weight, rtol=0, atol=0)


@pytest.mark.parametrize("peer_name", ["mixtral", "qwen2_moe"])
def test_aux_loss_and_routing_match_peer_per_block(peer_name):
    peer, model, _, out, _, ids = _run_pair(peer_name, torch.float64)
    with torch.no_grad(), KeepFloat64():
        router_logits = peer(input_ids=ids, output_router_logits=True).router_logits
    sparse = [s["layer"] for s in out.moe_stats]
    assert len(router_logits) == len(sparse) == len(model.moe_layers())
    top_k, num_experts = model.moe_layers()[0].options.top_k, model.moe_layers()[0].options.num_experts
    total = 0.0
    for stats, logits in zip(out.moe_stats, router_logits):
        chosen = torch.topk(torch.softmax(logits, -1), top_k, dim=-1).indices
        assert torch.equal(stats["expert_load"], torch.bincount(chosen.reshape(-1), minlength=num_experts))
        assert int(stats["num_dropped"]) == 0
        assert float(stats["real_experts_per_token"]) == top_k
        hf_layer = load_balancing_loss_func((logits,), num_experts, top_k)  # float32 inside
        expected = AUX_COEFF * hf_layer.double() / top_k
        torch.testing.assert_close(stats["aux_loss"], expected, rtol=1e-6, atol=1e-7)
        total += float(stats["aux_loss"])
    assert out.aux_loss.dtype == torch.float64
    assert abs(float(out.aux_loss.detach()) - total) < 1e-12
