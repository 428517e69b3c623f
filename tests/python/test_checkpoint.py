"""Checkpoints end to end (issue J): bitwise resume, resharding 2->1, 1->2 and 4->2, atomic
saves that survive kill -9, corruption detection, refusal of a checkpoint that does not fit,
retention, and the safetensors files being plain safetensors.

Runs go through the training CLI on the bundled corpus with a tiny model (the TINY overrides
of test_train.py), a few steps each."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO_ROOT, mpirun_command
from test_train import TINY

from switchyard import checkpoint

SCRIPTS = Path(__file__).parent / "mpi_scripts"
# float64 and no balancing loss: runs on different numbers of ranks then optimise the same
# objective on the same global batch, so their curves agree to rounding (see test_train.py).
EXACT = ["model.dtype=float64", "train.precision=fp64", "moe.aux_loss_coeff=0"]
# The same global batch of 4 sequences on R ranks, and R expert-parallel ranks.
LAYOUT = {1: ["train.micro_batch_size=4", "parallel.expert_parallel=1"],
          2: ["train.micro_batch_size=2", "parallel.expert_parallel=2"],
          4: ["train.micro_batch_size=1", "parallel.expert_parallel=4"]}


def _env():
    env = dict(os.environ)
    env.setdefault("PYTHONPATH", str(REPO_ROOT / "python"))
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _train_args(run_dir, *extra):
    args = ["-m", "switchyard.train", "--config", "configs/demo.yaml"]
    for kv in TINY + [f"train.run_dir={run_dir}", "train.steps=6", "train.eval_every=2", *extra]:
        args += ["--set", kv]
    return args


def _train(run_mpi, np, run_dir, *extra, expect=0):
    out = run_mpi(np, *_train_args(run_dir, *extra), timeout=300)
    assert out.returncode == expect, out.stdout[-3000:] + out.stderr[-4000:]
    return out


def _rows(run_dir):
    with open(Path(run_dir) / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _column(run_dir, name):
    return [r[name] for r in _rows(run_dir)]


@pytest.mark.mpi
def test_a_stopped_and_resumed_run_reproduces_the_uninterrupted_curve_bitwise(run_mpi, tmp_path):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    _train(run_mpi, 2, whole)
    out = _train(run_mpi, 2, parts, "checkpoint.stop_at_step=3")
    assert "stopped at checkpoint.stop_at_step 3 at step 3 of 6" in out.stdout
    assert [s for s, _ in checkpoint.list_checkpoints(parts / "checkpoints")] == [3]
    assert len(_rows(parts)) == 3
    out = _train(run_mpi, 2, parts, "checkpoint.resume=latest")
    assert "resumed from" in out.stdout and "at step 3" in out.stdout
    # The CSV holds repr(float): equal strings are equal bits.
    for column in ("step", "lr", "loss", "aux_loss", "grad_norm", "val_loss", "load_max_over_mean"):
        assert _column(parts, column) == _column(whole, column), column
    assert [s for s, _ in checkpoint.list_checkpoints(parts / "checkpoints")] == [3, 6]
    meta = checkpoint.read_metadata(parts / "checkpoints")
    assert meta["trainer"]["step"] == 6 and meta["trainer"]["reason"] == "finished"


@pytest.mark.mpi
@pytest.mark.parametrize("saved_on,loaded_on", [(2, 1), (1, 2), (4, 2)])
def test_a_checkpoint_reshards_onto_another_number_of_ranks(run_mpi, tmp_path, saved_on, loaded_on):
    # Reference: the uninterrupted run on `loaded_on` ranks.
    _train(run_mpi, loaded_on, tmp_path / "ref", *EXACT, *LAYOUT[loaded_on])
    # Written on `saved_on` ranks (experts spread over all of them, dense state sharded) ...
    run = tmp_path / "run"
    _train(run_mpi, saved_on, run, *EXACT, *LAYOUT[saved_on], "checkpoint.stop_at_step=3")
    ckpt = checkpoint.latest(run / "checkpoints")
    index = json.loads((Path(ckpt) / "index.json").read_text())
    assert index["world_size"] == saved_on
    # ... the model it holds gives the same outputs on `loaded_on` ranks as in one process ...
    out = run_mpi(loaded_on, str(SCRIPTS / "checkpoint_outputs.py"), ckpt, *EXACT, *LAYOUT[loaded_on], timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    line = next(l for l in out.stdout.splitlines() if l.startswith("outputs "))
    fields = dict(kv.split("=") for kv in line.split()[1:])
    assert float(fields["sharded"]) == pytest.approx(float(fields["single"]), rel=1e-12, abs=1e-12)
    assert int(fields["step"]) == 3
    # ... and training resumed there (optimizer state, data position resharded) continues the
    # curve of a run that never stopped.
    _train(run_mpi, loaded_on, run, *EXACT, *LAYOUT[loaded_on], "checkpoint.resume=latest")
    for column in ("loss", "val_loss", "grad_norm"):
        got = [float(v) for v in _column(run, column) if v]
        want = [float(v) for v in _column(tmp_path / "ref", column) if v]
        assert len(got) == len(want) > 0
        assert got == pytest.approx(want, rel=1e-9, abs=1e-12), column


def _save_one_process(tmp_path, steps=1, *extra):
    run = tmp_path / "one"
    out = subprocess.run([sys.executable, *_train_args(run, f"train.steps={steps}", "parallel.expert_parallel=1",
                                                         *extra)],
                         capture_output=True, text=True, timeout=300, env=_env(), cwd=REPO_ROOT)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return run


def test_a_flipped_byte_or_a_truncated_shard_is_refused_naming_the_file(tmp_path):
    run = _save_one_process(tmp_path)
    ckpt = Path(checkpoint.latest(run / "checkpoints"))
    assert "every file's CRC-32 matches" in checkpoint.verify(ckpt)
    shard = ckpt / "rank_00000.safetensors"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"rank_00000\.safetensors is corrupt: CRC-32"):
        checkpoint.verify(ckpt)
    out = subprocess.run([sys.executable, "-m", "switchyard.checkpoint", "verify", str(ckpt)],
                         capture_output=True, text=True, timeout=120, env=_env(), cwd=REPO_ROOT)
    assert out.returncode == 1 and "is corrupt" in out.stderr
    # Resuming from it stops before training, naming the file; nothing is loaded half-way.
    resumed = subprocess.run([sys.executable, *_train_args(run, "train.steps=2", "parallel.expert_parallel=1",
                                                             f"checkpoint.resume={ckpt}")],
                             capture_output=True, text=True, timeout=300, env=_env(), cwd=REPO_ROOT)
    assert resumed.returncode == 3, resumed.stderr[-3000:]
    assert "rank_00000.safetensors is corrupt" in resumed.stderr and "Traceback" not in resumed.stderr
    shard.write_bytes(bytes(data[: len(data) - 100]))
    with pytest.raises(ValueError, match=r"rank_00000\.safetensors has \d+ bytes but its index recorded"):
        checkpoint.verify(ckpt)


def test_resuming_with_another_model_shape_is_refused_naming_the_keys(tmp_path):
    run = _save_one_process(tmp_path)
    out = subprocess.run([sys.executable, *_train_args(run, "train.steps=2", "parallel.expert_parallel=1",
                                                         "checkpoint.resume=latest", "model.ffn_hidden=96",
                                                         "moe.num_experts=8")],
                         capture_output=True, text=True, timeout=300, env=_env(), cwd=REPO_ROOT)
    assert out.returncode == 3, out.stderr[-3000:]
    assert "does not fit this model" in out.stderr
    assert "model.ffn_hidden (checkpoint: 128, now: 96)" in out.stderr
    assert "moe.num_experts (checkpoint: 4, now: 8)" in out.stderr
    assert "Traceback" not in out.stderr


def test_only_the_last_checkpoints_are_kept(tmp_path):
    run = _save_one_process(tmp_path, 5, "checkpoint.save_every=1", "checkpoint.keep_last=2")
    assert [s for s, _ in checkpoint.list_checkpoints(run / "checkpoints")] == [4, 5]


def test_a_save_killed_half_way_leaves_the_previous_checkpoint_loadable(tmp_path):
    run = _save_one_process(tmp_path)
    root = run / "checkpoints"
    (previous,) = [p for _, p in checkpoint.list_checkpoints(root)]
    # A second save whose shard is large enough (a 400 MB rank tensor) to be caught writing.
    script = f"""
