"""switchyard.nn.MoELayer against plain-PyTorch float64 references written here, and as a
torch.nn.Module in a user's model.

The references follow docs/routing.md and docs/losses.md literally, with explicit loops for
every decision (which experts a token picks, which slots a full expert keeps, which tokens
an expert picks) and dense per-expert evaluation for the arithmetic, so autograd gives the
reference gradients. They cover what the Hugging Face peers (test_moe_parity_hf.py) do not:
expert-choice routing, AdaMoE null experts, MoE++ zero/copy/constant experts, capacity
drops with both policies, the MoE++ gating residual, GELU experts, shared experts without a
gate, max-score groups, and the balancing losses.

Shapes: T tokens, d hidden, E routed experts, N null experts, Et all router outputs, K top-k.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import switchyard

D = 16  # hidden size of most cases: small, so the loops stay cheap


# ---------------------------------------------------------------------------------------
# Layer construction with seeded random weights
# ---------------------------------------------------------------------------------------


def make_layer(dtype=torch.float64, seed=0, d=D, **options):
    """A MoELayer in `dtype` whose parameters (and selection bias) are seeded random values
    large enough that routing is far from uniform and outputs are O(1)."""
    options.setdefault("aux_loss_coeff", 0.0)
    layer = switchyard.nn.MoELayer(d_model=d, **options).to(dtype)
    gen = torch.Generator().manual_seed(seed)
    sd = layer.state_dict()
    new = {}
    for name, t in sorted(sd.items()):
        std = {"router.weight": 0.6, "router.residual_weight": 0.3, "router.selection_bias": 0.05}.get(name, 0.3)
        new[name] = (torch.randn(t.shape, generator=gen, dtype=torch.float64) * std).to(t.dtype)
    layer.load_state_dict(new)
    return layer


def ref_params(layer):
    """The layer's tensors as float64 leaves (parameters require grad; buffers do not)."""
    params = {n: p.detach().double().clone().requires_grad_(True) for n, p in layer.named_parameters()}
    for n, b in layer.named_buffers():
        params[n] = b.detach().double().clone()
    return params


# ---------------------------------------------------------------------------------------
# References
# ---------------------------------------------------------------------------------------


def ref_expert_outputs(params, x_Td, activation):
    """[E, T, d]: every routed expert applied to every token (dense, for reference only)."""
    up = params["experts.up_proj"]
    down = params["experts.down_proj"]
    outs = []
    for e in range(up.shape[0]):
        if activation == "swiglu":
            h = F.silu(x_Td @ params["experts.gate_proj"][e]) * (x_Td @ up[e])
        else:
            h = F.gelu(x_Td @ up[e])
        outs.append(h @ down[e])
    return torch.stack(outs)


def ref_shared(params, x_Td):
    if "shared_experts.up_proj.weight" not in params:
        return torch.zeros_like(x_Td)
    g = params["shared_experts.gate_proj.weight"]
    u = params["shared_experts.up_proj.weight"]
    dn = params["shared_experts.down_proj.weight"]
    y = (F.silu(x_Td @ g.T) * (x_Td @ u.T)) @ dn.T
    if "shared_expert_gate.weight" in params:
        y = y * torch.sigmoid(x_Td @ params["shared_expert_gate.weight"].T)
    return y


def ref_logits(params, x_Td, prev_logits=None):
    logits = x_Td @ params["router.weight"].T
    if prev_logits is not None:
        logits = logits + prev_logits @ params["router.residual_weight"].T
    return logits


