"""`lpasrn sr --checkpoint EXPORT_DIR --input PATH --output DIR [--read] [--force]`: super-resolve crops.

Each crop (any size) is padded with gray to aspect 3 (plates.pad_to_aspect), resized bicubically to
the model's LR size (48x16), super-resolved and written as `DIR/<stem>.png` (96x32). With --read,
`DIR/readings.csv` holds the OCR reading of each SR image and its confidence.

Bad inputs: an unreadable file is reported (path and reason) and skipped; the others are still
processed. Exit status 0 when at least one image was written (skipped files are listed on stderr),
2 when nothing could be processed. Existing outputs are never overwritten without --force: the
command checks every target before writing anything and names the first that exists.
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lpasrn.errors import LpasrnError
from lpasrn.plates import LR_SIZE, pad_to_aspect

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
READINGS_CSV = "readings.csv"
BATCH_SIZE = 64


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "sr", help="super-resolve plate crops (file or folder) to PNG, optionally read them",
        description=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--checkpoint", required=True, type=Path, metavar="EXPORT_DIR",
                        help="an export directory")
    parser.add_argument("--input", required=True, type=Path, metavar="PATH",
                        help="an image or a folder of images")
    parser.add_argument("--output", required=True, type=Path, metavar="DIR", help="folder for <stem>.png")
    parser.add_argument("--read", action="store_true",
                        help=f"also write {READINGS_CSV} (file, reading, confidence)")
    parser.add_argument("--force", action="store_true", help="overwrite existing outputs")
    parser.set_defaults(func=run)


def list_inputs(path: Path) -> list[Path]:
    """The image files to process: `path` itself, or the image files directly in the folder (sorted)."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise LpasrnError(f"--input {path}: no such file or folder")
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise LpasrnError(f"--input {path}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    return files


def plan_outputs(inputs: list[Path], out_dir: Path, read: bool, force: bool) -> dict[Path, Path]:
    """input -> output path; refuses stem collisions, writing over an input, and (without --force)
    writing over any existing file, before anything is written."""
    targets: dict[Path, Path] = {}
    seen: dict[Path, Path] = {}
    for source in inputs:
        target = out_dir / f"{source.stem}.png"
        if target in seen:
            raise LpasrnError(f"{source} and {seen[target]} would both be written to {target}: rename one")
        if target.resolve() == source.resolve():
            raise LpasrnError(f"{target} would overwrite its own input: choose another --output folder")
        seen[target] = source
        targets[source] = target
    if not force:
        planned = list(targets.values()) + ([out_dir / READINGS_CSV] if read else [])
        existing = [p for p in planned if p.exists()]
        if existing:
            more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
            raise LpasrnError(f"{existing[0]} exists{more}: pass --force to overwrite")
    return targets


def load_lr(path: Path) -> torch.Tensor:
    """A crop as the model's LR input: FloatTensor [3, 16, 48] in [0, 1]. Raises ValueError saying why."""
    try:
        with Image.open(path) as img:
            img.load()
            rgb = img.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise ValueError(f"not a readable image ({type(err).__name__}: {err})") from None
    if min(rgb.size) < 1:
        raise ValueError(f"empty image {rgb.size[0]}x{rgb.size[1]}")
    height, width = LR_SIZE
    lr = pad_to_aspect(rgb).resize((width, height), Image.BICUBIC)
    return torch.from_numpy(np.asarray(lr, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def save_png(image: torch.Tensor, path: Path) -> None:
    array = (image.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0).round().astype(np.uint8)
    Image.fromarray(array, "RGB").save(path)


@torch.no_grad()
def super_resolve(model, batch: list[tuple[Path, torch.Tensor]], targets: dict[Path, Path],
                  read: bool) -> list[tuple[str, str, float]]:
    """Write one batch of SR images; return (file name, reading, confidence) rows when `read`."""
    from lpasrn.models.ocr_arch import greedy_decode

    device = next(model.parameters()).device
    lr = torch.stack([tensor for _, tensor in batch]).to(device)
    sr = model.generator(lr).float().clamp(0, 1)
    for (source, _), image in zip(batch, sr):
        save_png(image, targets[source])
    if not read:
        return []
    texts, confidences = greedy_decode(model.ocr(sr).float())
    return [(targets[source].name, text, float(conf))
            for (source, _), text, conf in zip(batch, texts, confidences.tolist())]


def write_readings(rows: list[tuple[str, str, float]], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "reading", "confidence"])
        writer.writerows((name, text, f"{conf:.6f}") for name, text, conf in rows)


def run(args) -> int:
    from lpasrn.eval.loading import load_exported_model

    inputs = list_inputs(args.input)
    if args.output.exists() and not args.output.is_dir():
        raise LpasrnError(f"--output {args.output} exists and is not a folder")
    targets = plan_outputs(inputs, args.output, args.read, args.force)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, _ = load_exported_model(args.checkpoint, device)
    args.output.mkdir(parents=True, exist_ok=True)
    skipped, rows, batch, written = [], [], [], 0
    for position, source in enumerate(inputs):
        try:
            batch.append((source, load_lr(source)))
        except ValueError as err:
            skipped.append((source, str(err)))
            print(f"lpasrn sr: skipped {source}: {err}", file=sys.stderr)
        if batch and (len(batch) == BATCH_SIZE or position == len(inputs) - 1):
            rows += super_resolve(model, batch, targets, args.read)
            written, batch = written + len(batch), []
    if written == 0:
        raise LpasrnError(f"no image could be processed ({len(skipped)} unreadable, first: {skipped[0][0]})")
    if args.read:
        write_readings(rows, args.output / READINGS_CSV)
    print(f"lpasrn sr: wrote {written} SR image(s) to {args.output}"
          + (f" and {READINGS_CSV}" if args.read else "")
          + (f"; skipped {len(skipped)} unreadable file(s): " + ", ".join(str(p) for p, _ in skipped)
             if skipped else ""))
    return 0
