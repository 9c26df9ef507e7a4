"""`lrlpr` format: the LRLPR-26 data of the ICPR 2026 LRLPR competition, read from its root.

    SRC/train/Scenario-A/Brazilian/track_00001/lr-001.png .. lr-005.png, hr-001.png .. hr-005.png
                                               annotations.json
    SRC/train/Scenario-B/Mercosur/track_NNNNN/ lr-00k.jpg, hr-00k.jpg   (png or jpg)
    SRC/test-public/track_NNNNN/lr-001 .. lr-005                        LR only, no annotations

annotations.json: {"plate_text": "AVL5215", "plate_layout": "Brazilian",
                   "corners": {"lr-001.png": {"top-left": [x, y], "top-right": [x, y],
                                              "bottom-right": [x, y], "bottom-left": [x, y]}, ...}}
(Layout and schema as published by competitors' code: github.com/Quillboltcode/LPR AGENTS.md and
src/dataset.py (recursive search for annotations.json, corners keyed by file name with named
corners), github.com/Sanidhya-Sehgal/LRLPR-MultiFrame-Attention-CRNN-ICPR-2026 README (Scenario-A/B,
lr-001.png); competition site icpr26lrlpr.github.io.)

Track folders are found at any depth (every annotations.json); the track id is the folder's path
relative to SRC, since track numbers are only unique inside one scenario/layout folder. Every
(lr-k, hr-k) pair is a record; each image is rectified by ITS OWN corners (the LR by the LR's), an
image without corners is taken as an already-cropped plate. `plate_layout` is informational (the
layout prior comes from the text's letter/digit pattern).

Split, in order: `--split-file` (`TRACK;phase`, TRACK the relative path or a unique folder name);
else the JSON's optional "split"; else the deterministic 80/10/10 hash split of the plate text (a
plate in several tracks never lands in two splits).

LR-only tracks (the public test set) have no text and no HR, so they cannot be training records:
a normal import skips them and says how many; `--lr-only` exports them instead as flat crops
`DIR/<track path with _>_lr-00k.<ext>` plus `DIR/tracks.csv`, ready for `lpasrn sr --input DIR`.
"""
from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Iterator

from PIL import Image

from lpasrn.data.importers.common import (UNKNOWN_SPLIT, ImportItem, RecordProblem, check_pair,
                                          make_hr, make_lr, names_by_track_name, open_image,
                                          phase_to_split, plate_text, record_or_reject, rectify,
                                          require_nonempty, require_path, split_assignments)
from lpasrn.data.importers.ufpr import frame_files
from lpasrn.data.records import PlateRecord, RejectedRecord
from lpasrn.errors import LpasrnError

ANNOTATIONS = "annotations.json"
CORNER_NAMES = ("top-left", "top-right", "bottom-right", "bottom-left")
MIN_SCALE, MAX_SCALE = 1.0, None
LR_ONLY_SKIP = "LR-only track(s) without annotations (the test set; export them with --lr-only)"


def lr_only_tracks(src: Path) -> dict[str, Path]:
    """{relative path: folder} of track folders with lr- frames, no hr- frame and no annotations."""
    found = {}
    for folder in sorted({p.parent for p in src.rglob("lr-*")}):
        frames = frame_files(folder)
        if frames and not (folder / ANNOTATIONS).exists() and not any("hr" in f for f in frames.values()):
            found[folder.relative_to(src).as_posix() if folder != src else folder.name] = folder
    return found


