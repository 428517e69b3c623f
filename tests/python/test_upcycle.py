"""Upcycling (issue G): every method the docs call function-preserving gives the source
model's logits at initialisation; the others say why not; nothing of the source is silently
dropped; the command line writes a checkpoint that trains."""

import os
import re
import subprocess
import sys

import pytest
import torch

import switchyard
from conftest import REPO_ROOT
from switchyard import checkpoint, upcycle
from switchyard.nn import MoETransformer

BASE = ["model.vocab_size=256", "model.d_model=32", "model.n_layers=3", "model.n_heads=4", "model.n_kv_heads=2",
        "model.ffn_hidden=64", "model.max_seq_len=32", "model.dtype=float64", "moe.ffn_hidden=64",
        "moe.num_shared_experts=0", "moe.jitter_eps=0", "parallel.expert_parallel=1", "data.seq_len=16",
        "data.tokenizer=byte"]


def _cfg(*extra):
    return switchyard.load_config("configs/demo.yaml", BASE + list(extra))


def _model(cfg, seed=0):
    torch.manual_seed(seed)
    return MoETransformer.from_config(cfg).eval()


def _logits(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (3, 16), generator=g)
    with torch.no_grad():
        return model(x).logits


def _upcycled(source_model, from_cfg, to_cfg, **opts):
    r = upcycle.upcycle_state(source_model.state_dict(), from_cfg, to_cfg, upcycle.options(**opts))
    model = MoETransformer.from_config(to_cfg).eval()
    model.load_state_dict(r["state"])
    return model, r


DENSE = ["model.moe_layer_freq=0"]
PRESERVING = {
    "sparse": (["moe.num_experts=4", "moe.top_k=2"], dict(method="sparse", router_std=0.02)),
    "sparse, top-1, sigmoid": (["moe.num_experts=4", "moe.top_k=1", "moe.score_func=sigmoid"],
                               dict(method="sparse", router_std=0.02)),
    "sparse + shared": (["moe.num_experts=4", "moe.top_k=2", "moe.num_shared_experts=1"],
                        dict(method="sparse", router_std=0.02, shared_fraction=0.3)),
    "sparse + gated shared": (["moe.num_experts=4", "moe.top_k=2", "moe.num_shared_experts=1",
                               "moe.shared_expert_gate=true"], dict(method="sparse", router_std=0.02)),
    "fine-grained": (["moe.num_experts=8", "moe.top_k=4", "moe.ffn_hidden=16"], dict(method="fine_grained")),
    "fine-grained + shared": (["moe.num_experts=8", "moe.top_k=4", "moe.ffn_hidden=16", "moe.num_shared_experts=1",
                               "moe.shared_ffn_hidden=64"], dict(method="fine_grained")),
    "first block dense": (["moe.num_experts=4", "moe.top_k=2", "model.first_k_dense=1"], dict(method="sparse")),
    "scaled routed output": (["moe.num_experts=4", "moe.top_k=2", "moe.scaling_factor=2.5"], dict(method="sparse")),
}


