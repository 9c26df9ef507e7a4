"""`lpasrn data synth`: synthetic Brazilian/Mercosur plate shards, byte-identical for a seed and counts.

    lpasrn data synth --out DIR --train N --val N --test N --seed S [--degradation paper|realistic]
                      [--mercosur-fraction F] [--shard-size 1000] [--sheet PNG]

Record i of a split depends only on (seed, split, i) (see lpasrn.data.synth), so the same arguments
give the same shards and a larger run starts with the records of a smaller one.
"""
from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from PIL import Image
from tqdm import tqdm

import lpasrn
from lpasrn.data.degrade import DEGRADATIONS, degradation_params
from lpasrn.data.records import PlateRecord
from lpasrn.data.shards import DatasetWriter
from lpasrn.data.synth import RENDERER_VERSION, SOURCE, synth_records, synth_throughput  # noqa: F401
from lpasrn.errors import LpasrnError
from lpasrn.plates import HR_SIZE

SPLITS = ("train", "val", "test")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "synth", help="render synthetic plate shards (the default dataset)",
        description="Render synthetic Brazilian and Mercosur plates (HR 32x96, LR 16x48) into shards.")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="dataset folder to write")
    parser.add_argument("--train", type=int, default=10000, metavar="N", help="train samples (10000)")
    parser.add_argument("--val", type=int, default=1000, metavar="N", help="val samples (1000)")
    parser.add_argument("--test", type=int, default=1000, metavar="N", help="test samples (1000)")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="dataset seed (0)")
    parser.add_argument("--degradation", choices=sorted(DEGRADATIONS), default="paper",
                        help="how LR is made from HR (paper)")
    parser.add_argument("--mercosur-fraction", type=float, default=0.5, metavar="F",
                        help="share of Mercosur plates, the rest Brazilian (0.5)")
    parser.add_argument("--shard-size", type=int, default=1000, help="samples per shard (1000)")
    parser.add_argument("--sheet", type=Path, default=None, metavar="PNG",
                        help="also save a contact sheet (HR | LR pairs) of the first train plates")
    parser.set_defaults(func=run)


def synth_settings(args) -> dict:
    """Everything that produced the data, stored in the manifest."""
    return {
        "generator": SOURCE,
        "renderer_version": RENDERER_VERSION,
        "seed": args.seed,
        "counts": {split: getattr(args, split) for split in SPLITS},
        "mercosur_fraction": args.mercosur_fraction,
        "degradation": {"name": args.degradation, "params": degradation_params(args.degradation)},
        "lpasrn_version": lpasrn.__version__,
    }


def contact_sheet(cells: list[tuple[Image.Image, ...]], columns: int = 6, scale: int = 2) -> Image.Image:
    """A grid of cells, each a row of images (e.g. HR | LR) all shown at HR size x `scale`
    (nearest neighbour, so LR pixels stay visible as pixels)."""
    width, height = HR_SIZE[1] * scale, HR_SIZE[0] * scale
    per_cell = max(len(cell) for cell in cells)
    cell_w, cell_h, gap = per_cell * (width + 4) - 4, height + 4, 10
    rows = -(-len(cells) // columns)
    sheet = Image.new("RGB", (columns * (cell_w + gap) - gap, rows * cell_h), (255, 255, 255))
    for i, cell in enumerate(cells):
        x, y = (i % columns) * (cell_w + gap), (i // columns) * cell_h
        for j, image in enumerate(cell):
            sheet.paste(image.resize((width, height), Image.NEAREST), (x + j * (width + 4), y))
    return sheet


def _check_args(args) -> None:
    for split in SPLITS:
        if getattr(args, split) < 0:
            raise LpasrnError(f"--{split} must be >= 0, got {getattr(args, split)}")
    if sum(getattr(args, split) for split in SPLITS) == 0:
        raise LpasrnError("nothing to make: give --train, --val or --test a count above 0")
    if not 0.0 <= args.mercosur_fraction <= 1.0:
        raise LpasrnError(f"--mercosur-fraction must be in [0, 1], got {args.mercosur_fraction}")
    if args.shard_size < 1:
        raise LpasrnError(f"--shard-size must be >= 1, got {args.shard_size}")


def run(args) -> int:
    _check_args(args)
    settings = synth_settings(args)
    total = sum(settings["counts"].values())
    layouts: dict[str, Counter] = {split: Counter() for split in SPLITS}
    sheet_records: list[PlateRecord] = []
    start = time.perf_counter()
    with DatasetWriter(args.out, settings, args.shard_size) as writer, \
            tqdm(total=total, unit="plate", desc="synth", disable=None) as progress:
        for split in SPLITS:
            records = synth_records(settings["counts"][split], args.seed, split, args.degradation,
                                    args.mercosur_fraction)
            for record in records:
                writer.write(split, record)
                layouts[split][record.layout] += 1
                if split == "train" and args.sheet is not None and len(sheet_records) < 48:
                    sheet_records.append(record)
                progress.update(1)
        manifest = writer.close()
    elapsed = time.perf_counter() - start
    if args.sheet is not None and sheet_records:
        contact_sheet([(r.hr, r.lr) for r in sheet_records]).save(args.sheet)
    _print_summary(args, manifest, layouts, total, elapsed)
    return 0


def _print_summary(args, manifest: dict, layouts: dict, total: int, elapsed: float) -> None:
    print(f"wrote {total} synthetic plates to {args.out} (seed {args.seed}, degradation {args.degradation})")
    for split in SPLITS:
        if split in manifest["splits"]:
            by_layout = ", ".join(f"{name} {count}" for name, count in sorted(layouts[split].items()))
            shards = len(manifest["splits"][split]["shards"])
            print(f"  {split:5s}: {sum(layouts[split].values()):7d} plates in {shards} shard(s) ({by_layout})")
    print(f"time {elapsed:.1f} s, {total / max(elapsed, 1e-9):.0f} plates/s (render, degrade, encode, write)")
    if args.sheet is not None:
        print(f"contact sheet: {args.sheet}")
