"""The learning-rate schedule of ``train:``: linear warm-up from 0 to ``lr`` over
``warmup_steps``, then a cosine decay to ``min_lr`` at ``steps``."""

import math


def learning_rate(step: int, train) -> float:
    """Learning rate of optimizer step ``step`` (0-based) under the ``train`` section of a config.

    Warm-up reaches ``lr`` at the last warm-up step (step ``warmup_steps - 1``), so step 0
    never runs at 0. After ``steps`` the rate stays at ``min_lr``.
    """
    if step < 0:
        raise ValueError(f"learning_rate: step must be >= 0, got {step}")
    peak, floor = float(train.lr), float(train.min_lr)
    warm = int(train.warmup_steps)
    if step < warm:
        return peak * (step + 1) / warm
    decay_steps = max(1, int(train.steps) - warm)
    progress = min(1.0, (step - warm) / decay_steps)
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * progress))
