"""The training loop behind ``python -m switchyard.train`` and its pieces: the learning-rate
schedule, the run directory's metrics files and rank 0's progress display."""

from .metrics import METRIC_COLUMNS, RunLogger, read_metrics
from .schedule import learning_rate

__all__ = ["METRIC_COLUMNS", "RunLogger", "Trainer", "learning_rate", "read_metrics"]


def __getattr__(name):
    # Trainer imports the model, engine and data modules: load them only when asked.
    if name == "Trainer":
        from .trainer import Trainer

        return Trainer
    raise AttributeError(name)
