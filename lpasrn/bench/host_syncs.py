"""Host synchronisations of the runner's own training step, counted per step.

CPU: every tensor-to-Python conversion (`item`, `tolist`, `bool`, `float`, `int`, `index`) made
while a step runs is counted: on a GPU each of them makes the host wait for the device. A
conversion of a tensor that would also live on the host in a GPU run is counted too (an upper
bound). CUDA: `torch.cuda.set_sync_debug_mode("warn")` reports every synchronising call, which also
catches what ATen does inside an op (a device-to-host copy of CTC lengths, `nonzero`).
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

WARMUP_STEPS = 2  # steps run before the counted ones (first-call allocations, lazy state)
_CONVERSIONS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__")


@contextmanager
def count_conversions():
    """Yields a one-item list holding how many tensor-to-Python conversions happened inside."""
    counter = [0]
    originals = {name: getattr(torch.Tensor, name) for name in _CONVERSIONS}

    def counting(name, original):
        def wrapper(self, *args, **kwargs):
            counter[0] += 1
            return original(self, *args, **kwargs)
        return wrapper

    for name, original in originals.items():
        setattr(torch.Tensor, name, counting(name, original))
    try:
        yield counter
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


@contextmanager
def count_cuda_syncs():
    """Yields a one-item list holding how many synchronising CUDA calls were reported inside."""
    counter = [0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield counter
        finally:
            torch.cuda.set_sync_debug_mode("default")
            counter[0] = sum("synchronizing" in str(w.message) for w in caught)


def runner_for(cfg, spec, accelerator, workdir: Path):
    """A StageRunner of `spec` on a freshly built model (weights do not change what syncs)."""
    from lpasrn.train.loop import StageRunner
    from lpasrn.train.pipeline import build_lpasrn
    from lpasrn.train.schedule import param_groups
    from lpasrn.train.stages import stage_trainable_parts

    stage_cfg = getattr(cfg.stages, spec.name)
    model = build_lpasrn(cfg)
    model.set_trainable(stage_trainable_parts(cfg, spec))
    frozen = {name: p.detach().clone() for name, p in model.named_parameters() if not p.requires_grad}
    optimizer = torch.optim.AdamW(param_groups(model, stage_cfg), lr=stage_cfg.lr, fused=True)
    model, optimizer = accelerator.prepare(model, optimizer)
    return StageRunner(spec, cfg, accelerator, model, optimizer, workdir / spec.prefix, "", None, frozen)


def step_syncs(runner, batch: dict, steps: int, warmup: int = WARMUP_STEPS) -> list[int]:
    """Host syncs of each of `steps` training steps of `runner` on `batch` (after `warmup` steps).
    The caller sets train.log_every = warmup + steps: the last counted step is a logging step."""
    runner.model.train()
    for _ in range(warmup):
        runner.train_step(batch)
    counts = []
    cuda = runner.acc.device.type == "cuda"
    for _ in range(steps):
        with (count_cuda_syncs() if cuda else count_conversions()) as counter:
            runner.train_step(batch)
        counts.append(counter[0])
    return counts
