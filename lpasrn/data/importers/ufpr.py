"""`ufpr` format: UFPR-SR-Plates track folders.

    SRC/plate-00001/lr-001.png .. lr-005.png   low-resolution frames
                    hr-001.png .. hr-005.png   high-resolution frames
                    lr-001.json, hr-001.json   LabelMe: shapes[0].points = the 4 plate corners
                    plate.txt                  'plate: ABC1234' (or just 'ABC1234')

Every (lr-k, hr-k) pair is a record; the track is the folder name. The text is read from the text
file's content (`plate.txt`, else the folder's only `.txt`), never from the folder name. A frame
with a LabelMe file is rectified from its corners; one without is taken as an already-cropped plate.
LR and HR are separate captures, so the pair check only asks for a similar aspect and an HR crop
at least as large as the LR one.

Split: `--split-file` with `TRACK;phase` lines (TRACK may be a path; its last part is used), else
the deterministic 80/10/10 hash split of the track name (all frames of a track in one split).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterator

from PIL import Image

from lpasrn.data.importers.common import (IMAGE_SUFFIXES, UNKNOWN_SPLIT, ImportItem, RecordProblem,
                                          check_pair, make_hr, make_lr, open_image, plate_text,
                                          read_key_values, record_or_reject, rectify, require_nonempty,
                                          require_path, split_assignments)
from lpasrn.data.records import PlateRecord, RejectedRecord

TRACK_GLOB = "plate-*"
FRAME_RE = re.compile(r"^(lr|hr)-(\d+)$")
MIN_SCALE, MAX_SCALE = 1.0, None


def iter_ufpr(src: Path, split_file: Path | None = None, seed: int = 0,
              min_scale: float = MIN_SCALE, max_scale: float | None = MAX_SCALE,
              **_options) -> Iterator[ImportItem]:
    """(split, record) for every lr-k/hr-k pair of every `plate-*` track folder under `src`."""
    src = require_path(src, "dir")
    if split_file is not None:
        split_file = require_path(split_file, "file")
    tracks = {path.name: path for path in sorted(src.glob(TRACK_GLOB)) if path.is_dir()}

    def items() -> Iterator[ImportItem]:
        for split, track in split_assignments(tracks, split_file, seed, lambda entry: Path(entry).name):
            if isinstance(track, RejectedRecord):
                yield split, track
                continue
            for record in _track_records(track, min_scale, max_scale):
                yield (split if isinstance(record, PlateRecord) else UNKNOWN_SPLIT), record

    return require_nonempty(items(), src, f"track folders {TRACK_GLOB}/ with lr-001.png, hr-001.png, ...")


def read_track_text(track: Path) -> str:
    """Plate text from the track's text file content: a 'plate:' line, else its first line."""
    label = track / "plate.txt"
    if not label.is_file():
        candidates = sorted(track.glob("*.txt"))
        if len(candidates) != 1:
            found = ", ".join(p.name for p in candidates) or "none"
            raise RecordProblem(f"missing plate text file in {track} (expected plate.txt; found {found})")
        label = candidates[0]
    values = read_key_values(label)
    if "plate" in values:
        return plate_text(values["plate"], f"{label} line 'plate:'")
    lines = [line.strip() for line in label.read_text(encoding="utf-8", errors="replace").splitlines()]
    return plate_text(next((line for line in lines if line), ""), str(label))


def frame_files(track: Path) -> dict[str, dict[str, Path]]:
    """{'001': {'lr': path, 'hr': path}} for the frame images of a track."""
    frames: dict[str, dict[str, Path]] = {}
    for path in sorted(track.iterdir()):
        match = FRAME_RE.match(path.stem)
        if match and path.suffix.lower() in IMAGE_SUFFIXES:
            frames.setdefault(match.group(2), {})[match.group(1)] = path
    return frames


def labelme_corners(image_path: Path) -> list | None:
    """shapes[0].points of the image's LabelMe file, or None when the image has no such file."""
    label = image_path.with_suffix(".json")
    if not label.is_file():
        return None
    try:
        return json.loads(label.read_text(encoding="utf-8"))["shapes"][0]["points"]
    except (OSError, ValueError, KeyError, IndexError, TypeError) as err:
        raise RecordProblem(f"invalid LabelMe corner file {label}: expected shapes[0].points ({err!r})") from err


def load_plate_crop(image_path: Path) -> Image.Image:
    corners = labelme_corners(image_path)
    image = open_image(image_path)
    return image if corners is None else rectify(image, corners)


def _track_records(track: Path, min_scale: float, max_scale: float | None):
    try:
        text = read_track_text(track)
    except RecordProblem as problem:
        yield RejectedRecord(str(track), str(problem))
        return
    frames = frame_files(track)
    if not frames:
        yield RejectedRecord(str(track), "no lr-NNN/hr-NNN frame images in track folder")
    for index, pair in frames.items():
        if set(pair) != {"lr", "hr"}:
            (have, path), = pair.items()
            missing = "hr" if have == "lr" else "lr"
            yield RejectedRecord(str(path), f"no matching {missing}-{index} image for {path.name}")
            continue

        def make(pair=pair) -> PlateRecord:
            hr_crop, lr_crop = load_plate_crop(pair["hr"]), load_plate_crop(pair["lr"])
            check_pair(hr_crop, lr_crop, min_scale, max_scale)
            return PlateRecord(hr=make_hr(hr_crop), lr=make_lr(lr_crop), text=text,
                               source=f"ufpr:{track.name}/{pair['lr'].name}", track=track.name)

        yield record_or_reject(pair["lr"], make)
