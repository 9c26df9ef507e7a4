"""`lpasrn bench train`: per stage, training samples/s of the runner's own step (model forward
through LPASRN, the stage's losses, backward, fused AdamW), FLOPs/sample, achieved FLOP/s against
a dense matmul measured in the same run (model-FLOPs utilisation), the stream reader's samples/s
against what training consumes, and the host synchronisations of StageRunner.train_step itself
(host_syncs.py; the most in any step, a logging step included, and the mean).
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch

from lpasrn.bench.host_syncs import WARMUP_STEPS, runner_for, step_syncs
from lpasrn.bench.model_bench import matmul_flops_per_second, time_steps
from lpasrn.config import load_config, stage_loss
from lpasrn.data.readers import IndexedPlateDataset, StreamReader, collate
from lpasrn.models.flops import count_flops
from lpasrn.train.objective import StageObjective, outputs_needed
from lpasrn.train.pipeline import build_lpasrn
from lpasrn.train.schedule import param_groups
from lpasrn.train.stages import STAGES, stage_trainable_parts


def _stage_step(cfg, spec, batch: dict):
    """A closure running one training step of `spec` exactly as the runner composes it."""
    stage_cfg = getattr(cfg.stages, spec.name)
    model = build_lpasrn(cfg)
    model.set_trainable(stage_trainable_parts(cfg, spec))
    model.train()
    optimizer = torch.optim.AdamW(param_groups(model, stage_cfg), lr=stage_cfg.lr, fused=True)
    objective = StageObjective(stage_cfg.loss_components, stage_loss(cfg, spec.name))
    want = outputs_needed(stage_cfg.loss_components)
    if stage_cfg.update_confusion and spec.uses_generator:
        want |= {"sr", "ocr_sr"}
    want = tuple(sorted(want))

    def forward_backward():
        out = model(lr=batch["lr"], hr=batch["hr"], outputs=want)
        loss, _ = objective(out, batch)
        loss.backward()

    def step():
        optimizer.zero_grad(set_to_none=True)
        forward_backward()
        optimizer.step()

    return step, forward_backward


def bench_stage(cfg, spec, batch: dict, steps: int) -> dict:
    step, forward_backward = _stage_step(cfg, spec, batch)
    size = batch["hr"].shape[0]
    flops = count_flops(forward_backward)["total"] // size
    rate = time_steps(step, size, steps)["median"]
    return {"samples_per_s": rate, "train_flops_per_sample": flops, "achieved_flops_per_s": rate * flops}


def measure_host_syncs(args, stages: list, batch: dict) -> dict[str, dict]:
    """Host syncs per step of the runner's train_step for each stage in `stages`: `--sync-steps`
    steps after WARMUP_STEPS; the last one also logs its loss terms (train.log_every)."""
    from lpasrn.train.pipeline import make_accelerator

    out = {}
    with tempfile.TemporaryDirectory(prefix="lpasrn-bench-") as workdir:
        overrides = [*args.set, f"run_dir={workdir}", f"train.log_every={args.sync_steps + WARMUP_STEPS}",
                     "train.image_every=1000000"]
        cfg = load_config(args.config, overrides)
        accelerator = make_accelerator(cfg)
        for spec in stages:
            counts = step_syncs(runner_for(cfg, spec, accelerator, Path(workdir)), batch, args.sync_steps)
            out[spec.prefix] = {"host_syncs_per_step": max(counts), "host_syncs_mean": sum(counts) / len(counts),
                                "host_syncs_counted_by": "cuda sync debug mode" if accelerator.device.type == "cuda"
                                else "tensor-to-Python conversions"}
    return out


def reader_rate(data_dir: str, batch_size: int, samples: int) -> float:
    reader = StreamReader(data_dir, "train", batch_size, mode="resampled",
                          batches_per_epoch=max(1, samples // batch_size))
    start, seen = time.perf_counter(), 0
    for batch in reader:
        seen += batch["hr"].shape[0]
    return seen / (time.perf_counter() - start)


def run(args) -> int:
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.set)
    dataset = IndexedPlateDataset(cfg.data.dir, "train")
    batch = collate([dataset[i % len(dataset)] for i in range(args.batch or cfg.data.batch_size)])
    peak_before = matmul_flops_per_second()
    results = {"config": args.config, "batch": batch["hr"].shape[0], "threads": args.threads, "stages": {}}
    stages = [spec for spec in STAGES if str(spec.index) in args.stages.split(",")]
    for spec in stages:
        results["stages"][spec.prefix] = bench_stage(cfg, spec, batch, args.steps)
    if args.sync_steps > 0:
        for prefix, row in measure_host_syncs(args, stages, batch).items():
            results["stages"][prefix].update(row)
    peak = max(peak_before, matmul_flops_per_second())
    results["matmul_flops_per_s"] = peak
    results["reader_samples_per_s"] = reader_rate(cfg.data.dir, cfg.data.batch_size, args.reader_samples)
    print(f"dense fp32 matmul: {peak / 1e9:.1f} GFLOP/s; stream reader: {results['reader_samples_per_s']:.0f} samples/s "
          f"(1 process, no workers)")
    print(f"{'stage':<20} {'samples/s':>10} {'train GFLOP/sample':>19} {'GFLOP/s':>8} {'MFU':>6} {'reader/train':>12} "
          f"{'syncs/step':>10}")
    for name, row in results["stages"].items():
        row["mfu"] = row["achieved_flops_per_s"] / peak
        row["reader_over_train"] = results["reader_samples_per_s"] / row["samples_per_s"]
        print(f"{name:<20} {row['samples_per_s']:>10.1f} {row['train_flops_per_sample'] / 1e9:>19.3f} "
              f"{row['achieved_flops_per_s'] / 1e9:>8.1f} {row['mfu']:>6.1%} {row['reader_over_train']:>12.1f} "
              f"{row.get('host_syncs_per_step', '-'):>10}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("train", help="training samples/s, FLOPs/sample and MFU per stage")
    parser.add_argument("--config", default="configs/quickstart.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--stages", default="0,1,2,3,4", help="comma-separated stage indices")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per stage (median is reported)")
    parser.add_argument("--batch", type=int, default=0, help="batch size (default: data.batch_size)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reader-samples", type=int, default=2000)
    parser.add_argument("--sync-steps", type=int, default=4,
                        help="steps of the runner's train_step whose host syncs are counted (0: skip)")
    parser.add_argument("--json", default=None)
    parser.set_defaults(func=run)