def iter_lrlpr(src: Path, split_file: Path | None = None, seed: int = 0,
               min_scale: float = MIN_SCALE, max_scale: float | None = MAX_SCALE,
               skipped: Counter | None = None, **_options) -> Iterator[ImportItem]:
    """(split, record) for every frame pair of every `annotations.json` track under `src`."""
    src = require_path(src, "dir")
    if split_file is not None:
        split_file = require_path(split_file, "file")
    tracks = {p.parent.relative_to(src).as_posix() if p.parent != src else src.name: p.parent
              for p in sorted(src.rglob(ANNOTATIONS))}
    test_only = lr_only_tracks(src)
    if not tracks and test_only:
        raise LpasrnError(f"{src}: {len(test_only)} LR-only track(s) and no annotations.json: this is the "
                          f"test set; export it for `lpasrn sr` with --lr-only")
    if test_only and skipped is not None:
        skipped[LR_ONLY_SKIP] += len(test_only)
    notes = {key: _read_track(track) for key, track in tracks.items()}

    def hash_key(key: str) -> str:
        return notes[key][1] if not isinstance(notes[key], RecordProblem) else key

    def items() -> Iterator[ImportItem]:
        assigned = split_assignments(tracks, split_file, seed, names_by_track_name(tracks, src, split_file),
                                     hash_key)
        for split, track in assigned:
            if isinstance(track, RejectedRecord):
                yield split, track
                continue
            key = track.relative_to(src).as_posix() if track != src else src.name
            if isinstance(notes[key], RecordProblem):
                yield UNKNOWN_SPLIT, RejectedRecord(str(track / ANNOTATIONS), str(notes[key]))
                continue
            data, text = notes[key]
            if split_file is None and data.get("split"):
                try:
                    split = phase_to_split(str(data["split"]))
                except RecordProblem as problem:
                    yield UNKNOWN_SPLIT, RejectedRecord(str(track / ANNOTATIONS), str(problem))
                    continue
            yield from _track_items(track, key, data, text, split, min_scale, max_scale)

    return require_nonempty(items(), src, f"track folders holding {ANNOTATIONS}, at any depth")


def _read_track(track: Path) -> tuple[dict, str] | RecordProblem:
    path = track / ANNOTATIONS
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise RecordProblem(f"{ANNOTATIONS} must be a JSON object")
        return data, plate_text(data.get("plate_text"), f"{path} field 'plate_text'")
    except (OSError, ValueError) as err:
        return RecordProblem(f"unreadable {ANNOTATIONS}: {err}")
    except RecordProblem as problem:
        return problem


def frame_corners(data: dict, image: Path) -> list | None:
    """The image's 4 corners TL,TR,BR,BL from `corners[<file name>]` (named or a list), or None."""
    corners = (data.get("corners") or {}).get(image.name)
    if corners is None:
        return None
    if isinstance(corners, dict):
        missing = [name for name in CORNER_NAMES if name not in corners]
        if missing:
            raise RecordProblem(f"corners of {image.name} lack {', '.join(missing)}")
        return [corners[name] for name in CORNER_NAMES]
    return corners


def _crop(data: dict, image: Path) -> Image.Image:
    corners = frame_corners(data, image)
    picture = open_image(image)
    return picture if corners is None else rectify(picture, corners)


def _track_items(track: Path, key: str, data: dict, text: str, split: str, min_scale: float,
                 max_scale: float | None) -> Iterator[ImportItem]:
    frames = frame_files(track)
    if not frames:
        yield UNKNOWN_SPLIT, RejectedRecord(str(track), "no lr-NNN/hr-NNN frame images in track folder")
    for index, pair in frames.items():
        if set(pair) != {"lr", "hr"}:
            (have, path), = pair.items()
            yield UNKNOWN_SPLIT, RejectedRecord(str(path), f"no matching {'hr' if have == 'lr' else 'lr'}-{index} "
                                                           f"image for {path.name}")
            continue

        def make(pair=pair) -> PlateRecord:
            hr_crop, lr_crop = _crop(data, pair["hr"]), _crop(data, pair["lr"])
            check_pair(hr_crop, lr_crop, min_scale, max_scale)
            return PlateRecord(hr=make_hr(hr_crop), lr=make_lr(lr_crop), text=text,
                               source=f"lrlpr:{key}/{pair['lr'].name}", track=key)

        record = record_or_reject(pair["lr"], make)
        yield (split if isinstance(record, PlateRecord) else UNKNOWN_SPLIT), record


def export_lr_only(src: Path, out: Path) -> int:
    """Copy every LR-only track's frames to flat, unique names in `out` + tracks.csv; frames copied."""
    tracks = lr_only_tracks(require_path(src, "dir"))
    if not tracks:
        raise LpasrnError(f"{src}: no LR-only track folders (lr-001.png ... without annotations.json)")
    out.mkdir(parents=True, exist_ok=True)  # the CLI checked it is new or empty
    rows = []
    for key, track in tracks.items():
        for pair in frame_files(track).values():
            name = f"{key.replace('/', '_')}_{pair['lr'].name}"
            shutil.copyfile(pair["lr"], out / name)
            rows.append((name, key))
    with (out / "tracks.csv").open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([("file", "track"), *rows])
    return len(rows)
