"""`lpasrn data inspect DIR [--sheet out.png] [--json]`: what a dataset holds, before training on it.

Counts per split and layout, text-length histogram, sources, tracks, the records the import
rejected (`DIR/rejected.csv`), and optionally a contact sheet of LR (upscaled) | HR | text rows.
Statistics read only each sample's json member (pread at manifest offsets, no image decoding).
"""
from __future__ import annotations

import argparse
import csv
import json
from collections import Counter
from pathlib import Path

from PIL import Image, ImageDraw

from lpasrn.data.readers import IndexedPlateDataset
from lpasrn.data.shards import load_manifest
from lpasrn.fonts import mono_font
from lpasrn.plates import HR_SIZE

REJECTED_CSV = "rejected.csv"
SHEET_SCALE = 2  # HR drawn at 2x, LR at 4x: both the same size on the sheet
MARGIN, TEXT_WIDTH, HEADER = 8, 220, 28


def register(subparsers) -> None:
    parser = subparsers.add_parser("inspect", help="counts, histograms and a contact sheet of a dataset")
    parser.add_argument("data_dir", metavar="DIR", type=Path, help="dataset folder (manifest.json)")
    parser.add_argument("--sheet", type=Path, default=None, metavar="PNG", help="write a contact sheet")
    parser.add_argument("--per-split", type=int, default=6, help="samples per split on the sheet (6)")
    parser.add_argument("--json", action="store_true", help="print the statistics as JSON")
    parser.set_defaults(func=run)


def read_rejected(data_dir: Path) -> list[dict[str, str]]:
    path = data_dir / REJECTED_CSV
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as handle:
        return [{"path": row.get("path", ""), "reason": row.get("reason", "")} for row in csv.DictReader(handle)]


def split_stats(data_dir: Path, split: str) -> dict:
    """Counts of one split from its samples' json members."""
    dataset = IndexedPlateDataset(data_dir, split)
    layouts, lengths, sources, tracks = Counter(), Counter(), Counter(), set()
    try:
        for sid in range(len(dataset)):
            _shard, _key, members = dataset.read_members(sid)
            meta = json.loads(members["json"].decode("utf-8"))
            layouts[meta["layout"]] += 1
            lengths[len(meta["text"])] += 1
            # source is "<dataset>:<original path>"; the dataset part is what a summary needs
            sources[meta["source"].split(":", 1)[0]] += 1
            if meta.get("track") is not None:
                tracks.add(meta["track"])
    finally:
        dataset.close()
    return {"count": len(dataset), "layouts": dict(sorted(layouts.items())),
            "text_lengths": {str(k): v for k, v in sorted(lengths.items())},
            "sources": dict(sorted(sources.items())), "tracks": len(tracks)}


def collect_stats(data_dir: Path) -> dict:
    manifest = load_manifest(data_dir)
    splits = {name: split_stats(data_dir, name) for name in manifest["splits"]}
    totals = {"count": 0, "layouts": Counter(), "text_lengths": Counter(), "sources": Counter()}
    for stats in splits.values():
        totals["count"] += stats["count"]
        for field in ("layouts", "text_lengths", "sources"):
            totals[field].update(stats[field])
    return {"dir": str(data_dir), "settings": manifest.get("settings", {}), "splits": splits,
            "total": {k: (dict(sorted(v.items())) if isinstance(v, Counter) else v) for k, v in totals.items()},
            "rejected": read_rejected(data_dir)}


def format_report(stats: dict) -> str:
    settings = stats["settings"]
    lines = [f"dataset {stats['dir']}" + (f" (format {settings['format']}, from {settings.get('source')})"
                                          if "format" in settings else "")]
    layouts = sorted(stats["total"]["layouts"])
    header = ["split", "samples", "tracks"] + layouts
    rows = [[name, s["count"], s["tracks"]] + [s["layouts"].get(k, 0) for k in layouts]
            for name, s in stats["splits"].items()]
    rows.append(["total", stats["total"]["count"], sum(s["tracks"] for s in stats["splits"].values())]
                + [stats["total"]["layouts"][k] for k in layouts])
    widths = [max(len(str(row[i])) for row in [header] + rows) for i in range(len(header))]
    for row in [header] + rows:
        lines.append("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())
    total = max(stats["total"]["count"], 1)
    lines.append("text lengths:")
    for length, count in stats["total"]["text_lengths"].items():
        lines.append(f"  {length:>2}: {count:>7}  {'#' * max(1, round(40 * count / total))}")
    lines.append("sources: " + ", ".join(f"{k} {v}" for k, v in stats["total"]["sources"].items()))
    lines.append(f"rejected at import: {len(stats['rejected'])}")
    lines.extend(f"  {r['path']}: {r['reason']}" for r in stats["rejected"])
    return "\n".join(lines)


def tensor_to_image(tensor) -> Image.Image:
    array = (tensor.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(array, "RGB")


def write_sheet(data_dir: Path, splits: list[str], out: Path, per_split: int) -> Path:
    """Rows of LR (nearest 4x) | HR (nearest 2x) | text, `per_split` evenly spaced samples per split."""
    cell_w, cell_h = HR_SIZE[1] * SHEET_SCALE, HR_SIZE[0] * SHEET_SCALE
    picks = {}
    for split in splits:
        dataset = IndexedPlateDataset(data_dir, split)
        n, count = len(dataset), min(per_split, len(dataset))
        sids = sorted({round(i * (n - 1) / max(count - 1, 1)) for i in range(count)})
        picks[split] = [dataset[sid] for sid in sids]
        dataset.close()
    width = MARGIN * 4 + cell_w * 2 + TEXT_WIDTH
    height = MARGIN + sum(HEADER + len(samples) * (cell_h + MARGIN) for samples in picks.values())
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw, font = ImageDraw.Draw(sheet), mono_font(22)
    y = MARGIN
    for split, samples in picks.items():
        draw.text((MARGIN, y), f"{split} ({len(samples)} shown)  LR | HR | text", fill=(0, 0, 0), font=font)
        y += HEADER
        for sample in samples:
            lr = tensor_to_image(sample["lr"]).resize((cell_w, cell_h), Image.Resampling.NEAREST)
            hr = tensor_to_image(sample["hr"]).resize((cell_w, cell_h), Image.Resampling.NEAREST)
            sheet.paste(lr, (MARGIN, y))
            sheet.paste(hr, (MARGIN * 2 + cell_w, y))
            draw.text((MARGIN * 3 + cell_w * 2, y + cell_h // 4), sample["text"], fill=(0, 0, 0), font=font)
            y += cell_h + MARGIN
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out


def run(args: argparse.Namespace) -> int:
    stats = collect_stats(args.data_dir)
    if args.json:
        print(json.dumps(stats, indent=2, sort_keys=True))
    else:
        print(format_report(stats))
    if args.sheet is not None:
        write_sheet(args.data_dir, list(stats["splits"]), args.sheet, args.per_split)
        if not args.json:
            print(f"contact sheet: {args.sheet}")
    return 0
