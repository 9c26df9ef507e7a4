"""`lpasrn bench model`: training-step throughput of the generator (and the OCR) on this machine.

One step = forward, L1 loss, backward, Adam update, on random LR 16x48 / HR 32x96 batches (data
loading is benchmarked separately). Reports samples/s, FLOPs per sample (FlopCounterMode plus
grid_sample, see lpasrn.models.flops), achieved FLOP/s, and a dense fp32 matmul's FLOP/s measured in
the same run before and after the model, so contention from other processes shows in the numbers.
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lpasrn.models.flops import model_flops_per_sample
from lpasrn.models.generator_arch import GENERATOR_PRESETS, build_generator
from lpasrn.plates import HR_SIZE, LR_SIZE


def matmul_flops_per_second(size: int = 1024, repeats: int = 10) -> float:
    """Dense fp32 matmul FLOP/s (best of `repeats`): the machine's practical peak right now."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best


def time_steps(step, batch: int, steps: int, warmup: int = 2) -> dict:
    """Samples per second of `step()` (one training step on `batch` samples), after `warmup` steps.

    'median' uses the median step time (robust to other processes stealing the shared cores for a
    while), 'mean' the total time of all `steps` steps, 'best' the fastest step (the least disturbed
    one when other processes hold the cores for most of the run).
    """
    return time_steps_interleaved({"step": step}, batch, steps, warmup)["step"]


def time_steps_interleaved(step_fns: dict, batch: int, steps: int, warmup: int = 2) -> dict[str, dict]:
    """`time_steps` of several steps run in turn (A, B, A, B, ...), so load from other processes on the
    shared cores falls on each alike and their ratio holds even when the absolute rates do not."""
    for _ in range(warmup):
        for step in step_fns.values():
            step()
    step_times = {name: [] for name in step_fns}
    for _ in range(steps):
        for name, step in step_fns.items():
            start = time.perf_counter()
            step()
            step_times[name].append(time.perf_counter() - start)
    return {name: {"median": batch / statistics.median(times), "mean": batch * steps / sum(times),
                   "best": batch / min(times)} for name, times in step_times.items()}


def training_step(model: torch.nn.Module, make_loss):
    """One Adam step minimising make_loss(model), as a function of no arguments."""
    # fused Adam: one kernel for all parameters instead of ~10 small ops per parameter tensor.
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)
    model.train()

    def step():
        optimizer.zero_grad(set_to_none=True)
        make_loss(model).backward()
        optimizer.step()

    return step


def time_training_steps(model: torch.nn.Module, make_loss, batch: int, steps: int, warmup: int = 2) -> dict:
    """`time_steps` of Adam steps minimising make_loss(model)."""
    return time_steps(training_step(model, make_loss), batch, steps, warmup)


def generator_overrides(args) -> dict:
    """Generator kwargs from --channels/--blocks/--growth/--dense-blocks; unset ones keep the preset's
    (so `--channels 64 --blocks 16` is the small preset's dense structure at the reference's size)."""
    names = {"channels": "num_channels", "blocks": "num_blocks", "growth": "growth",
             "dense_blocks": "dense_blocks_per_block"}
    return {kwarg: getattr(args, arg) for arg, kwarg in names.items() if getattr(args, arg) is not None}


def bench_generator(preset: str, overrides: dict, batch: int, steps: int,
                    reference: Path | None = None) -> tuple[dict, dict | None]:
    """lpasrn's generator and, with `reference`, the reference generator at the same channels x
    blocks, timed with interleaved steps."""
    torch.manual_seed(0)
    model = build_generator(preset, use_dcnv4=False, use_character_attention=True, **overrides)
    lr, hr = torch.rand(batch, 3, *LR_SIZE), torch.rand(batch, 3, *(s for s in HR_SIZE))
    flops = model_flops_per_sample(model, lr, train=True)
    step_fns = {"lpasrn": training_step(model, lambda m: F.l1_loss(m(lr), hr))}
    if reference is not None:
        shape = {**GENERATOR_PRESETS[preset], **overrides}
        reference_model = reference_generator(reference, shape["num_channels"], shape["num_blocks"])
        step_fns["reference"] = training_step(reference_model, lambda m: F.l1_loss(m(lr), hr))
    rates = time_steps_interleaved(step_fns, batch, steps)
    samples_per_s = rates["lpasrn"]["median"]
    result = {"preset": preset, "overrides": overrides, "params": sum(p.numel() for p in model.parameters()),
              "samples_per_s": samples_per_s, "samples_per_s_mean": rates["lpasrn"]["mean"],
              "samples_per_s_best": rates["lpasrn"]["best"], "train_flops_per_sample": flops["total"],
              "flops_by_op": flops, "achieved_flops_per_s": samples_per_s * flops["total"]}
    if reference is None:
        return result, None
    return result, {"source": str(reference), "params": sum(p.numel() for p in reference_model.parameters()),
                    "samples_per_s": rates["reference"]["median"], "samples_per_s_mean": rates["reference"]["mean"],
                    "samples_per_s_best": rates["reference"]["best"]}


