"""`lpasrn data import FORMAT SRC --out DIR`: user data -> shards, every bad record accounted for.

Default: bad records are skipped, listed at the end (path and reason) and written to
`DIR/rejected.csv`. `--strict`: the first bad record stops the import with an error naming it.
The dataset is built in a hidden sibling folder and renamed to DIR only when complete, so an
import that stops (strict, error, Ctrl-C) leaves no DIR that looks like a finished dataset.
"""
from __future__ import annotations

import argparse
import csv
import os
import shutil
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from lpasrn.data.importers import IMPORTERS, iter_records
from lpasrn.data.importers.lrlpr import export_lr_only
from lpasrn.data.records import RejectedRecord
from lpasrn.data.shards import DatasetWriter
from lpasrn.errors import LpasrnError

REJECTED_CSV = "rejected.csv"
# Formats whose split comes from SRC itself, where a --split-file would be silently ignored.
SRC_IS_SPLIT = {"split": "SRC is the split file", "folder": "splits come from labels.csv"}


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "import", help="import plate pairs you own into shards",
        description=f"Import user data into shards. Formats: {', '.join(IMPORTERS)}.")
    parser.add_argument("format", metavar="FORMAT", help=f"one of: {', '.join(IMPORTERS)}")
    parser.add_argument("src", metavar="SRC", type=Path, help="split file or source folder")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="new dataset folder")
    parser.add_argument("--strict", action="store_true", help="stop at the first bad record")
    parser.add_argument("--shard-size", type=int, default=1000, help="samples per shard (1000)")
    parser.add_argument("--split-file", type=Path, default=None,
                        help="rodosol/ufpr/lrlpr: 'NAME;phase' lines (ufpr also 'TEXT;PATH;phase'); default: "
                             "the dataset's own split file at SRC, else a hash split 80/10/10 by plate")
    parser.add_argument("--seed", type=int, default=0, help="hash split and degradation seed (0)")
    parser.add_argument("--min-scale", type=float, default=None,
                        help="split/ufpr/lrlpr/folder: reject pairs whose HR is less than this many times the LR")
    parser.add_argument("--max-scale", type=float, default=None,
                        help="split/ufpr/lrlpr/folder: reject pairs whose HR is more than this many times the LR")
    parser.add_argument("--motorcycles", action="store_true",
                        help="rodosol: also import motorcycles (two-row plates; default: cars only)")
    parser.add_argument("--lr-only", action="store_true",
                        help="lrlpr: export the LR-only test tracks as flat crops for `lpasrn sr` (no shards)")
    parser.set_defaults(func=run)
    # `data merge` writes shards like an import; registered here so the command table stays as it is.
    from lpasrn.data import merge_cli
    merge_cli.register(subparsers)


def staging_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.importing"


def check_out_dir(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise LpasrnError(f"--out {out} already exists and is not an empty folder; choose a new one")


def write_rejected_csv(path: Path, rejected: list[RejectedRecord]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "reason"])
        writer.writerows([r.path, r.reason] for r in rejected)


def print_rejected(rejected: list[RejectedRecord], where: str) -> None:
    print(f"skipped {len(rejected)} bad record(s){where}:")
    for record in rejected:
        print(f"  {record.path}: {record.reason}")


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    check_out_dir(out)
    if args.shard_size < 1:
        raise LpasrnError(f"--shard-size must be >= 1, got {args.shard_size}")
    if args.split_file is not None and args.format in SRC_IS_SPLIT:
        raise LpasrnError(f"--split-file does not apply to format {args.format!r} "
                          f"({SRC_IS_SPLIT[args.format]}); leave it out")
    if args.lr_only:
        return _export_lr_only(args)
    skipped: Counter = Counter()
    options = {"split_file": args.split_file, "seed": args.seed, "motorcycles": args.motorcycles,
               "skipped": skipped}
    # Only given bounds override each format's own default size rule.
    options.update({name: getattr(args, name) for name in ("min_scale", "max_scale")
                    if getattr(args, name) is not None})
    items = iter_records(args.format, args.src, **options)  # wrong path/format raise here
    staging = staging_dir(out)
    shutil.rmtree(staging, ignore_errors=True)  # leftovers of an interrupted import
    settings = {"format": args.format, "source": str(Path(args.src).resolve()),
                "options": {"split_file": str(args.split_file) if args.split_file else None,
                            "seed": args.seed, "strict": args.strict, "shard_size": args.shard_size,
                            "motorcycles": args.motorcycles, "min_scale": args.min_scale,
                            "max_scale": args.max_scale}}
    writer = DatasetWriter(staging, settings, shard_size=args.shard_size)
    try:
        counts, rejected = _write_all(items, writer, args.strict)
        if not counts:
            print_rejected(rejected, "")
            raise LpasrnError(f"{args.src}: no usable {args.format} records; all {len(rejected)} rejected "
                              f"(reasons above)")
        # The writer copied `settings` at start; the counts are only known now.
        writer.settings.update(counts=dict(sorted(counts.items())), rejected=len(rejected),
                               skipped=dict(sorted(skipped.items())))
        write_rejected_csv(staging / REJECTED_CSV, rejected)
        writer.close()
        os.replace(staging, out)
    except BaseException:
        writer.abort()
        shutil.rmtree(staging, ignore_errors=True)
        raise
    summary = ", ".join(f"{split} {n}" for split, n in sorted(counts.items()))
    print(f"imported {sum(counts.values())} record(s) ({summary}) into {out}")
    for reason, number in sorted(skipped.items()):
        print(f"skipped by choice, not errors: {number} {reason}")
    if rejected:
        print_rejected(rejected, f", listed in {out / REJECTED_CSV}")
    return 0


def _export_lr_only(args: argparse.Namespace) -> int:
    if args.format != "lrlpr":
        raise LpasrnError(f"--lr-only applies to format 'lrlpr' only, not {args.format!r}")
    written = export_lr_only(Path(args.src), Path(args.out))
    print(f"exported {written} LR crop(s) to {args.out} (tracks in {Path(args.out) / 'tracks.csv'}); "
          f"super-resolve them with: lpasrn sr --checkpoint EXPORT_DIR --input {args.out} --output DIR")
    return 0


def _write_all(items, writer: DatasetWriter, strict: bool) -> tuple[Counter, list[RejectedRecord]]:
    counts: Counter = Counter()
    rejected: list[RejectedRecord] = []
    # disable=None: progress only on a terminal, so logs and captured output stay clean.
    for split, record in tqdm(items, desc="import", unit="rec", disable=None):
        if isinstance(record, RejectedRecord):
            if strict:
                raise LpasrnError(f"{record.path}: {record.reason} (--strict stops at the first bad record)")
            rejected.append(record)
            continue
        writer.write(split, record)
        counts[split] += 1
    return counts, rejected
