"""`split` format: a text file of `HR;LR;phase` lines (the published LP-SR work's split files).

    images/cars/000001_hr.png;images/cars/000001_lr.png;training
    images/cars/000002_hr.png;images/cars/000002_lr.png;testing

Paths are relative to the split file's folder; phase training/validation/testing -> split
train/val/test. The text comes from the HR image's sibling `.txt` (same stem), line `plate: XXX`.
Both crops are given, so they must show the same plate: aspect within 25 % and HR 1.5..2.5 times
the LR size (the pairs are x2). SRC may be the split file or a folder holding `split.txt`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from lpasrn.data.importers.common import (ImportItem, RecordProblem, check_pair, make_hr, make_lr,
                                          open_image, phase_to_split, plate_text, read_key_values,
                                          read_split_lines, record_or_reject, require_nonempty,
                                          require_path, UNKNOWN_SPLIT)
from lpasrn.data.records import PlateRecord, RejectedRecord

DEFAULT_SPLIT_FILE = "split.txt"
MIN_SCALE, MAX_SCALE = 1.5, 2.5


def iter_split(src: Path, min_scale: float = MIN_SCALE, max_scale: float | None = MAX_SCALE,
               **_options) -> Iterator[ImportItem]:
    """(split, record) for every line of the split file; a bad line is a RejectedRecord."""
    split_file = require_path(src, "any")
    if split_file.is_dir():
        split_file = require_path(split_file / DEFAULT_SPLIT_FILE, "file")
    items = _iter_lines(split_file, min_scale, max_scale)
    return require_nonempty(items, split_file, "lines 'HR;LR;phase'")


def _iter_lines(split_file: Path, min_scale: float, max_scale: float | None) -> Iterator[ImportItem]:
    base = split_file.parent
    for number, fields in read_split_lines(split_file):
        if len(fields) != 3:
            yield UNKNOWN_SPLIT, RejectedRecord(f"{split_file}:{number}",
                                          f"expected 'HR;LR;phase', got {';'.join(fields)!r}")
            continue
        hr_path, lr_path = base / fields[0], base / fields[1]
        try:
            split = phase_to_split(fields[2])
        except RecordProblem as problem:
            yield UNKNOWN_SPLIT, RejectedRecord(f"{split_file}:{number}", str(problem))
            continue

        def make(hr_path=hr_path, lr_path=lr_path, name=fields[0]) -> PlateRecord:
            for path in (hr_path, lr_path):
                if not path.exists():
                    raise RecordProblem(f"file named in split file {split_file.name} does not exist: {path}")
            label = hr_path.with_suffix(".txt")
            text = plate_text(read_key_values(label).get("plate"), f"{label} line 'plate:'")
            hr_crop, lr_crop = open_image(hr_path), open_image(lr_path)
            check_pair(hr_crop, lr_crop, min_scale, max_scale)
            return PlateRecord(hr=make_hr(hr_crop), lr=make_lr(lr_crop), text=text, source=f"split:{name}")

        yield split, record_or_reject(hr_path, make)
