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


def apply_lr(optimizer, base_lr: float | list[float], factor: float) -> float:
    """Set each parameter group's lr to its base lr x `factor`: one base for every group, or one per
    group in the optimizer's order (`param_groups`). The optimizer Accelerate/DeepSpeed hands back
    exposes its inner optimizer's groups, in the order they were built, which is what the step
    reads. Returns the first group's lr (the one logged as `<stage>/lr`)."""
    groups = optimizer.param_groups
    bases = list(base_lr) if isinstance(base_lr, (list, tuple)) else [base_lr] * len(groups)
    if len(bases) != len(groups):
        raise ValueError(f"{len(bases)} base lrs for {len(groups)} parameter groups")
    for group, base in zip(groups, bases):
        group["lr"] = base * factor
    return bases[0] * factor


def param_groups(model, stage_cfg) -> list[dict]:
    """The optimizer's parameter groups for a stage: every trainable parameter at `lr`, except the
    OCR's at `ocr_lr` when that is set (a stage that trains the generator and the OCR together may
    want the OCR to adapt faster than the generator moves). Empty groups are left out; the order
    is fixed (the rest, then the OCR), and `apply_lr` relies on it."""
    trainable = model.trainable_parameters()
    ocr_ids = {id(p) for p in model.ocr.parameters()} if stage_cfg.ocr_lr is not None else set()
    rest = [p for p in trainable if id(p) not in ocr_ids]
    ocr = [p for p in trainable if id(p) in ocr_ids]
    groups = [{"params": rest, "lr": stage_cfg.lr}, {"params": ocr, "lr": stage_cfg.ocr_lr}]
    return [group for group in groups if group["params"]]
