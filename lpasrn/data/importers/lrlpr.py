"""`lrlpr` format: LRLPR-26-style track folders, one `annotations.json` per track.

    SRC/<track>/annotations.json
    SRC/<track>/lr-001.png, hr-001.png, ...   (any names; the JSON points at them)

annotations.json (the schema this importer reads):

    {
      "plate_text": "ABC1D23",                 required, normalised ('abc-1d23' -> 'ABC1D23')
      "plate_layout": "Mercosur",              optional, informational (the layout prior comes
                                               from the text's letter/digit pattern)
      "split": "training",                     optional: training/validation/testing
      "frames": [                              required, one record per frame
        {"lr": "lr-001.png", "hr": "hr-001.png",          paths relative to the track folder
         "corners_lr": [[x, y], [x, y], [x, y], [x, y]],  optional: plate corners in the LR frame
         "corners_hr": [[x, y], [x, y], [x, y], [x, y]]}  optional: plate corners in the HR frame
      ]
    }

Corners, when given, rectify the plate (any corner order); without them the frame is taken as an
already-cropped plate. LR and HR are separate captures: the pair check asks for a similar aspect
and an HR crop at least as large as the LR one. The track id is the folder name.

Split: `--split-file` with `TRACK;phase` lines, else the JSON's "split", else the deterministic
80/10/10 hash split of the track name (all frames of a track in one split).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from PIL import Image

from lpasrn.data.importers.common import (UNKNOWN_SPLIT, ImportItem, RecordProblem, check_pair,
                                          make_hr, make_lr, open_image, phase_to_split, plate_text,
                                          record_or_reject, rectify, require_nonempty, require_path,
                                          split_assignments)
from lpasrn.data.records import PlateRecord, RejectedRecord

ANNOTATIONS = "annotations.json"
MIN_SCALE, MAX_SCALE = 1.0, None


def iter_lrlpr(src: Path, split_file: Path | None = None, seed: int = 0,
               min_scale: float = MIN_SCALE, max_scale: float | None = MAX_SCALE,
               **_options) -> Iterator[ImportItem]:
    """(split, record) for every frame of every `<track>/annotations.json` under `src`."""
    src = require_path(src, "dir")
    if split_file is not None:
        split_file = require_path(split_file, "file")
    tracks = {path.parent.name: path.parent for path in sorted(src.glob(f"*/{ANNOTATIONS}"))}

    def items() -> Iterator[ImportItem]:
        # Hash splits are computed per track below, so a JSON "split" can override them.
        assigned = split_assignments(tracks, split_file, seed, lambda entry: Path(entry).name)
        for split, track in assigned:
            if isinstance(track, RejectedRecord):
                yield split, track
                continue
            yield from _track_items(track, split, split_file is None, min_scale, max_scale)

    return require_nonempty(items(), src, f"track folders holding {ANNOTATIONS}")


def read_annotations(track: Path) -> dict:
    path = track / ANNOTATIONS
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise RecordProblem(f"unreadable {ANNOTATIONS}: {err}") from err
    if not isinstance(data, dict) or not isinstance(data.get("frames"), list):
        raise RecordProblem(f"{ANNOTATIONS} must be an object with a 'frames' list")
    return data


def _track_items(track: Path, split: str, json_split_allowed: bool, min_scale: float,
                 max_scale: float | None) -> Iterator[ImportItem]:
    try:
        data = read_annotations(track)
        text = plate_text(data.get("plate_text"), f"{track / ANNOTATIONS} field 'plate_text'")
        if json_split_allowed and data.get("split"):
            split = phase_to_split(str(data["split"]))
    except RecordProblem as problem:
        yield UNKNOWN_SPLIT, RejectedRecord(str(track / ANNOTATIONS), str(problem))
        return
    if not data["frames"]:
        yield UNKNOWN_SPLIT, RejectedRecord(str(track / ANNOTATIONS), "'frames' is empty")
    for number, frame in enumerate(data["frames"]):
        where = f"{track / ANNOTATIONS} frames[{number}]"
        record = record_or_reject(where, lambda: _frame_record(track, frame, text, min_scale, max_scale))
        yield (split if isinstance(record, PlateRecord) else UNKNOWN_SPLIT), record


def _frame_crop(track: Path, frame: dict, which: str) -> Image.Image:
    name = frame.get(which)
    if not isinstance(name, str) or not name:
        raise RecordProblem(f"frame lacks the '{which}' image name")
    image = open_image(track / name)
    corners = frame.get(f"corners_{which}")
    return image if corners is None else rectify(image, corners)


def _frame_record(track: Path, frame, text: str, min_scale: float, max_scale: float | None) -> PlateRecord:
    if not isinstance(frame, dict):
        raise RecordProblem(f"frame must be an object, got {type(frame).__name__}")
    hr_crop, lr_crop = _frame_crop(track, frame, "hr"), _frame_crop(track, frame, "lr")
    check_pair(hr_crop, lr_crop, min_scale, max_scale)
    return PlateRecord(hr=make_hr(hr_crop), lr=make_lr(lr_crop), text=text,
                       source=f"lrlpr:{track.name}/{frame['lr']}", track=track.name)
