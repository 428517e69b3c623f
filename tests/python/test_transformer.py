"""switchyard.nn.MoETransformer on its own: the UnitSequence contract, construction from a
config and from keywords, bad input, expert-parallel hooks and a training smoke test.

The Hugging Face comparisons live in test_transformer_parity_hf.py.
"""

from __future__ import annotations

import math

import pytest
import torch

import switchyard
from switchyard.nn import MoETransformer

VOCAB = 61


def _moe_model(dtype=torch.float64, seed=0, **overrides):
    torch.manual_seed(seed)
    options = dict(vocab_size=VOCAB, d_model=32, n_layers=5, n_heads=4, n_kv_heads=2, ffn_hidden=48, max_seq_len=24,
                   moe_layer_freq=2, first_k_dense=1, tie_embeddings=True, init_std=0.1,
                   moe=dict(num_experts=4, top_k=2, ffn_hidden=24, gating_residual=True, num_shared_experts=1,
                            aux_loss_coeff=0.05, z_loss_coeff=0.01, num_null_experts=1))
    options.update(overrides)
    return MoETransformer(**options).to(dtype)


def _batch(seed=1, B=3, S=11):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (B, S), generator=gen)
    targets = torch.randint(0, VOCAB, (B, S), generator=gen)
    targets[0, :4] = -100
    targets[2, 7] = -3
    return ids, targets


# ---------------------------------------------------------------------------------------
# The UnitSequence contract (csrc/switchyard/nn/unit_sequence.h)
# ---------------------------------------------------------------------------------------


def test_units_describe_the_model():
    model = _moe_model()
    n = model.num_units()
    assert n == 5 + 2
    assert [model.unit_name(i) for i in range(n)] == ["embed"] + [f"blocks.{i}" for i in range(5)] + ["head"]
    named = dict(model.cpp_module.named_parameters())  # C++ names: lm_head.weight listed too
    listed = {}
    for i in range(n):
        for name, tensor, expert in model.unit_parameters(i):
            assert name in named and tensor.data_ptr() == named[name].data_ptr(), name
            assert expert == (".mlp.experts." in name), name
            listed.setdefault(name, []).append(i)
    # Every parameter is read by some unit; the tied embedding by the first and the last.
    assert set(listed) == set(named) - {"lm_head.weight"}
    assert listed["model.embed_tokens.weight"] == [0, n - 1]
    assert all(len(units) == 1 for name, units in listed.items() if name != "model.embed_tokens.weight")
    # Blocks 2 and 4 are MoE: i >= first_k_dense = 1 and i a multiple of moe_layer_freq = 2.
    moe_blocks = sorted({int(name.split(".")[2]) for name in listed if ".mlp.router." in name})
    assert moe_blocks == [2, 4]
    assert any(expert for i in range(n) for _, _, expert in model.unit_parameters(i))


