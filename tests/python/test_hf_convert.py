"""switchyard.hf: Hugging Face checkpoints in (Llama, Mistral, Qwen2) and out (Mixtral,
Qwen2-MoE), checked against transformers itself.

Import: tiny models built locally from a config (random weights, no hub), saved with
save_pretrained (one file, and sharded through max_shard_size to exercise the index); our
imported dense model's logits equal transformers' (float32 and float64). Export: a tiny
switchyard MoE checkpoint (random weights, saved through a one-rank ShardedEngine) written
as Mixtral and as Qwen2-MoE, loaded with from_pretrained; logits equal ours. Bad input is
refused naming the tensor or the config field / key, and a refused export leaves nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import switchyard
from conftest import REPO_ROOT
from hf_peers import KeepFloat64, float64_rope, randomize_
from switchyard import checkpoint, hf

transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

VOCAB, D, LAYERS, HEADS, MAX_SEQ, THETA, EPS = 300, 64, 3, 8, 32, 500.0, 1e-5
B, S = 2, 19
F32 = dict(rtol=1e-5, atol=1e-5)
F64 = dict(rtol=1e-10, atol=1e-10)
# What configs/demo.yaml needs besides the model's keys: the byte tokenizer (vocab >= 256)
# and sequences within max_seq_len.
DATA = ["data.tokenizer=byte", "data.seq_len=16"]


def _randomize_(model: torch.nn.Module, seed: int) -> None:
    randomize_(model, seed)


def _float64_rope(peer: torch.nn.Module, head_dim: int) -> None:
    float64_rope(peer, head_dim, THETA)


def _ids(seed=1):
    return torch.randint(0, VOCAB, (B, S), generator=torch.Generator().manual_seed(seed))


def _common(**extra):
    return dict(vocab_size=VOCAB, hidden_size=D, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                num_key_value_heads=2, intermediate_size=96, max_position_embeddings=MAX_SEQ, rope_theta=THETA,
                rms_norm_eps=EPS, **extra)


PEERS = {
    "llama": lambda: LlamaForCausalLM(LlamaConfig(**_common(tie_word_embeddings=False))),
    "llama-tied": lambda: LlamaForCausalLM(LlamaConfig(**_common(tie_word_embeddings=True))),
    "mistral": lambda: MistralForCausalLM(MistralConfig(**_common(sliding_window=None))),
    "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(**_common(use_sliding_window=False))),
}


def _save_peer(name, path, seed=0, **save_kwargs):
    peer = PEERS[name]()
    _randomize_(peer, seed)
    peer.eval()
    peer.save_pretrained(path, **save_kwargs)
    return peer


# ---------------------------------------------------------------------------------------
# Import
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("sharded", [False, True], ids=["one-file", "sharded"])
@pytest.mark.parametrize("name", list(PEERS))
def test_imported_model_matches_transformers(name, sharded, tmp_path):
    peer = _save_peer(name, tmp_path, max_shard_size="40KB" if sharded else "50GB")
    assert (tmp_path / "model.safetensors.index.json").exists() == sharded
    ids = _ids()

    model = hf.load_model(tmp_path)
    assert len(model.moe_layers()) == 0
    with torch.no_grad():
        expected, ours = peer(input_ids=ids).logits, model(ids).logits
    torch.testing.assert_close(ours, expected, **F32)

    # float64 on both sides (the peer's float32 RoPE tables and casts removed).
    model64 = hf.load_model(tmp_path, dtype=torch.float64)
    peer64 = peer.to(torch.float64)
    _float64_rope(peer64, D // HEADS)
    with torch.no_grad(), KeepFloat64():
        expected64 = peer64(input_ids=ids).logits
    with torch.no_grad():
        torch.testing.assert_close(model64(ids).logits, expected64, **F64)


def test_import_result_names_overrides_and_state(tmp_path):
    peer = _save_peer("qwen2", tmp_path)
    got = hf.import_checkpoint(tmp_path)
    assert got["architecture"] == "Qwen2ForCausalLM"
    assert got["overrides"] == [
        f"model.vocab_size={VOCAB}", f"model.d_model={D}", f"model.n_layers={LAYERS}", f"model.n_heads={HEADS}",
        "model.n_kv_heads=2", "model.qkv_bias=true", "model.ffn_hidden=96", f"model.max_seq_len={MAX_SEQ}",
        "model.rope_theta=500.0", "model.norm_eps=1e-05", "model.tie_embeddings=false", "model.moe_layer_freq=0",
        "model.first_k_dense=0", "model.init_std=0.02"]
    theirs = peer.state_dict()
    assert set(got["state"]) == set(theirs)
    for k, v in got["state"].items():
        assert v.dtype == torch.float32 and torch.equal(v, theirs[k]), k
    # The overrides build the same model from any base config.
    cfg = switchyard.load_config(REPO_ROOT / "configs" / "demo.yaml", got["overrides"] + DATA)
    model = switchyard.nn.MoETransformer.from_config(cfg)
    assert model.load_state_dict(got["state"], strict=True) is not None
    # Kept dtype on request.
    assert hf.import_checkpoint(tmp_path, dtype=None)["state"]["model.norm.weight"].dtype == torch.float32


def test_tied_lm_head_and_rope_buffers_are_ignored_by_name(tmp_path):
    _save_peer("llama-tied", tmp_path)
    tensors = safetensors_torch.load_file(tmp_path / "model.safetensors")
    assert "lm_head.weight" not in tensors
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()
    tensors["model.layers.1.self_attn.rotary_emb.inv_freq"] = torch.ones(4)
    safetensors_torch.save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    got = hf.import_checkpoint(tmp_path)
    assert sorted(got["ignored"]) == ["lm_head.weight", "model.layers.1.self_attn.rotary_emb.inv_freq"]
    assert got["state"]["lm_head.weight"] is got["state"]["model.embed_tokens.weight"]


def _edit_config(path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("changes, match", [
    (dict(architectures=["GemmaForCausalLM"]), r"field 'architectures' = \[\"GemmaForCausalLM\"\] is not supported"),
    (dict(hidden_act="gelu"), r"field 'hidden_act' = \"gelu\" is not supported"),
    (dict(rope_scaling={"rope_type": "linear", "factor": 2.0}), r"field 'rope_scaling' = .* is not supported"),
    (dict(rope_parameters={"rope_type": "llama3", "rope_theta": 500.0, "factor": 8.0}),
     r"field 'rope_parameters.\w+' = .* is not supported"),
    (dict(head_dim=16), r"field 'head_dim' = 16 is not supported"),
    (dict(attention_bias=True), r"field 'attention_bias' = true is not supported"),
    (dict(mlp_bias=True), r"field 'mlp_bias' = true is not supported"),
])
def test_unsupported_llama_config_is_refused_naming_the_field(tmp_path, changes, match):
    _save_peer("llama", tmp_path)
    _edit_config(tmp_path, **changes)
    with pytest.raises(ValueError, match=match):
        hf.import_checkpoint(tmp_path)


def test_a_short_sliding_window_is_refused(tmp_path):
    _save_peer("mistral", tmp_path)
    _edit_config(tmp_path, sliding_window=16)
    with pytest.raises(ValueError, match=r"field 'sliding_window' = 16 is not supported"):
        hf.import_checkpoint(tmp_path)
    _edit_config(tmp_path, sliding_window=MAX_SEQ)  # covers every position: fine
    hf.import_checkpoint(tmp_path)
    (tmp_path / "q").mkdir()
    _save_peer("qwen2", tmp_path / "q")
    _edit_config(tmp_path / "q", use_sliding_window=True)
    with pytest.raises(ValueError, match=r"field 'use_sliding_window' = true is not supported"):
        hf.import_checkpoint(tmp_path / "q")


def test_missing_extra_and_misshapen_tensors_are_refused_naming_them(tmp_path):
    _save_peer("llama", tmp_path)
    file = tmp_path / "model.safetensors"
    original = safetensors_torch.load_file(file)

    tensors = dict(original)
    del tensors["model.layers.2.mlp.up_proj.weight"]
    safetensors_torch.save_file(tensors, file, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"lacks tensor 'model\.layers\.2\.mlp\.up_proj\.weight' \(expected shape "
                                         r"\[96, 64\]"):
        hf.import_checkpoint(tmp_path)

    tensors = dict(original, **{"model.layers.0.self_attn.o_proj.bias": torch.zeros(D)})
    safetensors_torch.save_file(tensors, file, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"does not use: 'model\.layers\.0\.self_attn\.o_proj\.bias'"):
        hf.import_checkpoint(tmp_path)

    safetensors_torch.save_file(original, file, metadata={"format": "pt"})
    _edit_config(tmp_path, intermediate_size=95)
    with pytest.raises(ValueError, match=r"tensor 'model\.layers\.0\.mlp\.gate_proj\.weight' has shape \[96, 64\], "
                                         r"expected \[95, 64\] from config.json \(intermediate_size, hidden_size\)"):
        hf.import_checkpoint(tmp_path)


def test_a_sharded_index_naming_a_tensor_its_shard_lacks_is_refused(tmp_path):
    _save_peer("llama", tmp_path, max_shard_size="40KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.layers.9.mlp.up_proj.weight"] = next(iter(index["weight_map"].values()))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"tensor 'model\.layers\.9\.mlp\.up_proj\.weight' is in .* has no such"):
        hf.import_checkpoint(tmp_path)


# ---------------------------------------------------------------------------------------
# The import command: a one-rank switchyard checkpoint of the dense model
# ---------------------------------------------------------------------------------------


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT / "python")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _python(*args, timeout=300):
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=_env(),
                         cwd=REPO_ROOT)
    return out


def test_import_command_writes_a_checkpoint_that_loads_as_the_model(tmp_path):
    peer = _save_peer("qwen2", tmp_path / "hf")
    out = _python("-m", "switchyard.hf", "import", str(tmp_path / "hf"), "--config", "configs/demo.yaml",
                  "--out", str(tmp_path / "ckpt"), "--set", DATA[0], "--set", DATA[1])
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    path = checkpoint.latest(tmp_path / "ckpt")
    assert path.endswith("step_00000000")
    checkpoint.verify(path)
    model = checkpoint.load_model(path)
    ids = _ids()
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, peer(input_ids=ids).logits, **F32)
    moments = checkpoint.read_full_state(path, optimizer=True)
    assert all(float(v.abs().max()) == 0 for k, v in moments.items() if k.endswith((".exp_avg", ".exp_avg_sq")))


# ---------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------

TINY_MOE = ["model.vocab_size=300", "model.d_model=64", "model.n_layers=3", "model.n_heads=8", "model.n_kv_heads=2",
            "model.ffn_hidden=72", "model.max_seq_len=32", "model.rope_theta=500.0", "model.norm_eps=1e-5",
            "model.init_std=0.1", "moe.num_experts=4", "moe.top_k=2", "moe.ffn_hidden=48", "moe.aux_loss_coeff=0.01",
            "moe.capacity_factor=0", "moe.num_null_experts=0", "moe.selection_bias=false", "moe.bias_update_rate=0",
            "parallel.expert_parallel=1", *DATA]
MIXTRAL = TINY_MOE + ["model.moe_layer_freq=1", "model.first_k_dense=0", "moe.num_shared_experts=0",
                      "moe.renormalize=true"]
# Untied: ShardedEngine (on main at the time of writing) refuses a tied MoETransformer
# ("'lm_head.weight' belongs to no unit"), so no tied checkpoint can be saved here.
QWEN2_MOE = TINY_MOE + ["model.moe_layer_freq=1", "model.first_k_dense=1", "moe.num_shared_experts=1",
                        "moe.shared_ffn_hidden=40", "moe.shared_expert_gate=true", "moe.renormalize=false",
                        "model.qkv_bias=true"]

_SAVE_SCRIPT = """
import sys, torch, switchyard, switchyard.comm as comm
from switchyard import checkpoint
from switchyard.nn import MoETransformer
from switchyard.sharding import ShardedEngine
switchyard.init()
cfg = switchyard.load_config("configs/demo.yaml", sys.argv[2:])
torch.manual_seed(0)
model = MoETransformer.from_config(cfg)
gen = torch.Generator().manual_seed(1)
with torch.no_grad():  # every parameter random, biases and norms included
    for name, p in sorted(model.named_parameters()):
        p.copy_(torch.randn(p.shape, generator=gen) * 0.1 + (1.0 if "norm" in name else 0.0))