def ref_select_topk(keys_TE, k, num_routed, num_groups=1, topk_groups=0, group_score="max"):
    """[T, K] expert ids, best first, ties to the lower id; groups as in docs/routing.md."""
    T, Et = keys_TE.shape
    chosen = []
    for t in range(T):
        key = keys_TE[t].tolist()
        eligible = list(range(Et))
        if num_groups > 1:
            size = num_routed // num_groups
            gscore = []
            for g in range(num_groups):
                best = sorted(key[g * size:(g + 1) * size], reverse=True)
                gscore.append(best[0] if group_score == "max" else best[0] + best[1])
            kept = sorted(range(num_groups), key=lambda g: (-gscore[g], g))[:topk_groups or num_groups]
            eligible = [e for e in range(num_routed) if e // size in kept] + list(range(num_routed, Et))
        chosen.append(sorted(eligible, key=lambda e: (-key[e], e))[:k])
    return torch.tensor(chosen, dtype=torch.int64).reshape(T, k)


def ref_capacity_keep(topk_experts, weights, num_routed, capacity_factor, drop_policy):
    """[T, K] bool: slots kept by the capacity limit (local experts are never limited)."""
    T, K = topk_experts.shape
    keep = torch.ones(T, K, dtype=torch.bool)
    if capacity_factor <= 0:
        return keep
    cap = math.ceil(capacity_factor * T * K / num_routed)  # double, left to right
    for e in range(num_routed):
        slots = [(t, j) for t in range(T) for j in range(K) if topk_experts[t, j] == e]
        if drop_policy == "position":
            slots.sort(key=lambda s: s[0])
        else:
            slots.sort(key=lambda s: (-float(weights[s]), s[0]))
        for s in slots[cap:]:
            keep[s] = False
    return keep


def ref_zero_compute(params, x_Td, w_TK, experts_TK, first, num_zero, num_copy):
    """MoE++: zero experts add 0, copy experts add w*x, constant i adds w*(a1 x + a2 v_i)."""
    T, K = experts_TK.shape
    rows = []
    for t in range(T):
        acc = torch.zeros_like(x_Td[t])
        for j in range(K):
            e = int(experts_TK[t, j]) - first
            if e < 0 or e < num_zero:
                continue
            if e < num_zero + num_copy:
                acc = acc + w_TK[t, j] * x_Td[t]
            else:
                i = e - num_zero - num_copy
                a = torch.softmax(params["zero_compute.const_gate_weight"][i] @ x_Td[t], dim=0)
                acc = acc + w_TK[t, j] * (a[0] * x_Td[t] + a[1] * params["zero_compute.const_vectors"][i])
        rows.append(acc)
    return torch.stack(rows)


def ref_topk_layer(params, x, opts, prev_logits=None):
    """Everything a top-k MoELayer returns, in float64. opts: the layer's options."""
    d = x.shape[-1]
    x_Td = x.reshape(-1, d)
    E, K = opts["num_experts"], opts["top_k"]
    N = opts.get("num_null_experts", 0)
    Z, Cp, Nc = (opts.get(f"num_{n}_experts", 0) for n in ("zero", "copy", "constant"))
    logits = ref_logits(params, x_Td, prev_logits)
    Et = logits.shape[1]
    assert Et == E + N + Z + Cp + Nc
    sigmoid = opts.get("score_func", "softmax") == "sigmoid"
    scores = torch.sigmoid(logits) if sigmoid else torch.softmax(logits, dim=-1)
    keys = scores.detach().clone()
    if "router.selection_bias" in params:
        keys = keys + params["router.selection_bias"]
    experts_TK = ref_select_topk(keys, K, E, opts.get("num_groups", 1), opts.get("topk_groups", 0),
                                 opts.get("group_score", "max"))
    p = scores.gather(1, experts_TK)
    w = p / p.sum(-1, keepdim=True) if opts.get("renormalize", True) else p
    w = w * opts.get("scaling_factor", 1.0)
    keep = ref_capacity_keep(experts_TK, w.detach(), E, opts.get("capacity_factor", 0.0),
                             opts.get("drop_policy", "position"))
    routed = (experts_TK < E) & keep
    ye = ref_expert_outputs(params, x_Td, opts.get("activation", "swiglu"))  # [E, T, d]
    y = torch.zeros_like(x_Td)
    for j in range(K):
        e_T = experts_TK[:, j].clamp(max=E - 1)
        picked = ye[e_T, torch.arange(x_Td.shape[0])]  # [T, d]
        y = y + (w[:, j] * routed[:, j])[:, None] * picked
    if Z + Cp + Nc:
        y = y + ref_zero_compute(params, x_Td, w, experts_TK, E + N, Z, Cp)
    y = y + ref_shared(params, x_Td)
    return {
        "output": y.reshape(x.shape),
        "router_logits": logits,
        "topk_experts": experts_TK,
        "expert_load": torch.bincount(experts_TK.reshape(-1), minlength=Et),
        "expert_counts": torch.bincount(experts_TK[routed], minlength=E),
        "num_dropped": int((~keep).sum()),
        "real_experts_per_token": float((experts_TK < E).sum()) / max(x_Td.shape[0], 1),
    }


def ref_expert_choice_layer(params, x, opts):
    d = x.shape[-1]
    x_Td = x.reshape(-1, d)
    T = x_Td.shape[0]
    E, K = opts["num_experts"], opts["top_k"]
    logits = ref_logits(params, x_Td)
    scores = torch.sigmoid(logits) if opts.get("score_func") == "sigmoid" else torch.softmax(logits, dim=-1)
    cap = min(T, math.ceil(opts["capacity_factor"] * T * K / E))
    ye = ref_expert_outputs(params, x_Td, opts.get("activation", "swiglu"))
    y = torch.zeros_like(x_Td)
    chosen = []
    for e in range(E):
        col = scores[:, e].tolist()
        tokens = sorted(range(T), key=lambda t: (-col[t], t))[:cap]
        chosen.append(tokens)
        mask = torch.zeros(T, dtype=x.dtype)
        mask[tokens] = 1.0
        y = y + (scores[:, e] * mask)[:, None] * ye[e]
    y = y + ref_shared(params, x_Td)
    return {"output": y.reshape(x.shape), "router_logits": logits, "chosen": chosen, "capacity": cap}


def ref_switch_loss(logits, experts_TK, num_null=0, sigmoid=False):
    T, K = experts_TK.shape
    Et = logits.shape[1]
    p = torch.sigmoid(logits) if sigmoid else torch.softmax(logits, dim=-1)
    if sigmoid:
        p = p / p.sum(-1, keepdim=True)
    f = torch.bincount(experts_TK.reshape(-1), minlength=Et).double() / (T * K)
    P = p.mean(0)
    real = Et - num_null
    loss = (f[:real] * P[:real]).sum()
    if num_null:
        loss = loss + num_null * f[real:].mean() * P[real:].mean()
    return Et * loss


def ref_z_loss(logits):
    return (torch.logsumexp(logits, dim=-1) ** 2).mean()


def ref_seq_aux_loss(logits, experts_TK, seq_len, sigmoid=False):
    T, K = experts_TK.shape
    Et = logits.shape[1]
    p = torch.sigmoid(logits) if sigmoid else torch.softmax(logits, dim=-1)
    if sigmoid:
        p = p / p.sum(-1, keepdim=True)
    losses = []
    for s in range(T // seq_len):
        rows = slice(s * seq_len, (s + 1) * seq_len)
        f = Et / (K * seq_len) * torch.bincount(experts_TK[rows].reshape(-1), minlength=Et).double()
        losses.append((f * p[rows].mean(0)).sum())
    return torch.stack(losses).mean()


# ---------------------------------------------------------------------------------------
# Comparison helpers
# ---------------------------------------------------------------------------------------


def close(actual, expected, what, rtol=1e-10, atol=1e-10):
    scale = max(1.0, float(expected.detach().abs().max())) if expected.numel() else 1.0
    torch.testing.assert_close(actual.detach().double(), expected.detach().double(), rtol=rtol, atol=atol * scale,
                               msg=lambda m: f"{what}: {m}")


def backward_both(layer, params, x, out, ref_out, grad_seed=1, extra_inputs=()):
    """Same upstream gradient into both outputs; compares input and parameter gradients."""
    g = torch.randn(out.output.shape, generator=torch.Generator().manual_seed(grad_seed), dtype=torch.float64)
    out.output.backward(g.to(out.output.dtype))
    leaves = [params[n] for n, _ in layer.named_parameters()]
    ref_inputs = [inp for inp, _ in extra_inputs]
    grads = torch.autograd.grad(ref_out["output"], leaves + ref_inputs, g, allow_unused=True)
    for (name, p), ref_g in zip(layer.named_parameters(), grads):
        if ref_g is None and p.grad is None:  # the output does not depend on it (e.g. no
            continue  # prev_router_logits: the residual weight is unused)
        if ref_g is None:
            ref_g = torch.zeros_like(params[name])
        assert p.grad is not None, f"no gradient reached {name}"
        close(p.grad, ref_g, f"gradient of {name}")
    for (ref_inp, ours_inp), ref_g in zip(extra_inputs, grads[len(leaves):]):
        close(ours_inp.grad, ref_g, "input gradient")


def run_topk_case(opts, shape=(29,), seed=0, prev=False):
    layer = make_layer(seed=seed, **opts)
    params = ref_params(layer)
    gen = torch.Generator().manual_seed(seed + 100)
    x = torch.randn(*shape, D, generator=gen, dtype=torch.float64)
    x_ours, x_ref = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    T = x.numel() // D
    extra = [(x_ref, x_ours)]
    kwargs, prev_ref = {}, None
    if prev:
        Et = params["router.weight"].shape[0]
        p = torch.randn(T, Et, generator=gen, dtype=torch.float64)
        p_ours, prev_ref = p.clone().requires_grad_(True), p.clone().requires_grad_(True)
        kwargs["prev_router_logits"] = p_ours
        extra.append((prev_ref, p_ours))
    out = layer(x_ours, **kwargs)
    ref = ref_topk_layer(params, x_ref, opts, prev_ref)

    assert out.output.shape == x.shape and out.output.dtype == torch.float64
    close(out.output, ref["output"], "output")
    close(out.router_logits, ref["router_logits"], "router_logits")
    assert torch.equal(out.expert_load, ref["expert_load"]), (out.expert_load, ref["expert_load"])
    assert torch.equal(out.expert_counts, ref["expert_counts"]), (out.expert_counts, ref["expert_counts"])
    assert int(out.num_dropped) == ref["num_dropped"]
    assert float(out.real_experts_per_token) == pytest.approx(ref["real_experts_per_token"], abs=1e-12)
    backward_both(layer, params, x_ref, out, ref, extra_inputs=extra)
    return out, ref


# ---------------------------------------------------------------------------------------
# Routing variants
# ---------------------------------------------------------------------------------------

BASE = dict(num_experts=6, top_k=2, ffn_hidden=12)

TOPK_CASES = {
    "softmax-renorm": dict(BASE),
    "softmax-raw-scaled": dict(BASE, renormalize=False, scaling_factor=2.5),
    "sigmoid-k3": dict(BASE, top_k=3, score_func="sigmoid"),
    "groups-max": dict(num_experts=8, top_k=2, ffn_hidden=12, num_groups=4, topk_groups=2, group_score="max"),
    "selection-bias": dict(BASE, selection_bias=True),
    "gelu": dict(BASE, activation="gelu"),
    "shared-no-gate": dict(BASE, num_shared_experts=2),
    "shared-width": dict(BASE, num_shared_experts=1, shared_ffn_hidden=20),
    "null": dict(BASE, num_null_experts=2),
    "null-k3-sigmoid": dict(BASE, top_k=3, num_null_experts=4, score_func="sigmoid", renormalize=False),
    "moepp": dict(num_experts=4, top_k=2, ffn_hidden=12, num_zero_experts=1, num_copy_experts=1,
                  num_constant_experts=2),
    "moepp-null": dict(num_experts=4, top_k=3, ffn_hidden=12, num_null_experts=1, num_zero_experts=1,
                       num_copy_experts=1, num_constant_experts=1, renormalize=False),
    "capacity-position": dict(num_experts=4, top_k=2, ffn_hidden=12, capacity_factor=0.75),
    "capacity-score": dict(num_experts=4, top_k=2, ffn_hidden=12, capacity_factor=0.75, drop_policy="score"),
    "capacity-null": dict(num_experts=4, top_k=2, ffn_hidden=12, capacity_factor=0.5, num_null_experts=2),
    "capacity-moepp": dict(num_experts=4, top_k=2, ffn_hidden=12, capacity_factor=0.6, num_copy_experts=1,
                           num_constant_experts=1, drop_policy="score"),
}


@pytest.mark.parametrize("case", list(TOPK_CASES))
def test_topk_layer_matches_reference(case):
    opts = TOPK_CASES[case]
    out, ref = run_topk_case(opts)
    if opts.get("capacity_factor", 0) > 0:
        assert ref["num_dropped"] > 0, "the case should exercise drops"
    if opts.get("num_null_experts", 0) or opts.get("num_copy_experts", 0):
        assert ref["real_experts_per_token"] < opts["top_k"], "the case should pick local experts"


@pytest.mark.parametrize("shape", [(3, 11), (1,), (2, 1)], ids=["B3xS11", "T1", "B2xS1"])
def test_3d_and_tiny_inputs(shape):
    run_topk_case(dict(BASE, num_shared_experts=1, num_null_experts=1), shape=shape, seed=3)


def test_gating_residual_matches_reference():
    opts = dict(BASE, gating_residual=True, num_null_experts=1)
    run_topk_case(opts, prev=True, seed=4)
    # Without prev_router_logits the residual term is absent (the first MoE layer).
    run_topk_case(opts, prev=False, seed=4)


def test_gating_residual_chains_layers():
    # Layer 2 consumes layer 1's router_logits; gradients flow back into layer 1's router.
    opts = dict(BASE, gating_residual=True)
    l1, l2 = make_layer(seed=5, **opts), make_layer(seed=6, **opts)
    x = torch.randn(13, D, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    o1 = l1(x)
    o2 = l2(o1.output, prev_router_logits=o1.router_logits)
    o2.output.sum().backward()
    p1, p2 = ref_params(l1), ref_params(l2)
    r1 = ref_topk_layer(p1, x, opts)
    r2 = ref_topk_layer(p2, r1["output"], opts, r1["router_logits"])
    close(o2.output, r2["output"], "output of layer 2")
    (g,) = torch.autograd.grad(r2["output"].sum(), [p1["router.weight"]])
    close(dict(l1.named_parameters())["router.weight"].grad, g, "layer 1 router gradient through layer 2")


@pytest.mark.parametrize("capacity_factor,k,score_func", [(1.0, 1, "softmax"), (0.5, 2, "softmax"),
                                                          (2.0, 2, "sigmoid"), (1.25, 3, "softmax")])
def test_expert_choice_matches_reference(capacity_factor, k, score_func):
    opts = dict(num_experts=5, top_k=k, ffn_hidden=12, router="expert_choice", capacity_factor=capacity_factor,
                score_func=score_func)
    layer = make_layer(seed=8, **opts)
    params = ref_params(layer)
    x = torch.randn(2, 17, D, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    x_ours, x_ref = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out = layer(x_ours)
    ref = ref_expert_choice_layer(params, x_ref, opts)
    close(out.output, ref["output"], "output")
    close(out.router_logits, ref["router_logits"], "router_logits")
    assert out.expert_counts.tolist() == [ref["capacity"]] * 5
    T = x.shape[0] * x.shape[1]
    chosen_tokens = set().union(*ref["chosen"])
    assert int(out.num_dropped) == T - len(chosen_tokens)  # expert choice: tokens nobody took
    assert float(out.real_experts_per_token) == pytest.approx(5 * ref["capacity"] / T)
    backward_both(layer, params, x_ref, out, ref, extra_inputs=[(x_ref, x_ours)])


def test_expert_choice_with_shared_experts():
    opts = dict(num_experts=4, top_k=2, ffn_hidden=12, router="expert_choice", capacity_factor=1.0,
                num_shared_experts=1, shared_expert_gate=True)
    layer = make_layer(seed=10, **opts)
    params = ref_params(layer)
    x = torch.randn(19, D, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    close(layer(x).output, ref_expert_choice_layer(params, x, opts)["output"], "output")


def test_null_slots_add_nothing_and_keep_their_weight():
    # Null expert 6 gets a huge logit for every token: with k=2 each token keeps one real
    # expert whose (renormalised) weight is well below 1, so the routed output shrinks.
    opts = dict(BASE, num_null_experts=1)
    layer = make_layer(seed=12, **opts)
    with torch.no_grad():
        dict(layer.named_parameters())["router.weight"][6].zero_()
    x = torch.randn(9, D, generator=torch.Generator().manual_seed(13), dtype=torch.float64)
    out = layer(x)
    ref = ref_topk_layer(ref_params(layer), x, opts)
    close(out.output, ref["output"], "output")
    assert float(out.real_experts_per_token) == pytest.approx(ref["real_experts_per_token"])


# ---------------------------------------------------------------------------------------
# Losses and statistics
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("score_func,num_null", [("softmax", 0), ("sigmoid", 0), ("softmax", 2)])
def test_losses_match_reference(score_func, num_null):
    coeffs = dict(aux_loss_coeff=0.01, z_loss_coeff=0.001, seq_aux_loss_coeff=0.1)
    opts = dict(BASE, score_func=score_func, num_null_experts=num_null, **coeffs)
    layer = make_layer(seed=14, **opts)
    params = ref_params(layer)
    B, S = 3, 8
    x = torch.randn(B, S, D, generator=torch.Generator().manual_seed(15), dtype=torch.float64)
    out = layer(x)
    ref = ref_topk_layer(params, x, opts)
    sig = score_func == "sigmoid"
    lb = ref_switch_loss(ref["router_logits"], ref["topk_experts"], num_null, sig)
    z = ref_z_loss(ref["router_logits"])
    seq = ref_seq_aux_loss(ref["router_logits"], ref["topk_experts"], S, sig)  # a sequence = one row of x
    close(out.load_balancing_loss, lb, "load_balancing_loss")
    close(out.z_loss, z, "z_loss")
    close(out.seq_aux_loss, seq, "seq_aux_loss")
    total = coeffs["aux_loss_coeff"] * lb + coeffs["z_loss_coeff"] * z + coeffs["seq_aux_loss_coeff"] * seq
    close(out.aux_loss, total, "aux_loss")
    assert out.aux_loss.dim() == 0
    # The losses train the router: their gradient matches the reference's.
    out.aux_loss.backward()
    (g,) = torch.autograd.grad(total, [params["router.weight"]])
    close(dict(layer.named_parameters())["router.weight"].grad, g, "router gradient of aux_loss")


def test_losses_are_zero_when_their_coefficient_is():
    layer = make_layer(seed=16, **BASE, aux_loss_coeff=0.0, z_loss_coeff=0.0, seq_aux_loss_coeff=0.0)
    out = layer(torch.randn(10, D, dtype=torch.float64))
    for name in ("aux_loss", "load_balancing_loss", "z_loss", "seq_aux_loss"):
        value = getattr(out, name)
        assert value.dim() == 0 and float(value) == 0.0, name
    assert out.num_dropped.dtype == torch.int64 and out.num_dropped.dim() == 0
    assert out.real_experts_per_token.dtype == torch.float64
    assert out.expert_counts.dtype == torch.int64 and out.expert_load.dtype == torch.int64


# ---------------------------------------------------------------------------------------
# A real torch.nn.Module
# ---------------------------------------------------------------------------------------

FULL = dict(num_experts=4, top_k=2, ffn_hidden=12, num_null_experts=1, num_zero_experts=1, num_copy_experts=1,
            num_constant_experts=2, num_shared_experts=1, shared_ffn_hidden=10, shared_expert_gate=True,
            gating_residual=True, selection_bias=True)


def test_parameter_and_state_dict_names_and_shapes():
    layer = switchyard.nn.MoELayer(d_model=D, **FULL)
    assert isinstance(layer, torch.nn.Module)
    Et = 4 + 1 + 1 + 1 + 2
    expected_params = {
        "router.weight": (Et, D),
        "router.residual_weight": (Et, Et),
        "experts.gate_proj": (4, D, 12),
        "experts.up_proj": (4, D, 12),
        "experts.down_proj": (4, 12, D),
        "shared_experts.gate_proj.weight": (10, D),
        "shared_experts.up_proj.weight": (10, D),
        "shared_experts.down_proj.weight": (D, 10),
        "shared_expert_gate.weight": (1, D),
        "zero_compute.const_vectors": (2, D),
        "zero_compute.const_gate_weight": (2, 2, D),
    }
    named = {n: tuple(p.shape) for n, p in layer.named_parameters()}
    assert named == expected_params
    assert len(list(layer.parameters())) == len(expected_params)
    assert all(p.requires_grad and p.dtype == torch.float32 for p in layer.parameters())
    sd = layer.state_dict()
    assert set(sd) == set(expected_params) | {"router.selection_bias"}
    assert tuple(sd["router.selection_bias"].shape) == (Et,)
    assert "router.selection_bias" not in named  # a buffer: never trained by the optimizer


def test_minimal_layer_has_only_router_and_experts():
    layer = switchyard.nn.MoELayer(d_model=D, num_experts=3, top_k=1, ffn_hidden=8)
    assert set(layer.state_dict()) == {"router.weight", "experts.gate_proj", "experts.up_proj", "experts.down_proj"}
    gelu = switchyard.nn.MoELayer(d_model=D, num_experts=3, top_k=1, ffn_hidden=8, activation="gelu")
    assert set(gelu.state_dict()) == {"router.weight", "experts.up_proj", "experts.down_proj"}
    biased = switchyard.nn.MoELayer(d_model=D, num_experts=3, top_k=1, ffn_hidden=8, bias_update_rate=1e-3)
    assert "router.selection_bias" in biased.state_dict()


def test_init_std():
    layer = switchyard.nn.MoELayer(d_model=64, num_experts=8, top_k=2, ffn_hidden=128, init_std=0.05)
    w = dict(layer.named_parameters())["experts.up_proj"]
    assert 0.04 < float(w.detach().std()) < 0.06


def test_load_state_dict_round_trip():
    a = make_layer(dtype=torch.float32, seed=17, **FULL)
    b = switchyard.nn.MoELayer(d_model=D, **FULL, aux_loss_coeff=0.0)
    b.load_state_dict(a.state_dict())
    for (na, ta), (nb, tb) in zip(sorted(a.state_dict().items()), sorted(b.state_dict().items())):
        assert na == nb and torch.equal(ta, tb), na
    x = torch.randn(2, 7, D)
    prev = torch.randn(14, 9)
    torch.testing.assert_close(a(x, prev_router_logits=prev).output, b(x, prev_router_logits=prev).output,
                               rtol=0, atol=0)
    with pytest.raises((RuntimeError, KeyError)):
        b.load_state_dict({"router.weight": torch.zeros(9, D)}, strict=True)


def test_to_float64_and_back():
    layer = make_layer(dtype=torch.float32, seed=18, **BASE)
    x = torch.randn(11, D)
    y32 = layer(x).output
    layer = layer.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in layer.parameters())
    y64 = layer(x.double()).output
    assert y64.dtype == torch.float64
    torch.testing.assert_close(y64.float(), y32, rtol=1e-4, atol=1e-5)
    assert layer.to(torch.float32)(x).output.dtype == torch.float32


def test_bfloat16_input_and_weights():
    layer = make_layer(dtype=torch.bfloat16, seed=19, **BASE)
    x = torch.randn(11, D, dtype=torch.bfloat16)
    out = layer(x)
    assert out.output.dtype == torch.bfloat16
    ref = ref_topk_layer(ref_params(layer), x.double(), BASE)
    torch.testing.assert_close(out.output.double(), ref["output"], rtol=5e-2, atol=5e-2)


def test_train_eval_and_jitter():
    opts = dict(BASE, jitter_eps=0.2)
    layer = make_layer(seed=20, **opts)
    assert layer.training
    x = torch.randn(15, D, dtype=torch.float64)
    layer.eval()
    assert not layer.training
    close(layer(x).output, ref_topk_layer(ref_params(layer), x, opts)["output"], "eval output (no jitter)")
    layer.train()
    assert layer.training
    torch.manual_seed(0)
    y1 = layer(x).output
    torch.manual_seed(0)
    y2 = layer(x).output
    assert torch.equal(y1, y2), "jitter must follow torch's generator"
    assert not torch.allclose(y1, layer.eval()(x).output), "jitter is active in training"


class UserModel(torch.nn.Module):
    """A user's model: a Linear, the MoE layer with a residual, a Linear head."""

    def __init__(self, d=16):
        super().__init__()
        self.inp = torch.nn.Linear(4, d)
        self.moe = switchyard.nn.MoELayer(d_model=d, num_experts=4, top_k=2, ffn_hidden=32, num_shared_experts=1,
                                          aux_loss_coeff=0.01, init_std=0.1)
        self.head = torch.nn.Linear(d, 1)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        out = self.moe(h)
        return self.head(h + out.output).squeeze(-1), out.aux_loss


def test_trains_inside_a_user_model_with_adamw():
    torch.manual_seed(0)
    model = UserModel()
    names = {n for n, _ in model.named_parameters()}
    assert {"moe.router.weight", "moe.experts.gate_proj", "moe.shared_experts.up_proj.weight"} <= names
    assert any(k.startswith("moe.experts.") for k in model.state_dict())
    x = torch.randn(256, 4)
    target = torch.sin(2 * x[:, 0]) * x[:, 1] + x[:, 2] ** 2
    opt = torch.optim.AdamW(model.parameters(), lr=3e-2)
    before = dict(model.moe.named_parameters())["experts.up_proj"].detach().clone()
    losses = []
    for _ in range(40):
        pred, aux = model(x)
        loss = F.mse_loss(pred, target)
        opt.zero_grad()
        (loss + aux).backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0], losses
    assert not torch.equal(before, dict(model.moe.named_parameters())["experts.up_proj"])
    # A Sequential of the user's own modules around it works too.
    seq = torch.nn.Sequential(model.inp, torch.nn.Tanh())
    assert model.moe(seq(x)).output.shape == (256, 16)


def test_from_config(tmp_path):
    path = tmp_path / "moe.yaml"
    path.write_text(
        "model:\n  d_model: 32\n"
        "moe:\n  num_experts: 6\n  top_k: 3\n  ffn_hidden: 20\n  num_shared_experts: 2\n"
        "  num_null_experts: 1\n  score_func: sigmoid\n  capacity_factor: 1.5\n"
    )
    cfg = switchyard.load_config(str(path))
    layer = switchyard.nn.MoELayer.from_config(cfg)
    shapes = {n: tuple(p.shape) for n, p in layer.named_parameters()}
    assert shapes["router.weight"] == (7, 32)
    assert shapes["experts.gate_proj"] == (6, 32, 20)
    assert shapes["shared_experts.up_proj.weight"] == (40, 32)
    out = layer(torch.randn(5, 32))
    assert out.expert_load.shape == (7,) and out.expert_counts.shape == (6,)


# ---------------------------------------------------------------------------------------
# Bad input: errors name the tensor, the expected and the actual shape
# ---------------------------------------------------------------------------------------


def _error(fn):
    with pytest.raises((RuntimeError, ValueError, TypeError)) as info:
        fn()
    return str(info.value)


def test_wrong_rank():
    layer = switchyard.nn.MoELayer(d_model=D, num_experts=4, top_k=2, ffn_hidden=8)
    for shape in [(D,), ()]:
        msg = _error(lambda: layer(torch.randn(size=shape)))
        assert "x" in msg and str(list(shape)) in msg and str(D) in msg, msg
    # Any leading shape is flattened into tokens: [..., d] in, the same shape out.
    assert layer(torch.randn(2, 3, 4, D)).output.shape == (2, 3, 4, D)


def test_wrong_hidden_size():
    layer = switchyard.nn.MoELayer(d_model=D, num_experts=4, top_k=2, ffn_hidden=8)
    msg = _error(lambda: layer(torch.randn(5, D + 3)))
    assert "hidden size" in msg.lower() and str(D) in msg and str(D + 3) in msg, msg


def test_dtype_mismatch():
    layer = switchyard.nn.MoELayer(d_model=D, num_experts=4, top_k=2, ffn_hidden=8)
    msg = _error(lambda: layer(torch.randn(5, D, dtype=torch.float64)))
    low = msg.lower()
    assert "dtype" in low and ("double" in low or "float64" in low) and "float" in low.replace("float64", ""), msg


def test_prev_router_logits_wrong_shape():
    layer = switchyard.nn.MoELayer(d_model=D, num_experts=4, top_k=2, ffn_hidden=8, gating_residual=True)
    x = torch.randn(6, D)
    msg = _error(lambda: layer(x, prev_router_logits=torch.randn(7, 4)))
    assert "prev_router_logits" in msg and "6" in msg and "7" in msg, msg
    msg = _error(lambda: layer(x, prev_router_logits=torch.randn(6, 5)))
    assert "prev_router_logits" in msg and "5" in msg, msg


def test_bad_options():
    msg = _error(lambda: switchyard.nn.MoELayer(d_model=D, num_experts=4, top_k=2, ffn_hidden=8, activation="relu"))
    assert "activation" in msg and "relu" in msg, msg
    msg = _error(lambda: switchyard.nn.MoELayer(d_model=D, num_experts=4, top_k=5, ffn_hidden=8))
    assert "top_k" in msg or "k must" in msg, msg


def test_update_selection_bias_follows_the_training_loads():
    rate = 0.125
    layer = make_layer(dtype=torch.float32, seed=21, **BASE, num_null_experts=1, bias_update_rate=rate)
    bias = dict(layer.named_buffers())["router.selection_bias"]
    start = bias.clone()
    x = torch.randn(40, D)
    loads = layer(x).expert_load + layer(x[:17]).expert_load  # two training steps' loads
    with torch.no_grad():
        layer.eval()(x)  # evaluation does not count
    layer.train()
    layer.update_selection_bias()
    E = BASE["num_experts"]
    routed = loads[:E].double()
    expected = start.clone()
    expected[:E] += rate * torch.sign(routed.mean() - routed).float()  # the null expert keeps its bias
    torch.testing.assert_close(bias, expected, rtol=0, atol=1e-7)
    layer.update_selection_bias()  # nothing seen since: a no-op
    torch.testing.assert_close(bias, expected, rtol=0, atol=1e-7)
