"""switchyard.comm: collectives on 1, 2 and 4 ranks, the process groups of a config, and
failures that must end every rank with a message instead of hanging.

The multi-rank checks live in tests/python/mpi_scripts/ (each rank verifies its own
results against values computed from every rank's known inputs); the tests here launch
them with mpirun and read the outcome. tests/cpp/comm/ has the C++ side.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO_ROOT

SCRIPTS = REPO_ROOT / "tests" / "python" / "mpi_scripts"


def _plain(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT
    )


def test_single_process_world_runs_every_collective():
    out = _plain(str(SCRIPTS / "comm_collectives.py"))
    assert out.returncode == 0, out.stderr
    assert "comm ok rank=0 size=1" in out.stdout


def test_world_before_init_names_the_fix():
    out = _plain("-c", "import switchyard.comm as c; c.world()")
    assert out.returncode != 0
    assert "call switchyard::runtime::init() (Python: switchyard.init()) first" in out.stderr


def test_argument_errors_raise_python_exceptions():
    code = """
import torch, switchyard, switchyard.comm as comm
switchyard.init()
w = comm.world()
def expect(exc, text, f):
    try:
        f()
    except exc as e:
        assert text in str(e), str(e)
        assert "Exception raised from" not in str(e), "C++ backtrace leaked: " + str(e)
    else:
        raise AssertionError("no error: " + text)
x = torch.zeros(3, 2)
expect(ValueError, "send_splits must have 1 entries (one per rank of the group), got 2", lambda: comm.all_to_all_v(x, [1, 2], [3]))
expect(ValueError, "send_splits [2] sum to 2 rows, but send has 3 rows (shape [3, 2])", lambda: comm.all_to_all_v(x, [2], [3]))
expect(TypeError, "send has dtype Bool", lambda: comm.all_to_all_v(x.bool(), [3], [3]))
expect(ValueError, "op avg needs a floating-point tensor", lambda: comm.all_reduce(torch.ones(2, dtype=torch.int32), "avg"))
expect(ValueError, "unknown reduce op 'mean'", lambda: comm.all_reduce(x, "mean"))
expect(ValueError, "must be contiguous", lambda: comm.all_reduce(x.t()))
expect(TypeError, "split counts are read on the host", lambda: comm.all_to_all_v(x, torch.tensor([3], device="meta"), [3]))
print("errors ok")
"""
    out = _plain("-c", code)
    assert out.returncode == 0, out.stderr
    assert "errors ok" in out.stdout


@pytest.mark.mpi
@pytest.mark.parametrize("np", [2, 4])
def test_collectives_on_several_ranks(run_mpi, np):
    out = run_mpi(np, str(SCRIPTS / "comm_collectives.py"), timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    # Searched, not split into lines: mpirun may interleave the ranks' output mid-line.
    found = sorted(re.findall(r"comm ok rank=(\d+) size=(\d+)", out.stdout))
    assert found == sorted((str(r), str(np)) for r in range(np)), out.stdout


def _expect_abort(run_mpi, np, mode, *needles, within=60.0):
    start = time.monotonic()
    out = run_mpi(np, str(SCRIPTS / "comm_failures.py"), mode, timeout=within + 30)
    elapsed = time.monotonic() - start
    assert out.returncode != 0, out.stdout
    for needle in needles:
        assert needle in out.stderr, f"{needle!r} not in stderr:\n{out.stderr[-4000:]}"
    assert elapsed < within, f"the job took {elapsed:.0f} s to end"
    return out


@pytest.mark.mpi
def test_bad_argument_on_one_rank_aborts_all_ranks(run_mpi):
    # Rank 0 is already waiting inside the all_to_all_v; rank 1's ValueError must end it.
    out = _expect_abort(
        run_mpi, 2, "bad_splits",
        "all_to_all_v on group 'world': send_splits must have 2 entries (one per rank of the group), got 3",
        "[switchyard] rank 1/2",
    )
    assert "survived" not in out.stdout


@pytest.mark.mpi
def test_collective_failure_reports_operation_group_rank_and_mpi_message(run_mpi):
    _expect_abort(
        run_mpi, 2, "mismatch",
        "fatal: all_to_all_v on group 'world' (rank 1 of 2, world ranks [0, 1]) failed in MPI_Alltoallv: ",
        "MPI_ERR_TRUNCATE",
    )


@pytest.mark.mpi
def test_config_that_does_not_fit_the_world_fails_on_every_rank(run_mpi):
    _expect_abort(run_mpi, 4, "bad_groups", "world size 4 is not a multiple of expert_parallel 3")


@pytest.mark.gpu
def test_nccl_collectives_on_one_gpu():
    # One GPU hosts one NCCL rank: the single-rank world exercises the NCCL paths, the
    # stream ordering and the Work handles (multi-GPU runs: one rank per GPU, see
    # docs/communication.md).
    out = _plain(str(SCRIPTS / "comm_nccl.py"), timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    assert "nccl ok" in out.stdout
