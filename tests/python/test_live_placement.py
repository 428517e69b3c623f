"""Live expert re-placement (issue H): experts migrate with their optimizer state without a
bit lost, a run that re-places gives the losses of the run that does not (mpirun -np 4,
float64), decisions are logged, a routing trace places a later run, and bad settings are
refused naming the key.

Engine-level checks run mpi_scripts/expert_migration.py; trainer-level ones run the CLI on
the bundled corpus with the tiny model of test_train.py and 8 experts on 4 ranks."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT
from test_checkpoint import EXACT, _column, _env, _train
from test_train import TINY

SCRIPTS = Path(__file__).parent / "mpi_scripts"
FOUR_RANKS = ["train.micro_batch_size=1", "parallel.expert_parallel=4", "moe.num_experts=8"]
LIVE = ["placement.interval=2", "placement.min_gain=0", "placement.trace_path=routing.trace"]


def _floats(run_dir, name):
    return [float(v) for v in _column(run_dir, name) if v != ""]


def _migration(run_mpi, mode, ep):
    """mpi_scripts/expert_migration.py MODE EP on 4 ranks: every rank prints "migration ok"."""
    out = run_mpi(4, str(SCRIPTS / "expert_migration.py"), mode, str(ep), timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("migration ok") == 4, out.stdout + out.stderr


@pytest.mark.mpi
@pytest.mark.parametrize("ep", [4, 2])
def test_migration_round_trip(run_mpi, ep):
    _migration(run_mpi, "roundtrip", ep)


@pytest.mark.mpi
def test_ranks_that_disagree_on_the_placement_are_refused(run_mpi):
    _migration(run_mpi, "disagree", 4)


@pytest.mark.mpi
@pytest.mark.parametrize("ep", [4, 2])
def test_replacement_keeps_losses(run_mpi, ep):
    _migration(run_mpi, "same_losses", ep)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same 6-step run without and with re-placement every 2 steps (which also writes a
    routing trace). Module-scoped: several tests read them."""
    from conftest import mpirun_command

    root = tmp_path_factory.mktemp("live")

    class Runner:  # run_mpi is function-scoped; this is the same call
        def __call__(self, np, *args, timeout):
            return subprocess.run(mpirun_command(np, *args), capture_output=True, text=True, timeout=timeout,
                                  cwd=REPO_ROOT, env=_env())

    run = Runner()
    fixed = _train(run, 4, root / "fixed", *EXACT, *FOUR_RANKS)
    moving = _train(run, 4, root / "moving", *EXACT, *FOUR_RANKS, *LIVE)
    return {"root": root, "run": run, "fixed": fixed, "moving": moving}


@pytest.mark.mpi
def test_trainer_replacement_keeps_losses(runs):
    root = runs["root"]
    for column in ("loss", "aux_loss", "grad_norm", "val_loss"):
        want, got = _floats(root / "fixed", column), _floats(root / "moving", column)
        assert len(want) == len(got) == 6 or column == "val_loss", (column, want, got)
        for a, b in zip(want, got):
            assert abs(a - b) <= 1e-12 * max(1.0, abs(a)), (column, want, got)
    decisions = [json.loads(line) for line in (root / "moving" / "placement.jsonl").read_text().splitlines()]
    assert [d["step"] for d in decisions] == [2, 4, 6], decisions
    adopted = [l for d in decisions for l in d["layers"] if l["adopted"]]
    assert adopted, decisions
    assert sum(d["bytes_migrated"] for d in decisions) > 0
    for layer in adopted:
        assert layer["new_objective"] < layer["old_objective"]
        assert sorted(set(layer["placement"])) == [0, 1, 2, 3]
    assert "expert re-placement (interval)" in runs["moving"].stdout
    assert "adopted" in runs["moving"].stdout


@pytest.mark.mpi
def test_trace_summary_and_placing_from_it(runs):
    root = runs["root"]
    trace = root / "moving" / "routing.trace"
    assert trace.exists(), runs["moving"].stdout[-2000:]
    summary = subprocess.run([sys.executable, "-m", "switchyard.trace", str(trace)], capture_output=True,
                             text=True, env=_env(), cwd=REPO_ROOT, timeout=120)
    assert summary.returncode == 0, summary.stderr
    assert "experts" in summary.stdout
    placed = _train(runs["run"], 4, root / "placed", *EXACT, *FOUR_RANKS, f"placement.from_trace={trace}")
    assert "from the trace" in placed.stdout, placed.stdout[-2000:]
    want, got = _floats(root / "fixed", "loss"), _floats(root / "placed", "loss")
    for a, b in zip(want, got):
        assert abs(a - b) <= 1e-12 * max(1.0, abs(a)), (want, got)


@pytest.mark.mpi
def test_trace_of_another_model_shape_is_refused(runs):
    root = runs["root"]
    trace = root / "moving" / "routing.trace"
    out = _train(runs["run"], 4, root / "other", *EXACT, "train.micro_batch_size=1", "parallel.expert_parallel=4",
                 "moe.num_experts=16", f"placement.from_trace={trace}", expect=3)
    text = out.stdout + out.stderr
    assert "placement.from_trace" in text and "16" in text and "8" in text, text[-3000:]
    assert "Traceback" not in text, text[-3000:]


@pytest.mark.parametrize("overrides,message", [
    (["placement.interval=10"], "nothing to re-place with expert_parallel = 1"),
    (["parallel.expert_parallel=2", "placement.imbalance_threshold=0.5"], "never below 1"),
    (["parallel.expert_parallel=2", "placement.solver=cplex"], "placement.solver"),
])
def test_bad_placement_config_is_refused(overrides, message):
    from switchyard.config import loads_config

    with pytest.raises(ValueError, match=message):
        loads_config("", overrides=overrides)


@pytest.mark.mpi
def test_too_few_slots_is_refused_on_every_rank(run_mpi, tmp_path):
    args = ["-m", "switchyard.train", "--config", "configs/demo.yaml"]
    for kv in TINY + EXACT + FOUR_RANKS + [f"train.run_dir={tmp_path}", "train.steps=2", "placement.interval=1",
                                            "placement.slots_per_rank=1"]:
        args += ["--set", kv]
    out = run_mpi(4, *args, timeout=300)
    assert out.returncode != 0
    assert "placement.slots_per_rank = 1 gives 4 slots on 4 expert-parallel ranks" in out.stdout + out.stderr


@pytest.mark.mpi
def test_a_single_expert_parallel_rank_still_records_a_trace(run_mpi, tmp_path):
    """Without expert parallelism nothing can move, but the routing can still be recorded."""
    out = _train(run_mpi, 1, tmp_path, *EXACT, "train.micro_batch_size=4", "parallel.expert_parallel=1",
                 "placement.trace_path=routing.trace")
    summary = subprocess.run([sys.executable, "-m", "switchyard.trace", str(tmp_path / "routing.trace"), "--json"],
                             capture_output=True, text=True, env=_env(), cwd=REPO_ROOT, timeout=120)
    assert summary.returncode == 0, summary.stderr + out.stdout[-2000:]
    facts = json.loads(summary.stdout)
    assert facts["steps"] == 6 and facts["num_ranks"] == 1, facts