@pytest.mark.parametrize("case", sorted(PRESERVING))
def test_dense_to_moe_preserves_the_logits(case):
    extra, opts = PRESERVING[case]
    dense_cfg = _cfg(*DENSE)
    dense = _model(dense_cfg)
    moe, r = _upcycled(dense, dense_cfg, _cfg(*extra), **opts)
    assert r["preserves_function"], r["reason"]
    assert len(r["consumed"]) == len(dense.state_dict())
    torch.testing.assert_close(_logits(moe), _logits(dense), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("extra,opts,why", [
    (["moe.num_experts=4", "moe.top_k=2"], dict(method="sparse", noise=0.05), "noise > 0"),
    (["moe.num_experts=4", "moe.top_k=2"], dict(method="drop", drop_fraction=0.5), "drop re-draws"),
    (["moe.num_experts=4", "moe.top_k=2", "moe.renormalize=false"], dict(method="sparse"), "do not sum to 1"),
    (["moe.num_experts=4", "moe.top_k=2", "moe.num_null_experts=2"], dict(method="sparse", router_std=0.5), "null"),
    (["moe.num_experts=8", "moe.top_k=2", "moe.ffn_hidden=16"], dict(method="fine_grained"), "multiples"),
])
def test_methods_that_change_the_function_say_why(extra, opts, why):
    dense_cfg = _cfg(*DENSE)
    dense = _model(dense_cfg)
    moe, r = _upcycled(dense, dense_cfg, _cfg(*extra), **opts)
    assert not r["preserves_function"] and why in r["reason"], r["reason"]
    assert not torch.allclose(_logits(moe), _logits(dense), rtol=1e-6, atol=1e-6)


def test_drop_upcycling_redraws_the_chosen_share_of_each_expert():
    dense_cfg = _cfg(*DENSE)
    dense = _model(dense_cfg)
    _, r = _upcycled(dense, dense_cfg, _cfg("moe.num_experts=4", "moe.top_k=2"), method="drop", drop_fraction=0.25)
    gate = r["state"]["model.layers.0.mlp.experts.gate_proj"]        # [E, d, F]
    dense_gate = dense.state_dict()["model.layers.0.mlp.gate_proj.weight"].t()
    for e in range(4):
        kept = (gate[e] == dense_gate).all(dim=0)                     # neurons untouched
        assert int((~kept).sum()) == 16                              # 25% of 64
    assert not torch.equal(gate[0], gate[1])                         # different neurons per expert


@pytest.mark.parametrize("extra", [
    ["moe.top_k=1"],
    ["moe.top_k=2", "moe.num_groups=2", "moe.topk_groups=1"],
    ["moe.top_k=2", "moe.num_groups=2", "moe.topk_groups=1", "moe.renormalize=false"],
    ["moe.top_k=2", "moe.num_groups=2", "moe.topk_groups=1", "moe.num_shared_experts=1", "moe.score_func=sigmoid"],
])
def test_expert_upcycling_preserves_the_e_expert_model(extra):
    source_extra = [e for e in extra if not e.startswith(("moe.num_groups", "moe.topk_groups"))]
    src_cfg = _cfg("moe.num_experts=4", *source_extra)
    src = _model(src_cfg)
    with torch.no_grad():  # a trained-looking router: tokens spread over the experts
        for name, p in src.named_parameters():
            if name.endswith("router.weight"):
                p.normal_(0, 1.0)
    big, r = _upcycled(src, src_cfg, _cfg("moe.num_experts=8", *extra), noise=0.0)
    assert r["preserves_function"], r["reason"]
    torch.testing.assert_close(_logits(big), _logits(src), rtol=1e-12, atol=1e-12)
    experts = r["state"]["model.layers.0.mlp.experts.up_proj"]
    torch.testing.assert_close(experts[4:], experts[:4])  # block 1 is a copy of block 0


def test_expert_upcycling_with_top_k_over_all_copies_is_flagged():
    src_cfg = _cfg("moe.num_experts=4", "moe.top_k=2")
    _, r = _upcycled(_model(src_cfg), src_cfg, _cfg("moe.num_experts=8", "moe.top_k=2"))
    assert not r["preserves_function"] and "moe.num_groups = 2" in r["reason"]


@pytest.mark.parametrize("change,message", [
    ("drop", "source tensor(s) would be dropped, e.g. 'extra.weight'"),
    ("missing", "the source has no tensor 'model.layers.1.mlp.up_proj.weight'"),
    ("shape", "source tensor 'model.norm.weight' has shape [31] but the source config says [32]"),
])
def test_nothing_of_the_source_is_silently_dropped_or_guessed(change, message):
    dense_cfg = _cfg(*DENSE)
    state = dict(_model(dense_cfg).state_dict())
    if change == "drop":
        state["extra.weight"] = torch.zeros(2)
    elif change == "missing":
        del state["model.layers.1.mlp.up_proj.weight"]
    else:
        state["model.norm.weight"] = torch.ones(31, dtype=torch.float64)
    with pytest.raises(ValueError, match=re.escape(message)):
        upcycle.upcycle_state(state, dense_cfg, _cfg("moe.num_experts=4"), upcycle.options())


def test_a_mismatched_target_is_refused_naming_the_key():
    dense_cfg = _cfg(*DENSE)
    with pytest.raises(ValueError, match="moe.ffn_hidden must be 64, not 32"):
        upcycle.upcycle_state(_model(dense_cfg).state_dict(), dense_cfg, _cfg("moe.ffn_hidden=32"), upcycle.options())
    with pytest.raises(ValueError, match="model.d_model is 48 in the target but 32 in the source"):
        upcycle.upcycle_state(_model(dense_cfg).state_dict(), dense_cfg, _cfg("model.d_model=48", "model.n_heads=4"),
                              upcycle.options())


@pytest.mark.mpi
def test_the_command_line_upcycles_a_trained_dense_checkpoint_that_then_trains(run_mpi, tmp_path):
    from test_train import TINY

    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT / "python"), OMP_NUM_THREADS="1")
    dense_run = tmp_path / "dense"
    args = [sys.executable, "-m", "switchyard.train", "--config", "configs/demo.yaml"]
    for kv in TINY + ["model.moe_layer_freq=0", "parallel.expert_parallel=1", "train.steps=3",
                      f"train.run_dir={dense_run}"]:
        args += ["--set", kv]
    subprocess.run(args, check=True, capture_output=True, text=True, timeout=300, env=env, cwd=REPO_ROOT)
    out = subprocess.run([sys.executable, "-m", "switchyard.upcycle", "--from", str(dense_run / "checkpoints"),
                          "--config", "configs/demo.yaml", "--out", str(tmp_path / "moe"), "--router-std", "0.02"]
                         + [a for kv in TINY + ["moe.ffn_hidden=128", "moe.num_shared_experts=0"]
                            for a in ("--set", kv)],
                         capture_output=True, text=True, timeout=300, env=env, cwd=REPO_ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "function preserved at initialisation: yes" in out.stdout
    dense, moe = checkpoint.load_model(dense_run / "checkpoints"), checkpoint.load_model(tmp_path / "moe")
    torch.testing.assert_close(_logits_of(moe), _logits_of(dense), rtol=1e-5, atol=1e-5)
    # Training starts from it on 2 ranks (experts spread over both).
    resumed = run_mpi(2, "-m", "switchyard.train", "--config", "configs/demo.yaml",
                      *[a for kv in TINY + ["moe.ffn_hidden=128", "moe.num_shared_experts=0", "train.steps=2",
                                            f"train.run_dir={tmp_path / 'moe_run'}",
                                            f"checkpoint.resume={tmp_path / 'moe'}"] for a in ("--set", kv)],
                      timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and "at step 0" in resumed.stdout


def _logits_of(model):
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (2, 16), generator=g)
    with torch.no_grad():
        return model.eval()(x).logits


@pytest.mark.parametrize("peer_name", ["llama", "llama-tied", "qwen2"])
def test_a_hugging_face_model_upcycles_to_the_same_logits(peer_name, tmp_path):
    from test_hf_convert import PEERS, _ids, _save_peer

    from switchyard import hf

    peer = _save_peer(peer_name, tmp_path / "hf")
    imported = hf.import_checkpoint(tmp_path / "hf")
    model_keys = [o for o in imported["overrides"] if not o.startswith(("model.moe_layer_freq", "model.first_k_dense"))]
    ffn = next(o for o in model_keys if o.startswith("model.ffn_hidden=")).split("=")[1]
    target = switchyard.load_config("configs/demo.yaml", model_keys + [
        "data.tokenizer=byte", "data.seq_len=16", "parallel.expert_parallel=2", "moe.num_experts=4", "moe.top_k=2",
        f"moe.ffn_hidden={ffn}", "moe.num_shared_experts=1", f"moe.shared_ffn_hidden={ffn}", "moe.jitter_eps=0"])
    result = upcycle.upcycle(tmp_path / "hf", target, tmp_path / "moe", upcycle.options(router_std=0.02))
    assert result["preserves_function"], result["reason"]
    moe = checkpoint.load_model(tmp_path / "moe").eval()
    assert len(moe.moe_layers()) == target.model.n_layers
    ids = _ids()
    with torch.no_grad():
        torch.testing.assert_close(moe(ids).logits, peer(input_ids=ids).logits, rtol=1e-4, atol=1e-5)


def test_utility_scores_decide_which_experts_are_duplicated():
    assert upcycle.copies_by_utility([torch.tensor([3.0, 1.0, 0.0, 0.0])], 2) == [[0, 0, 0, 1]]
    assert upcycle.copies_by_utility([torch.tensor([1.0, 1.0, 1.0])], 3) == [[0, 0, 1, 1, 2, 2]]
    src_cfg = _cfg("moe.num_experts=4", "moe.top_k=1")
    src = _model(src_cfg)
    with torch.no_grad():
        for name, p in src.named_parameters():
            if name.endswith("router.weight"):
                p.normal_(0, 1.0)
    g = torch.Generator().manual_seed(5)
    batches = [(torch.randint(0, 256, (2, 16), generator=g), torch.randint(0, 256, (2, 16), generator=g))
               for _ in range(2)]
    scores = upcycle.expert_utility(src, batches)
    assert len(scores) == 3 and all(s.shape == (4,) and (s >= 0).all() and s.sum() > 0 for s in scores)
    extra = upcycle.copies_by_utility(scores, 2)
    big, r = _upcycled(src, src_cfg, _cfg("moe.num_experts=8", "moe.top_k=1"), extra_copies=extra)
    assert r["preserves_function"], r["reason"]
    torch.testing.assert_close(_logits(big.eval()), _logits(src.eval()), rtol=1e-12, atol=1e-12)
    experts = r["state"]["model.layers.1.mlp.experts.gate_proj"]
    src_experts = src.state_dict()["model.layers.1.mlp.experts.gate_proj"]
    for slot, e in enumerate(extra[1]):
        torch.testing.assert_close(experts[4 + slot], src_experts[e])
    # Non-uniform copies leave no blocks to limit routing to: top-2 is flagged.
    _, r2 = _upcycled(src, _cfg("moe.num_experts=4", "moe.top_k=2"), _cfg("moe.num_experts=8", "moe.top_k=2",
                      "moe.num_groups=2", "moe.topk_groups=1"), extra_copies=extra)
    assert not r2["preserves_function"] and "utility-chosen copies" in r2["reason"]
