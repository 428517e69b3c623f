"""Failure handling of training runs (issue J): a non-finite loss stops the run naming the
step and the layer; kill -9 of one rank ends the whole job within seconds; SIGTERM and
SIGINT save a checkpoint and stop cleanly."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO_ROOT, mpirun_prefix
from test_train import TINY

from switchyard import checkpoint

SCRIPTS = Path(__file__).parent / "mpi_scripts"


def _env():
    env = dict(os.environ)
    env.setdefault("PYTHONPATH", str(REPO_ROOT / "python"))
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _long_run_args(run_dir):
    """A run far longer than any test waits: it is stopped from outside."""
    args = ["-m", "switchyard.train", "--config", "configs/demo.yaml"]
    for kv in TINY + [f"train.run_dir={run_dir}", "train.steps=100000", "train.eval_every=0"]:
        args += ["--set", kv]
    return args


def _wait_for_training(run_dir, proc, timeout=180):
    """Until metrics.csv has a step row (the ranks are inside the loop)."""
    deadline = time.monotonic() + timeout
    metrics = Path(run_dir) / "metrics.csv"
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended early:\n" + proc.communicate()[1][-3000:]
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            return
        time.sleep(0.2)
    raise AssertionError("the run never started training")


def _rank_pid(marker: str, rank: int) -> int:
    """The PID of the rank of an mpirun job whose command line holds `marker`."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline and b"switchyard.train" in cmdline and \
                f"OMPI_COMM_WORLD_RANK={rank}\0".encode() in environ:
            return int(pid)
    raise AssertionError(f"no rank {rank} process for {marker}")


@pytest.mark.mpi
def test_a_non_finite_loss_stops_the_run_naming_the_step_and_the_layer(run_mpi, tmp_path):
    overrides = [kv for kv in TINY if not kv.startswith(("train.steps", "checkpoint.save_every"))]
    out = run_mpi(2, str(SCRIPTS / "nan_stop.py"), str(tmp_path / "run"), *overrides, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    stopped = next(l for l in out.stdout.splitlines() if l.startswith("stopped: "))
    assert "step 3: the loss is nan (non-finite)" in stopped or "step 3: the loss is inf" in stopped, stopped
    assert "the first layer whose output went non-finite is 'blocks.1'" in stopped, stopped
    assert "on rank(s) 0, 1" in stopped
    assert "the last good checkpoint is" in stopped and "step_00000002" in stopped
    # Nothing was saved after the last good checkpoint.
    assert "checkpoints: [2]" in out.stdout


@pytest.mark.mpi
def test_kill_9_of_one_rank_ends_the_job_within_seconds(tmp_path):
    run_dir = tmp_path / "killed"
    cmd = mpirun_prefix(2) + [sys.executable, *_long_run_args(run_dir)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
                            cwd=REPO_ROOT)
    try:
        _wait_for_training(run_dir, proc)
        os.kill(_rank_pid(str(run_dir), 1), signal.SIGKILL)
        killed = time.monotonic()
        _, err = proc.communicate(timeout=60)
        elapsed = time.monotonic() - killed
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert elapsed < 30, f"the job took {elapsed:.1f} s to end after rank 1 was killed"
    assert "signal 9" in err or "Killed" in err, err[-3000:]


@pytest.mark.mpi
@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM])
def test_a_signal_to_mpirun_saves_a_checkpoint_on_every_rank_and_stops(tmp_path, sig):
    # Open MPI 4 forwards SIGUSR1 to the ranks at once. It turns SIGTERM into SIGCONT, then
    # SIGTERM after odls_base_sigkill_timeout seconds, then SIGKILL after as many again, and
    # stops relaying the ranks' output meanwhile: the ranks must save without printing.
    run_dir = tmp_path / "signalled"
    cmd = mpirun_prefix(2) + ["--mca", "odls_base_sigkill_timeout", "5", sys.executable, *_long_run_args(run_dir)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
                            cwd=REPO_ROOT)
    try:
        _wait_for_training(run_dir, proc)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    name = signal.Signals(sig).name
    (step, path), = [c for c in checkpoint.list_checkpoints(run_dir / "checkpoints")
                     if checkpoint.read_metadata(c[1])["trainer"]["reason"] != "periodic"]
    assert step >= 2
    checkpoint.verify(path)
    assert checkpoint.read_metadata(path)["trainer"]["reason"] == f"stopped by {name}"
    if sig == signal.SIGUSR1:  # the job and its output live on: a clean exit, with the message
        assert proc.returncode == 0, err[-3000:]
        assert f"{name} received; saving a checkpoint" in err
        assert f"stopped by {name} at step {step}" in out


def test_sigint_to_a_single_process_run_saves_and_exits_zero(tmp_path):
    run_dir = tmp_path / "interrupted"
    proc = subprocess.Popen([sys.executable, *_long_run_args(run_dir), "--set", "parallel.expert_parallel=1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=REPO_ROOT)
    try:
        _wait_for_training(run_dir, proc)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert "SIGINT received" in err
    (step, path), = checkpoint.list_checkpoints(run_dir / "checkpoints")
    assert checkpoint.read_metadata(path)["trainer"]["reason"] == "stopped by SIGINT"
    assert "--set checkpoint.resume=latest" in out
