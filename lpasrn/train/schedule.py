"""Learning-rate schedules: a pure function of the stage's step, applied before every step.

The lr is recomputed from `LoopState.global_step` each step instead of being kept in a scheduler
object, so a resumed run (mid-epoch included) continues with exactly the lr the uninterrupted run
would use, there is no scheduler state to checkpoint, and no wrapper can step it more than once per
optimizer step (Accelerate's prepared schedulers step once per process unless told otherwise).
"""
from __future__ import annotations

import math

SCHEDULES = ("constant", "cosine")


def lr_factor(step: int, total_steps: int, schedule: str = "cosine", warmup_fraction: float = 0.0,
              min_lr_ratio: float = 0.0) -> float:
    """Multiplier of the stage's base lr at `step` (0-based) of `total_steps`.

    Linear warm-up over the first round(warmup_fraction * total_steps) steps, starting at 1/warmup
    (never 0: a step with lr 0 would be wasted), then constant, or a cosine from 1 down to
    min_lr_ratio at the last step. Steps past the end keep the last value.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"lr schedule {schedule!r} is not one of {list(SCHEDULES)}")
    total = max(1, int(total_steps))
    step = min(max(0, int(step)), total - 1)
    warmup = min(total - 1, int(round(warmup_fraction * total)))
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if schedule == "constant":
        return 1.0
    span = max(1, total - 1 - warmup)
    progress = (step - warmup) / span
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def apply_lr(optimizer, base_lr: float, factor: float) -> float:
    """Set every parameter group's lr (the optimizer Accelerate/DeepSpeed handed back exposes its
    inner optimizer's groups, which is what the step reads). Returns the lr set."""
    lr = base_lr * factor
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr
