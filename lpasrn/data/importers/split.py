"""`split` format: a text file of `HR;LR;phase` lines (the LCOFL authors' split files).

    images/cars/000001_hr.png;images/cars/000001_lr.png;training
    images/cars/000002_hr.png;images/cars/000002_lr.png;testing

Reference: github.com/valfride/lpsr-lacd `datasets/image.py` splits each line on ';' into HR, LR,
phase and opens the paths as written, i.e. relative to the WORKING DIRECTORY; `datasets/wrappers.py`
reads the text from the HR's sibling `.txt` (`plate: (\\w+)`), pads the LR to aspect 3 +- 0.15 and
resizes it bicubically to the model's LR size, whatever size it was stored at (the authors'
generator stores the LR at the HR's size; other published pairs are x3).

So here: a relative path is tried against the working directory first, then against the split
file's folder (both named when neither exists); phase training/validation/testing -> split
train/val/test; the LR is padded and resized to the LR size like the reference loader, so any LR
size is accepted. `min_scale`/`max_scale` (`--min-scale/--max-scale`, default none) reject pairs
whose HR is not that many times the LR size; the aspect check (within 25 %) always applies.
SRC may be the split file or a folder holding `split.txt`.
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
# No size rule by default: the reference loader resizes any LR (x1 from the authors' generator, x3).
MIN_SCALE, MAX_SCALE = 0.0, None


def iter_split(src: Path, min_scale: float | None = None, max_scale: float | None = MAX_SCALE,
               **_options) -> Iterator[ImportItem]:
    """(split, record) for every line of the split file; a bad line is a RejectedRecord."""
    split_file = require_path(src, "any")
    if split_file.is_dir():
        split_file = require_path(split_file / DEFAULT_SPLIT_FILE, "file")
    items = _iter_lines(split_file, MIN_SCALE if min_scale is None else min_scale, max_scale)
    return require_nonempty(items, split_file, "lines 'HR;LR;phase'")


def resolve_listed(name: str, split_file: Path) -> Path:
    """A listed path as the reference code opens it (working directory), else next to the split file."""
    listed = Path(name)
    if listed.is_absolute() or listed.exists():
        return listed
    beside = split_file.parent / listed
    if beside.exists():
        return beside
    raise RecordProblem(f"file named in split file {split_file.name} does not exist: {name} "
                        f"(looked in the working directory {Path.cwd()} and in {split_file.parent})")


def _iter_lines(split_file: Path, min_scale: float, max_scale: float | None) -> Iterator[ImportItem]:
    for number, fields in read_split_lines(split_file):
        where = f"{split_file}:{number}"
        if len(fields) != 3:
            yield UNKNOWN_SPLIT, RejectedRecord(where, f"expected 'HR;LR;phase', got {';'.join(fields)!r}")
            continue
        try:
            split = phase_to_split(fields[2])
        except RecordProblem as problem:
            yield UNKNOWN_SPLIT, RejectedRecord(where, str(problem))
            continue

        def make(hr_name=fields[0], lr_name=fields[1]) -> PlateRecord:
            hr_path, lr_path = resolve_listed(hr_name, split_file), resolve_listed(lr_name, split_file)
            label = hr_path.with_suffix(".txt")
            text = plate_text(read_key_values(label).get("plate"), f"{label} line 'plate:'")
            hr_crop, lr_crop = open_image(hr_path), open_image(lr_path)
            check_pair(hr_crop, lr_crop, min_scale, max_scale)
            return PlateRecord(hr=make_hr(hr_crop), lr=make_lr(lr_crop), text=text, source=f"split:{hr_name}")

        shown = Path(fields[0]) if Path(fields[0]).exists() else split_file.parent / fields[0]
        yield split, record_or_reject(shown, make)