import torch, switchyard, switchyard.comm as comm
from switchyard import checkpoint
from switchyard.nn import MoETransformer
from switchyard.sharding import ShardedEngine
switchyard.init()
cfg = checkpoint.read_config({str(previous)!r})
engine = ShardedEngine(MoETransformer.from_config(cfg), cfg, comm.groups(cfg))
checkpoint.load({str(previous)!r}, engine, cfg)
print("saving", flush=True)
checkpoint.save({str(root)!r}, 2, engine, cfg, rank_tensors={{"ballast": torch.ones(100_000_000)}})
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=_env(), cwd=REPO_ROOT)
    partial = root / "step_00000002.partial"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if partial.is_dir() and any(p.name.startswith("rank_00000.safetensors.tmp") for p in partial.iterdir()):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the save finished before it could be interrupted"
    # The half-written save is invisible; the previous checkpoint verifies and loads.
    assert partial.is_dir()
    assert [p for _, p in checkpoint.list_checkpoints(root)] == [previous]
    assert checkpoint.latest(root) == previous
    checkpoint.verify(previous)
    assert checkpoint.load_model(previous) is not None
    # The next save clears the leftover.
    _save_one_process(tmp_path, 2, "checkpoint.resume=latest")
    assert not partial.exists()
    assert [s for s, _ in checkpoint.list_checkpoints(root)] == [1, 2]


