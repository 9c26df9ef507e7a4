"""`rodosol` format: RodoSol-ALPR style scene images, each with a sibling `.txt`:

    type: car
    plate: ABC1D23
    layout: Mercosur
    corners: 568,370 692,372 692,415 568,412

The plate is rectified from the four corners (any order) to an upright crop, which becomes the HR
sample; the LR sample is made from it by the published degradation, `degrade(hr, "paper", seed)`,
with the seed derived from the image's relative path and `--seed` (same input, same bytes).
`layout:` is informational: the layout prior comes from the text's letter/digit pattern.

Split, in order: `--split-file`; else the dataset's own `split.txt` at SRC (announced); else the
deterministic 80/10/10 hash split of the relative path. Lines are `./images/cars-br/img_004765.jpg;
validation` (paths relative to the split file's folder; the form quoted from RodoSol's split.txt in
public loaders, e.g. a YOLO label generator's docstring found with the code search).

Vehicles: cars only by default (`type: car`): the 10,000 motorcycle plates have two rows, which a
one-line CTC OCR cannot read in order, and the published LP-SR work on RodoSol uses cars
(github.com/valfride/lpsr-lacd README: RodoSol-SR). `motorcycles=True` (`--motorcycles`) keeps them.
Skipped motorcycles are counted in `skipped` (reported in the import summary), never rejected.
(Dataset facts: github.com/raysonlaroca/rodosol-alpr-dataset README: 5,000 images per car/motorcycle
x Brazilian/Mercosur, a text file per image with type, layout, text and four corners.)
"""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Iterator

from lpasrn.data.importers.common import (IMAGE_SUFFIXES, ImportItem, RecordProblem, default_split_file,
                                          make_hr, open_image, parse_corner_string, plate_text, read_key_values,
                                          record_or_reject, rectify, require_nonempty, require_path,
                                          split_assignments, stable_seed)
from lpasrn.data.records import PlateRecord

MOTORCYCLE_SKIP = "motorcycle image(s) (two-row plates; import them with --motorcycles)"
DEFAULT_SPLIT_FILE = "split.txt"


def iter_rodosol(src: Path, split_file: Path | None = None, seed: int = 0, motorcycles: bool = False,
                 skipped: Counter | None = None, **_options) -> Iterator[ImportItem]:
    """(split, record) for every image under `src`; one without its `.txt` is a RejectedRecord."""
    src = require_path(src, "dir")
    if split_file is not None:
        split_file = require_path(split_file, "file")
    else:
        split_file = default_split_file(src, DEFAULT_SPLIT_FILE)
    skipped = Counter() if skipped is None else skipped
    images = {path.relative_to(src).as_posix(): path for path in sorted(src.rglob("*"))
              if path.suffix.lower() in IMAGE_SUFFIXES}

    def entry_key(entry: str) -> str:
        listed = (split_file.parent / entry).resolve()
        return Path(os.path.relpath(listed, src.resolve())).as_posix()

    def items() -> Iterator[ImportItem]:
        for split, path in split_assignments(images, split_file, seed, entry_key):
            if isinstance(path, Path):
                if not motorcycles and _is_motorcycle(path):
                    skipped[MOTORCYCLE_SKIP] += 1
                    continue
                key = path.relative_to(src).as_posix()
                yield split, record_or_reject(path, lambda: _record(path, key, seed))
            else:
                yield split, path

    return require_nonempty(items(), src, "images with a sibling .txt holding 'plate:' and 'corners:'")


def _is_motorcycle(path: Path) -> bool:
    """`type: motorcycle` in the image's .txt; a missing/unreadable file is left to _record to reject."""
    try:
        return read_key_values(path.with_suffix(".txt")).get("type", "").lower().startswith("motorcycle")
    except RecordProblem:
        return False


def _record(path: Path, key: str, seed: int) -> PlateRecord:
    from lpasrn.data.degrade import degrade  # the one LR recipe, shared with the synthetic data

    label = path.with_suffix(".txt")
    values = read_key_values(label)
    text = plate_text(values.get("plate"), f"{label} line 'plate:'")
    if "corners" not in values:
        raise RecordProblem(f"missing 'corners:' line in {label}")
    corners = parse_corner_string(values["corners"])
    hr = make_hr(rectify(open_image(path), corners))
    lr = degrade(hr, "paper", seed=stable_seed(key, seed))
    return PlateRecord(hr=hr, lr=lr, text=text, source=f"rodosol:{key}")