def reference_generator(source: Path, channels: int, blocks: int) -> torch.nn.Module:
    """The public LP-ASRN v2.0 generator (DESIGN.md section 8) from a checkout at `source`, MSCA on.

    Nothing of it is shipped: the checkout (github.com/toanle-hcmiu/LP-ASRN at commit a8f99c8, the
    v2.0 README) is imported from `source` only for this comparison; on CPU it runs its DCNv3 fallback.
    """
    import importlib
    import sys

    if not (source / "src" / "models" / "generator.py").is_file():
        raise SystemExit(f"--reference {source}: no src/models/generator.py (an LP-ASRN v2.0 checkout)")
    sys.path.insert(0, str(source))
    try:
        generator_class = importlib.import_module("src.models.generator").Generator
    finally:
        sys.path.remove(str(source))
    torch.manual_seed(0)
    return generator_class(num_features=channels, num_blocks=blocks, use_character_attention=True)


def bench_ocr(preset: str, batch: int, steps: int) -> dict | None:
    """OCR training-step throughput on HR images with a CTC loss, or None if the OCR is missing."""
    try:
        from lpasrn.models.ocr_arch import SimpleCRNN, ctc_loss
    except ImportError:
        return None
    torch.manual_seed(0)
    model = SimpleCRNN(preset)
    hr = torch.rand(batch, 3, *HR_SIZE)
    texts = ["ABC1D23"] * batch
    flops = model_flops_per_sample(model, hr, train=True)
    rates = time_training_steps(model, lambda m: ctc_loss(m(hr), texts), batch, steps)
    samples_per_s = rates["median"]
    return {"preset": preset, "params": sum(p.numel() for p in model.parameters()),
            "samples_per_s": samples_per_s, "samples_per_s_mean": rates["mean"], "train_flops_per_sample": flops["total"],
            "achieved_flops_per_s": samples_per_s * flops["total"]}


def run(args) -> int:
    torch.set_num_threads(args.threads)
    matmul_before = matmul_flops_per_second()
    generator, reference = bench_generator(args.preset, generator_overrides(args), args.batch, args.steps,
                                           args.reference)
    ocr = None if args.no_ocr else bench_ocr(args.ocr_preset, args.batch, args.steps)
    matmul_after = matmul_flops_per_second()
    matmul = (matmul_before + matmul_after) / 2
    result = {"threads": args.threads, "batch": args.batch, "steps": args.steps, "torch": torch.__version__,
              "matmul_flops_per_s_before": matmul_before, "matmul_flops_per_s_after": matmul_after,
              "generator": generator, "reference": reference, "ocr": ocr,
              "generator_fraction_of_matmul": generator["achieved_flops_per_s"] / matmul}
    shape = {**GENERATOR_PRESETS[args.preset], **generator["overrides"]}
    print(f"generator {args.preset} {shape}: {generator['params'] / 1e6:.3f} M params, "
          f"{generator['train_flops_per_sample'] / 1e9:.2f} train GFLOP/sample, "
          f"{generator['samples_per_s']:.1f} samples/s (median step; mean {generator['samples_per_s_mean']:.1f}, "
          f"best {generator['samples_per_s_best']:.1f}), "
          f"{generator['achieved_flops_per_s'] / 1e9:.1f} GFLOP/s "
          f"({100 * result['generator_fraction_of_matmul']:.0f}% of matmul)")
    if reference is not None:
        print(f"reference LP-ASRN v2.0 at the same channels x blocks: {reference['params'] / 1e6:.3f} M params, "
              f"{reference['samples_per_s']:.1f} samples/s (median step; mean {reference['samples_per_s_mean']:.1f}, "
              f"best {reference['samples_per_s_best']:.1f}; steps interleaved with lpasrn's); lpasrn / reference = "
              f"{generator['samples_per_s'] / reference['samples_per_s']:.2f}x")
    if ocr is not None:
        print(f"ocr {ocr['preset']}: {ocr['params'] / 1e6:.3f} M params, {ocr['samples_per_s']:.1f} samples/s, "
              f"{ocr['achieved_flops_per_s'] / 1e9:.1f} GFLOP/s")
    else:
        print("ocr: skipped" if args.no_ocr else "ocr: lpasrn.models.ocr_arch not available")
    print(f"dense fp32 matmul: {matmul_before / 1e9:.1f} GFLOP/s before, {matmul_after / 1e9:.1f} after "
          f"({args.threads} threads)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("model", help="generator/OCR training-step throughput on this CPU",
                                   description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", choices=sorted(GENERATOR_PRESETS))
    parser.add_argument("--channels", type=int, help="override the preset's channels")
    parser.add_argument("--blocks", type=int, help="override the preset's number of RRDB-EA blocks")
    parser.add_argument("--growth", type=int, help="override the preset's dense growth")
    parser.add_argument("--dense-blocks", type=int, help="override the preset's dense blocks per RRDB-EA")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (DESIGN.md: 2)")
    parser.add_argument("--ocr-preset", default="small")
    parser.add_argument("--no-ocr", action="store_true", help="benchmark the generator only")
    parser.add_argument("--reference", type=Path, metavar="DIR",
                        help="also time the public LP-ASRN v2.0 generator from this checkout (not shipped)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.set_defaults(func=run)
