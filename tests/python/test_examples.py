"""The examples keep working: examples/cpp/train_moe (the pure C++ loop, built into
build/examples/) under mpirun -np 2, and examples/pretrain.py (the Python API without the
CLI) in one process, each for a few steps of a tiny MoE transformer on a small byte-level
token file. docs/examples.md describes both."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT, mpirun_prefix
from switchyard.data import byte_tokenizer, write_tokens

BUILD_DIR = Path(os.environ.get("SWITCHYARD_BUILD_DIR", REPO_ROOT / "build"))
TRAIN_MOE = BUILD_DIR / "examples" / "train_moe"

# 2 layers, d=64, 4 experts (2 per rank under expert_parallel 2), sequences of 32 bytes.
TINY_CONFIG = """\
model: {{vocab_size: 256, d_model: 64, n_layers: 2, n_heads: 4, ffn_hidden: 128, max_seq_len: 32}}
moe: {{num_experts: 4, top_k: 2, ffn_hidden: 64, aux_loss_coeff: 0.01}}
parallel: {{expert_parallel: 2, shard_dense: true, backend: mpi}}
train: {{seed: 7, steps: 5, micro_batch_size: 4, lr: 5.0e-3, min_lr: 5.0e-4, warmup_steps: 1,
         device: cpu, eval_every: 0, log_every: 1, run_dir: "{run_dir}"}}
data: {{source: tokens, path: "{tokens}", tokenizer: byte, seq_len: 32, val_fraction: 0.05}}
"""

STEP_LINE = re.compile(r"^step (\d+)/(\d+) .*?\bloss (\S+)", re.MULTILINE)
FINAL_LINE = re.compile(r"^final loss (\S+)$", re.MULTILINE)


@pytest.fixture
def tiny_config(tmp_path: Path) -> Path:
    """A tiny config whose data is ~48 KB of this repository's docs as byte tokens."""
    text = "\n".join(p.read_text(encoding="utf-8") for p in sorted((REPO_ROOT / "docs").glob("*.md")))
    ids = byte_tokenizer().encode(text)[: 48 * 1024]
    tokens = tmp_path / "tokens.bin"
    write_tokens(str(tokens), ids, "uint16")
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_CONFIG.format(tokens=tokens, run_dir=tmp_path / "run"))
    return config


def _losses(out: subprocess.CompletedProcess, steps: int) -> list[float]:
    assert out.returncode == 0, f"rc {out.returncode}\nstdout:\n{out.stdout}\nstderr:\n{out.stderr}"
    losses = [float(m.group(3)) for m in STEP_LINE.finditer(out.stdout)]
    assert len(losses) == steps, out.stdout  # log_every 1: one line per step, from rank 0 only
    assert all(math.isfinite(v) for v in losses), losses
    final = FINAL_LINE.search(out.stdout)
    assert final is not None, out.stdout
    assert float(final.group(1)) == pytest.approx(losses[-1], abs=1e-4)
    return losses


def _env() -> dict:
    env = dict(os.environ)
    env.setdefault("PYTHONPATH", str(REPO_ROOT / "python"))
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


@pytest.mark.mpi
def test_cpp_train_moe_two_ranks(tiny_config: Path):
    if not TRAIN_MOE.is_file():
        pytest.skip(f"{TRAIN_MOE} is not built (scripts/build builds it; SWITCHYARD_BUILD_EXAMPLES=ON)")
    cmd = mpirun_prefix(2) + [str(TRAIN_MOE), "--config", str(tiny_config), "--steps", "5"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=_env(), cwd=REPO_ROOT)
    losses = _losses(out, 5)
    assert losses[0] == pytest.approx(math.log(256), abs=0.5)  # near uniform at init
    assert losses[-1] < losses[0] - 0.1, losses


def test_cpp_train_moe_usage_error():
    if not TRAIN_MOE.is_file():
        pytest.skip(f"{TRAIN_MOE} is not built")
    out = subprocess.run([str(TRAIN_MOE), "--steps"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "--steps needs a value" in out.stderr and "usage: train_moe" in out.stderr


def test_python_pretrain_one_process(tiny_config: Path):
    cmd = [sys.executable, str(REPO_ROOT / "examples" / "pretrain.py"), "--config", str(tiny_config),
           "--set", "parallel.expert_parallel=1", "--set", "train.steps=3"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=_env(), cwd=REPO_ROOT)
    losses = _losses(out, 3)
    assert losses[-1] < losses[0], losses


@pytest.mark.mpi
def test_python_upcycle_and_train_two_ranks(tmp_path: Path):
    tiny = ["model.d_model=64", "model.n_heads=2", "model.n_kv_heads=2", "model.vocab_size=256", "data.tokenizer=byte",
            "data.seq_len=32", "train.micro_batch_size=2", "train.eval_every=2", "train.eval_steps=1",
            "train.warmup_steps=1", "train.log_every=1"]
    cmd = mpirun_prefix(2) + [sys.executable, str(REPO_ROOT / "examples" / "upcycle_and_train.py"),
                              "--dense-steps", "3", "--moe-steps", "3", "--out", str(tmp_path)]
    for kv in tiny:
        cmd += ["--set", kv]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env(), cwd=REPO_ROOT)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "function preserved: True" in out.stdout
    diff = float(out.stdout.split("logit difference at initialisation: ")[1].split()[0])
    assert diff < 1e-4
    assert "resumed from" in out.stdout and "MoE after 3 steps" in out.stdout