def test_unit_by_unit_equals_forward_backward():
    """Exactly what the sharding engine does: run each unit on detached inputs, then
    backpropagate unit by unit in reverse, feeding each unit's input gradients to the
    previous unit as its output gradients. Parameter gradients must equal one
    forward + backward of the whole model."""
    model = _moe_model()
    ids, targets = _batch()

    out = model(ids, targets)
    (out.loss + out.aux_loss).backward()
    reference = {n: p.grad.clone() for n, p in model.named_parameters()}
    reference_loss, reference_aux = out.loss.detach(), out.aux_loss.detach()
    model.zero_grad()

    n = model.num_units()
    saved, inputs, losses, aux_total = [], [], None, 0.0
    for i in range(n):
        detached = [None if t is None else t.detach().requires_grad_(t.is_floating_point()) for t in inputs]
        outputs, aux, stats = model.run_unit(i, detached, ids, targets)
        saved.append((detached, outputs, aux))
        if aux is not None:
            aux_total = aux_total + aux.detach()
            assert set(stats) == {"expert_counts", "expert_load", "num_dropped", "real_experts_per_token"}
            assert not any(t.requires_grad for t in stats.values())
        inputs = outputs
        if i == n - 1:
            assert len(outputs) == 1 and outputs[0].dim() == 0
            losses = outputs[0].detach()
        else:
            assert len(outputs) == 2  # {hidden, router logits (None before the first MoE block)}
            assert (outputs[1] is None) == (i < 3), i  # gating residual: logits from block 2 (unit 3) on

    torch.testing.assert_close(losses, reference_loss, rtol=0, atol=0)
    torch.testing.assert_close(aux_total, reference_aux, rtol=1e-14, atol=0)

    grads_out = None
    for i in reversed(range(n)):
        detached, outputs, aux = saved[i]
        tensors, grads = [], []
        if i == n - 1:
            tensors, grads = [outputs[0]], [torch.ones_like(outputs[0])]
        else:
            for t, g in zip(outputs, grads_out):
                if t is not None and g is not None:
                    tensors.append(t)
                    grads.append(g)
        if aux is not None:
            tensors.append(aux)
            grads.append(torch.ones_like(aux))
        torch.autograd.backward(tensors, grads)
        grads_out = [None if t is None else t.grad for t in detached]

    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, reference[name], rtol=1e-12, atol=1e-14, msg=lambda m: f"{name}: {m}")


def test_forward_results():
    model = _moe_model()
    ids, targets = _batch()
    out = model(ids)
    assert out.loss is None and out.logits.shape == (3, 11, VOCAB)
    trained = model(ids, targets)
    assert trained.logits is None and trained.loss.dim() == 0  # no second [B, S, V] kept
    assert [s["layer"] for s in trained.moe_stats] == [2, 4]
    s = trained.moe_stats[0]
    assert s["expert_counts"].shape == (4,) and s["expert_load"].shape == (5,)  # + 1 null expert
    assert float(trained.aux_loss.detach()) == pytest.approx(sum(float(s["aux_loss"]) for s in trained.moe_stats), rel=1e-12)
    # The loss is the mean cross-entropy over targets >= 0 (-100 and -3 ignored alike).
    logp = torch.log_softmax(out.logits, -1)
    keep = targets >= 0
    expected = -logp[keep].gather(-1, targets[keep].unsqueeze(-1)).mean()
    torch.testing.assert_close(trained.loss, expected, rtol=1e-12, atol=1e-12)
    # Every target ignored: loss 0, not NaN.
    assert float(model(ids, torch.full_like(targets, -100)).loss.detach()) == 0.0


def test_dense_model_has_no_aux_loss():
    model = _moe_model(moe_layer_freq=0)
    out = model(*_batch())
    assert out.moe_stats == [] and float(out.aux_loss.detach()) == 0.0 and model.moe_layers() == []
    assert not any(expert for i in range(model.num_units()) for _, _, expert in model.unit_parameters(i))


def test_init_scales_residual_projections():
    model = MoETransformer(vocab_size=512, d_model=256, n_layers=8, n_heads=4, ffn_hidden=512, init_std=0.02,
                           moe_layer_freq=2, moe=dict(num_experts=4, top_k=2, ffn_hidden=256, num_shared_experts=1))
    p = {n: t.detach() for n, t in model.named_parameters()}
    residual = 0.02 / math.sqrt(16)
    for name, std in [("model.embed_tokens.weight", 0.02), ("lm_head.weight", 0.02),
                      ("model.layers.1.self_attn.q_proj.weight", 0.02),
                      ("model.layers.1.self_attn.o_proj.weight", residual),
                      ("model.layers.1.mlp.up_proj.weight", 0.02), ("model.layers.1.mlp.down_proj.weight", residual),
                      ("model.layers.0.mlp.router.weight", 0.02), ("model.layers.0.mlp.experts.down_proj", residual),
                      ("model.layers.0.mlp.experts.gate_proj", 0.02),
                      ("model.layers.0.mlp.shared_experts.down_proj.weight", residual)]:
        assert float(p[name].std()) == pytest.approx(std, rel=0.05), name
    assert torch.equal(p["model.norm.weight"], torch.ones(256))
    flat = MoETransformer(vocab_size=64, d_model=256, n_layers=8, n_heads=4, ffn_hidden=512, moe_layer_freq=0,
                          scale_residual_init=False)
    assert float(dict(flat.named_parameters())["model.layers.3.mlp.down_proj.weight"].detach().std()) == pytest.approx(
        0.02, rel=0.05)


