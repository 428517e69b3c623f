"""The training loop's pieces that need no model: the learning-rate schedule, the run
directory's metrics files and the plots drawn from them."""

import csv
import json
import math
from types import SimpleNamespace

import pytest
import torch

from switchyard.plot import main as plot_main
from switchyard.plot import plot_run
from switchyard.training import RunLogger, learning_rate, read_metrics


def _train(**kw):
    base = dict(lr=1e-3, min_lr=1e-4, warmup_steps=10, steps=110)
    base.update(kw)
    return SimpleNamespace(**base)


def test_schedule_warms_up_linearly_then_decays_by_cosine_to_min_lr():
    t = _train()
    assert learning_rate(0, t) == pytest.approx(1e-4)        # never 0 at the first step
    assert learning_rate(4, t) == pytest.approx(5e-4)
    assert learning_rate(9, t) == pytest.approx(1e-3)        # peak at the last warm-up step
    assert learning_rate(10, t) == pytest.approx(1e-3)       # cosine starts at the peak
    assert learning_rate(60, t) == pytest.approx(5.5e-4)     # half way: the mean of lr and min_lr
    assert learning_rate(110, t) == pytest.approx(1e-4)
    assert learning_rate(500, t) == pytest.approx(1e-4)      # stays at min_lr after the end
    rates = [learning_rate(s, t) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(rates, rates[1:]))     # monotone decay


def test_schedule_without_warmup_and_bad_step():
    t = _train(warmup_steps=0, steps=4)
    assert learning_rate(0, t) == pytest.approx(1e-3)
    assert learning_rate(2, t) == pytest.approx(1e-4 + 0.5 * 9e-4 * (1 + math.cos(math.pi / 2)))
    with pytest.raises(ValueError, match="step must be >= 0"):
        learning_rate(-1, t)


def _write_run(run_dir, tensorboard=True):
    log = RunLogger(run_dir, tensorboard=tensorboard)
    log.write_facts({"unigram_entropy_nats": 5.0, "title": "test run"})
    for step in range(1, 6):
        log.log(step, {"loss": 6.0 - step * 0.5, "aux_loss": 0.01, "lr": 1e-3, "tokens": 100 * step,
                       "tokens_per_s": 1000.0, "val_loss": 4.0 if step == 5 else None})
        log.log_expert_load(step, [torch.tensor([3, 1, 0, 4]), torch.tensor([2, 2, 2, 2])])
    log.close()
    return run_dir


def test_metrics_round_trip_and_expert_load_shares(tmp_path):
    run = _write_run(tmp_path / "run")
    m = read_metrics(run)
    assert m["step"] == [1, 2, 3, 4, 5]
    assert m["loss"] == [5.5, 5.0, 4.5, 4.0, 3.5]
    assert m["val_loss"] == [None, None, None, None, 4.0]
    assert m["grad_norm"] == [None] * 5
    with open(run / "expert_load.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["step", "layer", "expert_0", "expert_1", "expert_2", "expert_3"]
    assert [float(v) for v in rows[1][2:]] == [0.375, 0.125, 0.0, 0.5]
    assert [float(v) for v in rows[2][2:]] == [0.25] * 4
    assert json.loads((run / "run.json").read_text())["unigram_entropy_nats"] == 5.0
    assert any((run / "tensorboard").iterdir()), "no TensorBoard event file"


def test_unknown_metric_is_rejected(tmp_path):
    log = RunLogger(tmp_path, tensorboard=False)
    with pytest.raises(KeyError, match="unknown metric"):
        log.log(1, {"los": 1.0})


def test_other_ranks_write_nothing(tmp_path):
    log = RunLogger(tmp_path / "r1", enabled=False)
    log.log(1, {"loss": 1.0})
    log.log_expert_load(1, [torch.ones(4)])
    log.close()
    assert not (tmp_path / "r1").exists()


def test_plots_are_drawn_from_the_run_directory(tmp_path, capsys):
    run = _write_run(tmp_path / "run", tensorboard=False)
    written = plot_run(run)
    assert [p.name for p in written] == ["loss.png", "expert_load.png"]
    for p in written:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
    assert plot_main([str(run)]) == 0
    assert "loss.png" in capsys.readouterr().out


def test_plot_of_a_directory_without_metrics_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="no metrics"):
        plot_run(tmp_path)