engine = ShardedEngine(model, cfg, comm.groups(cfg))
print(checkpoint.save(sys.argv[1], 3, engine, cfg))
"""


def _moe_checkpoint(root, overrides):
    out = _python("-c", _SAVE_SCRIPT, str(root), *overrides)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return out.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def moe_checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("moe")
    return {"mixtral": _moe_checkpoint(root / "mixtral", MIXTRAL),
            "qwen2_moe": _moe_checkpoint(root / "qwen2_moe", QWEN2_MOE)}


@pytest.mark.parametrize("fmt", hf.FORMATS)
def test_exported_model_matches_ours_in_transformers(moe_checkpoints, fmt, tmp_path):
    ckpt = moe_checkpoints[fmt]
    out = tmp_path / "hf"
    result = hf.export(ckpt, out, format=fmt)
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]
    assert result["architecture"] == {"mixtral": "MixtralForCausalLM", "qwen2_moe": "Qwen2MoeForCausalLM"}[fmt]

    ours = checkpoint.load_model(ckpt)
    theirs = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    theirs.eval()
    assert type(theirs).__name__ == result["architecture"]
    n_ours = sum(p.numel() for p in ours.parameters())
    n_theirs = sum(p.numel() for p in theirs.parameters())
    assert n_ours == n_theirs
    ids = _ids()
    with torch.no_grad():
        torch.testing.assert_close(theirs(input_ids=ids).logits, ours(ids).logits, **F32)
    if fmt == "qwen2_moe":
        cfg = json.loads((out / "config.json").read_text())
        assert cfg["mlp_only_layers"] == [0] and cfg["norm_topk_prob"] is False and cfg["qkv_bias"] is True


def test_export_command(moe_checkpoints, tmp_path):
    out = _python("-m", "switchyard.hf", "export", moe_checkpoints["mixtral"], "--out", str(tmp_path / "m"),
                  "--format", "mixtral", "--dtype", "bfloat16")
    assert out.returncode == 0, out.stderr
    assert "MixtralForCausalLM" in out.stdout
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["torch_dtype"] == "bfloat16" and cfg["num_local_experts"] == 4 and cfg["tie_word_embeddings"] is False
    tensors = safetensors_torch.load_file(tmp_path / "m" / "model.safetensors")
    assert tensors["model.layers.0.block_sparse_moe.experts.3.w2.weight"].shape == (D, 48)
    assert tensors["lm_head.weight"].shape == (VOCAB, D) and all(t.dtype == torch.bfloat16 for t in tensors.values())


def test_a_refused_export_leaves_nothing(moe_checkpoints, tmp_path):
    out = tmp_path / "hf"
    # Qwen2-MoE's model has a dense block, a shared expert and q/k/v biases: not a Mixtral.
    with pytest.raises(ValueError, match=r"model.first_k_dense / model.moe_layer_freq = 1 / 1 cannot be exported as "
                                         r"mixtral"):
        hf.export(moe_checkpoints["qwen2_moe"], out, format="mixtral")
    assert not out.exists() and os.listdir(tmp_path) == []
    out.mkdir()
    (out / "x").write_text("")
    with pytest.raises(ValueError, match=r"already exists"):
        hf.export(moe_checkpoints["mixtral"], out, format="mixtral")
    assert os.listdir(out) == ["x"]
    cli = _python("-m", "switchyard.hf", "export", moe_checkpoints["mixtral"], "--out", str(tmp_path / "q"),
                  "--format", "qwen2_moe")
    assert cli.returncode == 1 and "moe.num_shared_experts = 0 cannot be exported as qwen2_moe" in cli.stderr
    assert not (tmp_path / "q").exists()
    assert sorted(os.listdir(tmp_path)) == ["hf"]


@pytest.mark.parametrize("overrides, fmt, match", [
    (["moe.score_func=sigmoid"], "mixtral", r"moe.score_func = sigmoid cannot be exported as mixtral"),
    (["moe.router=expert_choice", "moe.capacity_factor=1.0"], "mixtral", r"moe.router = expert_choice"),
    (["moe.num_null_experts=2"], "mixtral", r"moe.num_null_experts = 2"),
    (["moe.capacity_factor=1.25"], "mixtral", r"moe.capacity_factor = 1.25.* ignore_capacity"),
    (["moe.renormalize=false"], "mixtral", r"moe.renormalize = false"),
    (["moe.gating_residual=true"], "mixtral", r"moe.gating_residual = true"),
    (["moe.bias_update_rate=0.001"], "mixtral", r"moe.bias_update_rate = 0.001"),
    (["moe.activation=gelu"], "qwen2_moe", r"moe.activation = gelu"),
    (["moe.shared_expert_gate=false"], "qwen2_moe", r"moe.shared_expert_gate = false"),
    (["model.moe_layer_freq=0"], "qwen2_moe", r"model.moe_layer_freq = 0"),
])
def test_what_the_format_cannot_express_is_refused_naming_our_key(overrides, fmt, match):
    base = MIXTRAL if fmt == "mixtral" else QWEN2_MOE
    cfg = switchyard.load_config(REPO_ROOT / "configs" / "demo.yaml", base + overrides)
    with pytest.raises(ValueError, match=match):
        hf.export_config(cfg, fmt)


def test_capacity_is_dropped_only_when_asked():
    cfg = switchyard.load_config(REPO_ROOT / "configs" / "demo.yaml", MIXTRAL + ["moe.capacity_factor=1.25"])
    text, notes = hf.export_config(cfg, "mixtral", ignore_capacity=True)
    assert json.loads(text)["architectures"] == ["MixtralForCausalLM"]
    assert any("capacity" in n for n in notes)
