"""Shared pytest configuration: the `gpu` and `mpi` markers and an mpirun helper."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU; skipped (with the reason shown) without one")
    config.addinivalue_line("markers", "mpi: launches several ranks with mpirun")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="GPU test: no CUDA GPU visible (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def mpirun_prefix(np: int, forward=("PYTHONPATH", "OMP_NUM_THREADS")) -> list[str]:
    """`mpirun -np N` with the flags a small shared machine needs; append the program."""
    cmd = ["mpirun", "--oversubscribe", "--bind-to", "none", "-np", str(np)]
    if os.geteuid() == 0:
        cmd.append("--allow-run-as-root")
    for var in forward:
        cmd += ["-x", var]
    return cmd


def mpirun_command(np: int, *args: str, forward=("PYTHONPATH", "OMP_NUM_THREADS")) -> list[str]:
    """`mpirun -np N <python> args...` with the flags a small shared machine needs."""
    return mpirun_prefix(np, forward) + [sys.executable, *args]


@pytest.fixture
def run_mpi():
    """Run a Python script under mpirun; returns the CompletedProcess (text mode)."""

    def run(np: int, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        env = dict(os.environ)
        env.setdefault("PYTHONPATH", str(REPO_ROOT / "python"))
        env.setdefault("OMP_NUM_THREADS", "1")
        return subprocess.run(
            mpirun_command(np, *args), capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO_ROOT
        )

    return run
