"""`folder` format: plain `hr/` and `lr/` folders of pre-cut crop pairs and a CSV of texts.

    SRC/hr/0001.png   SRC/lr/0001.png   (same file name in both folders)
    SRC/labels.csv    header `filename,text[,split]`; split training/validation/testing or
                      train/val/test; without the column (or with an empty cell) the record gets
                      the deterministic 80/10/10 hash split of its file name.

Pairs are x2 crops of the same plate: aspect within 25 % and HR 1.5..2.5 times the LR size.
A CSV row whose images are missing and an image with no CSV row are both rejected.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterator

from lpasrn.data.importers.common import (IMAGE_SUFFIXES, UNKNOWN_SPLIT, ImportItem, RecordProblem,
                                          check_pair, hash_split, make_hr, make_lr, open_image,
                                          phase_to_split, plate_text, record_or_reject, require_nonempty,
                                          require_path)
from lpasrn.data.records import PlateRecord, RejectedRecord
from lpasrn.errors import LpasrnError

LABELS = "labels.csv"
MIN_SCALE, MAX_SCALE = 1.5, 2.5


def iter_folder(src: Path, seed: int = 0, min_scale: float = MIN_SCALE,
                max_scale: float | None = MAX_SCALE, **_options) -> Iterator[ImportItem]:
    """(split, record) for every row of `labels.csv`, then a rejection per unlabelled HR image."""
    src = require_path(src, "dir")
    for sub in ("hr", "lr"):
        require_path(src / sub, "dir")
    labels = require_path(src / LABELS, "file")
    return require_nonempty(_iter_rows(src, labels, seed, min_scale, max_scale), src,
                            f"rows in {LABELS} naming images in hr/ and lr/")


def read_label_rows(labels: Path) -> list[dict[str, str]]:
    with labels.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip().lower() for c in reader.fieldnames or []]
        if "filename" not in columns or "text" not in columns:
            raise LpasrnError(f"{labels}: header must be 'filename,text[,split]', got {','.join(columns)!r}")
        reader.fieldnames = columns
        return list(reader)


def _iter_rows(src: Path, labels: Path, seed: int, min_scale: float,
               max_scale: float | None) -> Iterator[ImportItem]:
    labelled = set()
    for number, row in enumerate(read_label_rows(labels), start=2):  # line 1 is the header
        name = (row.get("filename") or "").strip()
        if not name:
            yield UNKNOWN_SPLIT, RejectedRecord(f"{labels}:{number}", "empty filename")
            continue
        labelled.add(name)
        hr_path, lr_path = src / "hr" / name, src / "lr" / name

        def make(row=row, name=name, hr_path=hr_path, lr_path=lr_path) -> PlateRecord:
            text = plate_text(row.get("text"), f"{labels} row for {name}")
            hr_crop, lr_crop = open_image(hr_path), open_image(lr_path)
            check_pair(hr_crop, lr_crop, min_scale, max_scale)
            return PlateRecord(hr=make_hr(hr_crop), lr=make_lr(lr_crop), text=text, source=f"folder:{name}")

        try:
            cell = (row.get("split") or "").strip()
            split = phase_to_split(cell) if cell else hash_split(name, seed)
        except RecordProblem as problem:
            yield UNKNOWN_SPLIT, RejectedRecord(str(hr_path), str(problem))
            continue
        record = record_or_reject(hr_path, make)
        yield (split if isinstance(record, PlateRecord) else UNKNOWN_SPLIT), record
    for path in sorted((src / "hr").iterdir()):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.name not in labelled:
            yield UNKNOWN_SPLIT, RejectedRecord(str(path), f"no row in {LABELS}")