# ---------------------------------------------------------------------------------------
# Construction
# ---------------------------------------------------------------------------------------


def test_from_config(tmp_path):
    path = tmp_path / "model.yaml"
    path.write_text(
        "model:\n  vocab_size: 300\n  d_model: 32\n  n_layers: 3\n  n_heads: 4\n  n_kv_heads: 1\n  ffn_hidden: 40\n"
        "  max_seq_len: 16\n  moe_layer_freq: 1\n  first_k_dense: 1\n  tie_embeddings: true\n  dtype: float64\n"
        "moe:\n  num_experts: 4\n  top_k: 1\n  ffn_hidden: 20\n"
        "data:\n  seq_len: 16\n"
    )
    cfg = switchyard.load_config(str(path))
    model = MoETransformer.from_config(cfg)
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    assert shapes["model.layers.0.mlp.gate_proj.weight"] == (40, 32)
    assert shapes["model.layers.1.mlp.experts.gate_proj"] == (4, 32, 20)
    assert shapes["model.layers.2.self_attn.k_proj.weight"] == (8, 32)  # 1 kv head of size 8
    assert all(p.dtype == torch.float64 for p in model.parameters())
    assert len(model.moe_layers()) == 2
    out = model(torch.randint(0, 300, (2, 16)), torch.randint(0, 300, (2, 16)))
    assert out.loss.dtype == torch.float64 and len(out.moe_stats) == 2


def _error(fn, kinds=(RuntimeError, ValueError, TypeError)):
    with pytest.raises(kinds) as info:
        fn()
    return str(info.value)


def test_config_errors_name_the_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  d_model: 30\n  n_heads: 4\n")
    msg = _error(lambda: switchyard.load_config(str(path)))
    assert "model.n_heads" in msg and "model.d_model" in msg, msg
    path.write_text("model:\n  d_model: 32\n  n_heads: 4\n  n_kv_heads: 3\n")
    msg = _error(lambda: switchyard.load_config(str(path)))
    assert "model.n_kv_heads" in msg, msg


def test_keyword_errors_name_the_field():
    base = dict(vocab_size=10, d_model=32, n_layers=1, n_heads=4, moe_layer_freq=0)
    msg = _error(lambda: MoETransformer(**{**base, "n_heads": 5}))
    assert "n_heads" in msg and "d_model" in msg and "5" in msg, msg
    msg = _error(lambda: MoETransformer(**{**base, "n_kv_heads": 3}))
    assert "n_kv_heads" in msg and "3" in msg, msg
    msg = _error(lambda: MoETransformer(**{**base, "n_heads": 32}))  # head size 1: odd
    assert "even" in msg, msg
    msg = _error(lambda: MoETransformer(**{**base, "n_head": 4}))
    assert "n_head" in msg and "n_heads" in msg, msg
    msg = _error(lambda: MoETransformer(**{**base, "moe_layer_freq": 1}, moe=dict(top_k=9)))
    assert "top_k" in msg, msg
    msg = _error(lambda: MoETransformer(**base, moe=dict(d_model=16)))
    assert "d_model" in msg, msg


