"""Expert parallelism (switchyard.dispatch): placements, the distributed MoELayer against
the single-process one under mpirun -np 2 and 4, the start-up config check and failures.
The multi-rank work is in mpi_scripts/dispatch_*.py; docs/dispatch.md is the design."""

import re
import time
from pathlib import Path

import pytest
import torch

import switchyard
from switchyard.dispatch import ExpertPlacement

SCRIPTS = Path(__file__).parent / "mpi_scripts"
PARITY_CASES = ["basic", "top3_shared_zero_null", "capacity", "capacity_score", "sigmoid_groups",
                "gelu_top4_bias", "expert_choice"]


def test_contiguous_placement_blocks_and_uneven_counts():
    p = ExpertPlacement.contiguous(10, 4)
    assert p.rank_of_expert == [0, 0, 0, 1, 1, 1, 2, 2, 3, 3]
    assert p.local_experts(1) == [3, 4, 5]
    assert p.num_experts == 10 and p.num_ranks == 4


def test_any_placement_lists_local_experts_ascending():
    p = ExpertPlacement([1, 0, 1, 1, 0], 2)
    assert p.local_experts(0) == [1, 4]
    assert p.local_experts(1) == [0, 2, 3]


def test_placement_hash_is_stable_and_tells_maps_apart():
    a, b = ExpertPlacement.contiguous(8, 2), ExpertPlacement([0, 1] * 4, 2)
    assert a.hash() == ExpertPlacement([0] * 4 + [1] * 4, 2).hash()
    assert a.hash() != b.hash() and a == ExpertPlacement.contiguous(8, 2) and not a == b


def test_bad_placements_are_rejected_with_the_cause():
    with pytest.raises(ValueError, match="expert 2 is placed on rank 5, outside"):
        ExpertPlacement([0, 1, 5], 2)
    with pytest.raises(ValueError, match="rank 1 of 2 holds no expert"):
        ExpertPlacement([0, 0, 0], 2)
    with pytest.raises(ValueError, match="at least one expert per rank"):
        ExpertPlacement.contiguous(3, 4)


def _expect_ok(out, np, cases):
    assert out.returncode == 0, out.stderr[-4000:]
    found = re.findall(r"dispatch ok rank=(\d+) case=(\w+) placement=(\w+)", out.stdout)
    expected = {(str(r), c, p) for r in range(np) for c in cases for p in ("contiguous", "uneven", "random")}
    assert set(found) == expected, out.stdout


@pytest.mark.mpi
@pytest.mark.parametrize("np", [2, 4])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_distributed_layer_equals_local(run_mpi, np, dtype):
    out = run_mpi(np, str(SCRIPTS / "dispatch_parity.py"), dtype, *PARITY_CASES, timeout=600)
    _expect_ok(out, np, PARITY_CASES)


def _expect_abort(run_mpi, np, mode, *needles, within=60.0):
    start = time.monotonic()
    out = run_mpi(np, str(SCRIPTS / "dispatch_failures.py"), mode, timeout=within + 30)
    elapsed = time.monotonic() - start
    assert out.returncode != 0, out.stdout
    for needle in needles:
        assert needle in out.stderr, f"{needle!r} not in stderr:\n{out.stderr[-4000:]}"
    assert elapsed < within, f"the job took {elapsed:.0f} s to end"
    assert "survived" not in out.stdout
    return out


@pytest.mark.mpi
def test_same_config_passes_the_start_up_check(run_mpi):
    out = run_mpi(2, str(SCRIPTS / "dispatch_failures.py"), "same_config")
    assert out.returncode == 0, out.stderr[-4000:]
    assert out.stdout.count("survived same_config") == 2


@pytest.mark.mpi
def test_config_mismatch_names_the_rank_and_the_field(run_mpi):
    _expect_abort(run_mpi, 2, "config_mismatch",
                  "rank 1 differs from rank 0 in moe.top_k (rank 0: 2, rank 1: 1)")


@pytest.mark.mpi
def test_placement_mismatch_names_the_rank(run_mpi):
    _expect_abort(run_mpi, 2, "placement_mismatch",
                  "rank 1 differs from rank 0 in expert placement (rank 0: ExpertPlacement(R=2, "
                  "[0, 0, 0, 0, 1, 1, 1, 1]), rank 1: ExpertPlacement(R=2, [0, 1, 0, 1, 0, 1, 0, 1]))")


@pytest.mark.mpi
def test_process_groups_check_the_config_without_being_asked(run_mpi):
    _expect_abort(run_mpi, 2, "groups_config_mismatch",
                  "rank 1 differs from rank 0 in model.d_model (rank 0: 256, rank 1: 128)")


@pytest.mark.mpi
def test_distribute_checks_the_placement_without_being_asked(run_mpi):
    _expect_abort(run_mpi, 2, "distribute_placement_mismatch", "disagree on the expert placement",
                  "rank 1 differs from rank 0 in expert placement")


@pytest.mark.mpi
def test_error_inside_a_distributed_layer_ends_the_job(run_mpi):
    # Rank 0 waits in the dispatcher's all-to-all; rank 1's ValueError must end it fast.
    _expect_abort(run_mpi, 2, "throw_in_layer", "[switchyard] rank 1/2", "expected x of shape [..., 8]",
                  within=30.0)
