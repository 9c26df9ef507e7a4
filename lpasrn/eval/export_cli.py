"""`lpasrn export --checkpoint EXPORT_DIR --format onnx|torchscript --out FILE [--part generator|ocr]`.

Exports one part of a trained model for inference outside lpasrn:
- generator: input `lr` [B, 3, 16, 48] in [0, 1] -> output `sr` [B, 3, 32, 96] (not clamped);
- ocr: input `images` [B, 3, 32, 96] in [0, 1] -> output `logits` [B, 24, 37] (class 0 = CTC blank,
  class i = plates.CHARSET[i - 1]; decode greedily as lpasrn.models.ocr_arch.greedy_decode does).
The batch dimension is dynamic. The deformable convs are pinned to the pure-PyTorch DCNv4 path
(one grid_sample: ONNX GridSample needs opset >= 16), so the export runs on any ONNX runtime.
After writing, the export is run once (onnxruntime when installed, or torch.jit.load) and compared
with PyTorch; the largest absolute difference is printed.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from lpasrn.errors import LpasrnError
from lpasrn.plates import HR_SIZE, LR_SIZE

FORMATS = ("onnx", "torchscript")
MIN_ONNX_OPSET = 16  # GridSample
PART_IO = {"generator": ("lr", "sr", LR_SIZE), "ocr": ("images", "logits", HR_SIZE)}


def register(subparsers) -> None:
    parser = subparsers.add_parser("export", help="export the generator or the OCR to ONNX or TorchScript",
                                   description=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--checkpoint", required=True, type=Path, metavar="EXPORT_DIR",
                        help="an export directory")
    parser.add_argument("--format", required=True, choices=FORMATS, help="onnx or torchscript")
    parser.add_argument("--out", required=True, type=Path, metavar="FILE", help="file to write")
    parser.add_argument("--part", choices=tuple(PART_IO), default="generator", help="model part (generator)")
    parser.add_argument("--opset", type=int, default=17, help=f"ONNX opset, >= {MIN_ONNX_OPSET} (17)")
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    parser.set_defaults(func=run)


def example_input(part: str, batch: int = 2, seed: int = 0) -> torch.Tensor:
    height, width = PART_IO[part][2]
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def export_onnx(module: torch.nn.Module, part: str, out: Path, opset: int) -> None:
    if opset < MIN_ONNX_OPSET:
        raise LpasrnError(f"--opset {opset}: the generator's deformable conv needs GridSample, opset >= "
                          f"{MIN_ONNX_OPSET}")
    input_name, output_name, _ = PART_IO[part]
    # The TorchScript-based exporter (dynamo=False) handles grid_sample, bicubic resize and the
    # BiLSTM directly and needs no extra packages; tracing warnings about constant shapes are
    # expected (the shape checks in the generator are evaluated at trace time).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example_input(part),), str(out), dynamo=False, opset_version=opset,
                          input_names=[input_name], output_names=[output_name],
                          dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}})


def export_torchscript(module: torch.nn.Module, part: str, out: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, (example_input(part),), check_trace=False)
    traced.save(str(out))


def run_onnx(path: Path, part: str, inputs: torch.Tensor) -> torch.Tensor:
    """Run an exported ONNX file in onnxruntime on CPU (raises ImportError without onnxruntime)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {PART_IO[part][0]: inputs.numpy()})[0])


def run_torchscript(path: Path, inputs: torch.Tensor) -> torch.Tensor:
    # TorchScript archives are read by TorchScript's own loader (code + tensors), not by pickle.load
    # of arbitrary classes; only files this command wrote are loaded here.
    module = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return module(inputs)


def max_difference(module: torch.nn.Module, part: str, fmt: str, path: Path) -> float | None:
    """Largest |export - PyTorch| on a batch of 3 (not the traced batch size); None without onnxruntime."""
    inputs = example_input(part, batch=3, seed=1)
    with torch.no_grad():
        expected = module(inputs)
    try:
        found = run_onnx(path, part, inputs) if fmt == "onnx" else run_torchscript(path, inputs)
    except ImportError:
        return None
    return float((found - expected).abs().max())


def export_part(export_dir: Path, fmt: str, part: str, out: Path, opset: int = 17,
                force: bool = False) -> float | None:
    """Write the export atomically (temporary file, then rename) and return the check's difference."""
    from lpasrn.eval.loading import load_exported_model

    if out.exists() and not force:
        raise LpasrnError(f"{out} exists: pass --force to overwrite")
    model, _ = load_exported_model(export_dir, "cpu", pure_pytorch_dcn=True)
    module = getattr(model, part)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".tmp-{os.getpid()}-{out.name}")
    try:
        if fmt == "onnx":
            export_onnx(module, part, tmp, opset)
        else:
            export_torchscript(module, part, tmp)
        difference = max_difference(module, part, fmt, tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return difference


def run(args) -> int:
    difference = export_part(args.checkpoint, args.format, args.part, args.out, args.opset, args.force)
    check = ("not checked (pip install onnxruntime to check)" if difference is None
             else f"max |export - PyTorch| = {difference:.3g}")
    print(f"lpasrn export: wrote {args.format} {args.part} to {args.out}; {check}")
    return 0