def test_bad_input_fails_clearly():
    model = _moe_model(dtype=torch.float32)
    msg = _error(lambda: model(torch.zeros(2, 25, dtype=torch.long)))
    assert "max_seq_len" in msg and "25" in msg and "24" in msg, msg
    msg = _error(lambda: model(torch.full((2, 5), VOCAB, dtype=torch.long)))
    assert "vocab_size" in msg and "input_ids" in msg, msg
    msg = _error(lambda: model(torch.full((2, 5), -1, dtype=torch.long)))
    assert "input_ids" in msg, msg
    msg = _error(lambda: model(torch.zeros(5, dtype=torch.long)))
    assert "input_ids" in msg and "[B, S]" in msg, msg
    msg = _error(lambda: model(torch.zeros(2, 5)))
    assert "int64" in msg, msg
    ids = torch.zeros(2, 5, dtype=torch.long)
    msg = _error(lambda: model(ids, torch.full((2, 5), VOCAB, dtype=torch.long)))
    assert "targets" in msg and "vocab_size" in msg, msg
    msg = _error(lambda: model(ids, torch.zeros(2, 4, dtype=torch.long)))
    assert "targets" in msg and "[2, 5]" in msg, msg


# ---------------------------------------------------------------------------------------
# torch.nn.Module behaviour, training
# ---------------------------------------------------------------------------------------


def test_module_behaviour():
    model = _moe_model(dtype=torch.float32)
    assert "MoETransformer" in repr(model) and "self_attn" in repr(model)
    sd = model.state_dict()
    assert "model.layers.2.mlp.router.weight" in sd and "model.layers.2.mlp.experts.up_proj" in sd
    clone = _moe_model(dtype=torch.float32, seed=9)
    clone.load_state_dict(sd)
    ids, targets = _batch()
    model.eval(), clone.eval()
    assert not model.training and not model.model.training
    torch.testing.assert_close(clone(ids, targets).loss, model(ids, targets).loss, rtol=0, atol=0)
    model.double()
    assert all(p.dtype == torch.float64 for p in model.parameters())
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # still tied


def test_selection_bias_update_reaches_every_moe_layer():
    model = _moe_model(dtype=torch.float32, moe=dict(num_experts=4, top_k=2, ffn_hidden=24, bias_update_rate=0.1))
    model(*_batch())
    model.update_selection_bias()
    for layer in model.moe_layers():
        bias = dict(layer.named_buffers())["router.selection_bias"]
        assert float(bias.abs().sum()) > 0


def test_training_reduces_the_loss():
    model = _moe_model(dtype=torch.float32, seed=3, init_std=0.02)
    ids, targets = _batch(seed=4, B=4, S=16)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        out = model(ids, targets)
        (out.loss + out.aux_loss).backward()
        optimizer.step()
        losses.append(float(out.loss.detach()))
    assert losses[-1] < 0.3 * losses[0], losses


@pytest.mark.mpi
def test_distribute_model_equals_local(run_mpi):
    from pathlib import Path

    out = run_mpi(2, str(Path(__file__).parent / "mpi_scripts" / "transformer_expert_parallel.py"), timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    assert out.stdout.count("transformer ep ok") == 2, out.stdout


@pytest.mark.gpu
def test_cuda_matches_cpu():
    model = _moe_model(dtype=torch.float32, init_std=0.05)
    ids, targets = _batch()
    out = model(ids, targets, return_logits=True)
    (out.loss + out.aux_loss).backward()
    cpu = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.cuda()
    gpu = model(ids.cuda(), targets.cuda(), return_logits=True)
    (gpu.loss + gpu.aux_loss).backward()
    torch.testing.assert_close(gpu.logits.cpu(), out.logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gpu.loss.cpu(), out.loss, rtol=1e-5, atol=1e-5)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad.cpu(), cpu[name], rtol=1e-3, atol=1e-4, msg=lambda m: f"{name}: {m}")
    # (Out-of-vocab ids on CUDA fire a device assert, which would poison this process's
    # CUDA context for every later test: not exercised here.)
