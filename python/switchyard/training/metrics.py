"""What a training run records: one CSV row per logged step (``metrics.csv``), the
per-layer expert load (``expert_load.csv``), TensorBoard event files (``tensorboard/``) and
the run's facts (``run.json``). Only rank 0 writes; every other rank gets a no-op logger.

The files are the source of the plots (``python -m switchyard.plot <run dir>``), so the
plots can be redrawn from a finished or running run.
"""

import csv
import json
import os
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence

import torch

METRIC_COLUMNS = ("step", "tokens", "lr", "loss", "aux_loss", "grad_norm", "load_max_over_mean",
                  "dropped_fraction", "tokens_per_s", "val_loss")


def _rows_up_to(path: Path, step: int) -> list:
    """The rows of a CSV run file (header first) whose step column is at most ``step``."""
    if not path.exists():
        return []
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[:1] + [r for r in rows[1:] if r and int(float(r[0])) <= step]


class RunLogger:
    """Appends metrics to the run directory. ``enabled=False`` makes every call a no-op (the
    other ranks). Files are flushed after every row, so a run that dies keeps its curve.

    ``resume_step``: a run resumed from the checkpoint of that step keeps the rows up to it
    and drops later ones (written by the interrupted run after its last checkpoint), so the
    files read as one uninterrupted run; TensorBoard purges those steps likewise."""

    def __init__(self, run_dir: os.PathLike, enabled: bool = True, tensorboard: bool = True,
                 resume_step: Optional[int] = None):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self._tb = None
        self._metrics = self._loads = None
        self._load_width = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        kept_metrics = kept_loads = []
        if resume_step is not None:
            kept_metrics = _rows_up_to(self.run_dir / "metrics.csv", resume_step)
            kept_loads = _rows_up_to(self.run_dir / "expert_load.csv", resume_step)
        self._metrics = open(self.run_dir / "metrics.csv", "w", newline="")
        self._metrics_csv = csv.writer(self._metrics)
        self._metrics_csv.writerows(kept_metrics or [METRIC_COLUMNS])
        self._metrics.flush()
        self._loads = open(self.run_dir / "expert_load.csv", "w", newline="")
        self._loads_csv = csv.writer(self._loads)
        if kept_loads:
            self._loads_csv.writerows(kept_loads)
            self._load_width = len(kept_loads[0]) - 2
            self._loads.flush()
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # needs the `tensorboard` package

            purge = None if resume_step is None else resume_step + 1
            self._tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"), purge_step=purge)

    def write_facts(self, facts: Mapping) -> None:
        """run.json: what the plots and a reader need besides the curves (world size,
        parameter counts, the corpus's unigram entropy, ...)."""
        if self.enabled:
            (self.run_dir / "run.json").write_text(json.dumps(dict(facts), indent=2, sort_keys=True) + "\n")

    def log(self, step: int, values: Mapping[str, Optional[float]]) -> None:
        if not self.enabled:
            return
        unknown = set(values) - set(METRIC_COLUMNS)
        if unknown:
            raise KeyError(f"RunLogger.log: unknown metric(s) {sorted(unknown)}; known: {METRIC_COLUMNS}")
        row = dict(values, step=step)
        self._metrics_csv.writerow(["" if row.get(c) is None else row[c] for c in METRIC_COLUMNS])
        self._metrics.flush()
        if self._tb is not None:
            for name, v in values.items():
                if v is not None and name != "step":
                    self._tb.add_scalar(("val/" if name == "val_loss" else "train/") + name, v, step)

    def log_expert_load(self, step: int, loads: Sequence[torch.Tensor]) -> None:
        """loads[i]: [E] token counts of MoE layer i summed over every rank. Written as the
        fraction of the layer's routed slots each expert took (1/E when balanced)."""
        if not self.enabled or not loads:
            return
        width = int(loads[0].numel())
        if self._load_width is None:
            self._load_width = width
            self._loads_csv.writerow(["step", "layer"] + [f"expert_{e}" for e in range(width)])
        for layer, counts in enumerate(loads):
            c = counts.to(torch.float64)
            frac = c / c.sum().clamp_min(1.0)
            self._loads_csv.writerow([step, layer] + [f"{v:.6g}" for v in frac.tolist()])
            if self._tb is not None:
                self._tb.add_scalar(f"expert_load/layer{layer}_max_over_mean",
                                    float(frac.max() * width), step)
        self._loads.flush()

    def log_placement(self, decision: Mapping) -> None:
        """One live re-placement decision (switchyard.placement.LivePlacement.after_step's
        dict) appended to placement.jsonl; its objective and imbalance go to TensorBoard."""
        if not self.enabled:
            return
        with open(self.run_dir / "placement.jsonl", "a") as f:
            f.write(json.dumps({k: v for k, v in decision.items() if k != "text"}, sort_keys=True) + "\n")
        if self._tb is not None:
            step = int(decision["step"])
            self._tb.add_scalar("placement/bytes_migrated", float(decision["bytes_migrated"]), step)
            for i, layer in enumerate(decision["layers"]):
                self._tb.add_scalar(f"placement/layer{i}_max_over_mean", float(layer["new_imbalance"]
                                    if layer["adopted"] else layer["old_imbalance"]), step)

    def close(self) -> None:
        if not self.enabled:
            return
        for f in (self._metrics, self._loads):
            f.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(run_dir: os.PathLike) -> Dict[str, list]:
    """metrics.csv as columns of floats (None where a row has no value)."""
    path = Path(run_dir) / "metrics.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no metrics (is {run_dir} a switchyard run directory?)")
    cols: Dict[str, list] = {c: [] for c in METRIC_COLUMNS}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            for c in METRIC_COLUMNS:
                v = row.get(c, "")
                cols[c].append(float(v) if v not in ("", None) else None)
    return cols
