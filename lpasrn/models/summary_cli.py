"""`lpasrn models summary`: parameters and FLOPs per sample of the generator, OCR and embedder.

FLOPs are counted by torch's FlopCounterMode (matmuls and convolutions, 2 per multiply-add) plus
grid_sample counted analytically (lpasrn.models.flops); elementwise ops, activations, pooling and
interpolation are not counted. 'inference' = one forward, 'train' = forward + backward.
"""
from __future__ import annotations

import torch

from lpasrn.models.flops import model_flops_per_sample
from lpasrn.models.generator_arch import GENERATOR_PRESETS, build_generator
from lpasrn.plates import HR_SIZE, LR_SIZE


def _optional_models(preset: str) -> list[tuple[str, torch.nn.Module | None, str]]:
    """(name, model or None, note) for the OCR and both embedders, whichever are importable."""
    models = []
    try:
        from lpasrn.models.ocr_arch import SimpleCRNN
        models.append((f"ocr SimpleCRNN({preset!r})", SimpleCRNN(preset), ""))
    except (ImportError, ValueError) as err:
        models.append(("ocr SimpleCRNN", None, str(err)))
    try:
        from lpasrn.models.embedder_arch import SiameseEmbedder
        models.append(("embedder SiameseEmbedder(128)", SiameseEmbedder(128, lightweight=False), ""))
        models.append(("embedder SiameseEmbedder(128, lightweight)", SiameseEmbedder(128, lightweight=True), ""))
    except ImportError as err:
        models.append(("embedder SiameseEmbedder", None, str(err)))
    return models


def summarize(model: torch.nn.Module, example: torch.Tensor) -> dict:
    return {"params": sum(p.numel() for p in model.parameters()),
            "inference_flops": model_flops_per_sample(model, example, train=False)["total"],
            "train_flops": model_flops_per_sample(model, example, train=True)["total"]}


def run(args) -> int:
    torch.manual_seed(0)
    lr, hr = torch.rand(2, 3, *LR_SIZE), torch.rand(2, 3, *HR_SIZE)
    rows = [(f"generator {args.preset!r}",
             summarize(build_generator(args.preset), lr), "")]
    if not args.generator_only:
        for name, model, note in _optional_models(args.preset):
            rows.append((name, summarize(model, hr) if model is not None else None, note))
    print(f"{'model':<60} {'params':>12} {'GFLOP/sample':>13} {'train GFLOP':>12}")
    for name, summary, note in rows:
        if summary is None:
            print(f"{name:<60} not available: {note}")
            continue
        print(f"{name:<60} {summary['params']:>12,} {summary['inference_flops'] / 1e9:>13.3f} "
              f"{summary['train_flops'] / 1e9:>12.3f}")
    print(f"generator {args.preset!r} = Generator(**{GENERATOR_PRESETS[args.preset]})")
    print("FLOPs: matmul + convolution (FlopCounterMode) + grid_sample (analytic); elementwise ops not counted. "
          f"Generator input LR {LR_SIZE[0]}x{LR_SIZE[1]}, OCR/embedder input HR {HR_SIZE[0]}x{HR_SIZE[1]}.")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("summary", help="parameters and FLOPs per sample of each model",
                                   description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="paper", choices=sorted(GENERATOR_PRESETS),
                        help="generator preset (the OCR uses its preset of the same name)")
    parser.add_argument("--generator-only", action="store_true")
    parser.set_defaults(func=run)
