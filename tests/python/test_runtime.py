"""switchyard.init(): plain process, under mpirun, and the job-wide fatal path."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from conftest import REPO_ROOT


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT
    )


def test_plain_process_is_rank_zero_of_one():
    out = _python(
        """
        import switchyard
        info = switchyard.init()
        assert switchyard.init() is info            # idempotent
        print(info.rank, info.world_size, switchyard.local_rank(), switchyard.device())
        """
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0", "1", "0", "cuda:0" if torch.cuda.is_available() else "cpu"]


def test_rank_before_init_names_the_fix():
    out = _python("import switchyard; switchyard.rank()")
    assert out.returncode != 0
    assert "call switchyard.init() first" in out.stderr


@pytest.mark.mpi
def test_mpirun_two_ranks_each_know_their_place(run_mpi, tmp_path):
    script = tmp_path / "ranks.py"
    script.write_text(
        textwrap.dedent(
            """
            import switchyard
            info = switchyard.init()
            print(f"rank={info.rank} world={info.world_size} local={info.local_rank} mpirun={info.launched_by_mpirun}",
                  flush=True)
            """
        )
    )
    out = run_mpi(2, str(script))
    assert out.returncode == 0, out.stderr
    # mpirun forwards both ranks' output through one pipe: a line may arrive glued to the
    # other rank's, so find the records rather than whole lines.
    lines = sorted(re.findall(r"rank=\d+ world=\d+ local=\d+ mpirun=(?:True|False)", out.stdout))
    assert lines == [
        "rank=0 world=2 local=0 mpirun=True",
        "rank=1 world=2 local=1 mpirun=True",
    ]


@pytest.mark.mpi
def test_exception_on_one_rank_aborts_the_whole_job(run_mpi, tmp_path):
    # Rank 0 would wait forever; rank 1 fails. The job must end promptly, non-zero, with
    # rank 1's message -- never hang.
    script = tmp_path / "dies.py"
    script.write_text(
        textwrap.dedent(
            """
            import time
            import switchyard
            info = switchyard.init()
            if info.rank == 1:
                raise ValueError("layer 3 produced a tensor of shape [7, 5], expected [7, 4]")
            time.sleep(600)
            """
        )
    )
    start = time.monotonic()
    out = run_mpi(2, str(script), timeout=90)
    elapsed = time.monotonic() - start
    assert out.returncode != 0
    assert elapsed < 60, f"job took {elapsed:.0f}s to die"
    assert "rank 1/2" in out.stderr
    assert "fatal: uncaught ValueError: layer 3 produced a tensor of shape [7, 5], expected [7, 4]" in out.stderr


def test_extension_reports_its_build():
    import switchyard

    assert isinstance(switchyard._C.cuda_built(), bool)


def test_host_allocator_tuning_applies_and_can_be_declined():
    applied = _python("import switchyard; print(switchyard.tune_host_allocator())")
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.strip() == "True"  # glibc (the only libc switchyard builds with)
    declined = subprocess.run(
        [sys.executable, "-c", "import switchyard; print(switchyard.tune_host_allocator())"],
        capture_output=True, text=True, timeout=120, cwd=REPO_ROOT,
        env={**os.environ, "SWITCHYARD_HOST_ALLOCATOR": "system"},
    )
    assert declined.stdout.strip() == "False", declined.stderr