def test_shards_are_plain_safetensors_files(tmp_path):
    from safetensors.torch import load_file

    run = _save_one_process(tmp_path)
    ckpt = Path(checkpoint.latest(run / "checkpoints"))
    tensors = load_file(str(ckpt / "rank_00000.safetensors"))
    full = checkpoint.read_full_state(ckpt)
    assert torch.equal(tensors["model.layers.0.mlp.experts.gate_proj.param"],
                       full["model.layers.0.mlp.experts.gate_proj"])
    assert "rank.rng_cpu" in tensors
    # Export: one file with the model's names, loadable into a fresh model.
    out = tmp_path / "export" / "model.safetensors"
    subprocess.run([sys.executable, "-m", "switchyard.checkpoint", "export", str(ckpt), "--out", str(out)],
                   check=True, capture_output=True, text=True, timeout=120, env=_env(), cwd=REPO_ROOT)
    exported = load_file(str(out))
    model = checkpoint.load_model(ckpt)
    assert set(exported) == set(model.state_dict())
    for name, value in model.state_dict().items():
        assert torch.equal(exported[name], value), name
    assert out.with_suffix(".yaml").read_text() == (ckpt / "config.yaml").read_text()


def test_a_checkpoint_tensor_the_model_has_no_place_for_is_refused(tmp_path):
    run = _save_one_process(tmp_path, 1, "moe.selection_bias=true")
    out = subprocess.run([sys.executable, *_train_args(run, "train.steps=2", "parallel.expert_parallel=1",
                                                         "checkpoint.resume=latest", "moe.selection_bias=false")],
                         capture_output=True, text=True, timeout=300, env=_env(), cwd=REPO_ROOT)
    assert out.returncode == 3, out.stderr[-3000:]
    assert "has no place for its tensor 'buffer.model.layers.0.mlp.router.selection_bias'" in out.stderr
    assert "moe.selection_bias (checkpoint: true, now: false)" in out.stderr
