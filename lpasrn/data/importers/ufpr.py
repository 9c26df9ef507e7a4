"""`ufpr` format: the UFPR-SR-Plates release, read from its root as downloaded.

    SRC/<resolution>/<layout>/plate-NNNNNN/lr-001.png .. lr-005.png   low-resolution frames
                                          hr-001.png .. hr-005.png   high-resolution frames
                                          lr-001.json, hr-001.json   LabelMe: shapes[0].points
                                          plate-MMMMMM_TEXT.txt      the plate text (content)
    SRC/split*.txt   lines `TEXT;./<resolution>/<layout>/plate-NNNNNN;training|validation|testing`

(Layout as in the authors' sample tracks, github.com/valfride/lpsrgan `dataset_intelbras_1280X960/
mercosur/plate-001348/`: five lr/hr pairs, LabelMe JSON with `shapes[0].points` = TL,TR,BR,BL, one
`plate-001979_TAN0F36.txt` holding `TAN0F36`; its number need not match the folder's. Split lines as
in that repository's `split_all_example.txt`. The dataset README, github.com/valfride/UFPR-SR-Plates:
10,000 tracks over two resolutions, split 40/20/40, "each LP appears in only one split".)

Track folders (`plate-*` holding lr-/hr- images) are found at any depth below SRC; the track id is
the folder's path relative to SRC (`dataset_intelbras_1280X960/mercosur/plate-001348`), because
plate numbers repeat across the resolution/layout folders. Every (lr-k, hr-k) pair is a record. A
frame with a LabelMe file is rectified from its own corners; one without (the release has a few) is
taken as an already-cropped plate. LR and HR are separate captures: the pair check only asks for a
similar aspect and an HR crop at least as large as the LR one.

Split, in order: `--split-file`; else the dataset's own `split*.txt` at SRC (announced); else the
deterministic 80/10/10 hash split of the PLATE TEXT, so a plate filmed in several tracks (the
sample split lists AAA9357 three times) never lands in two splits. The split file's own TEXT field
is not used: the track's text file is the annotation (the sample split and text file disagree on
plate-002511: TIL7G47 vs TAL7G47).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterator

from PIL import Image

from lpasrn.data.importers.common import (IMAGE_SUFFIXES, UNKNOWN_SPLIT, ImportItem, RecordProblem,
                                          check_pair, default_split_file, make_hr, make_lr,
                                          names_by_track_name, open_image, plate_text, read_key_values,
                                          record_or_reject, rectify, require_nonempty, require_path,
                                          split_assignments)
from lpasrn.data.records import PlateRecord, RejectedRecord

TRACK_GLOB = "plate-*"
FRAME_RE = re.compile(r"^(lr|hr)-(\d+)$")
MIN_SCALE, MAX_SCALE = 1.0, None


def find_tracks(src: Path) -> dict[str, Path]:
    """{relative posix path: folder} of every `plate-*` folder holding lr-/hr- frames, any depth."""
    folders = [src] if src.name.startswith("plate-") else sorted(src.rglob(TRACK_GLOB))
    return {(p.relative_to(src).as_posix() if p != src else p.name): p
            for p in folders if p.is_dir() and frame_files(p)}


def iter_ufpr(src: Path, split_file: Path | None = None, seed: int = 0,
              min_scale: float = MIN_SCALE, max_scale: float | None = MAX_SCALE,
              **_options) -> Iterator[ImportItem]:
    """(split, record) for every lr-k/hr-k pair of every track folder under `src`."""
    src = require_path(src, "dir")
    split_file = require_path(split_file, "file") if split_file is not None else default_split_file(src)
    tracks = find_tracks(src)
    texts: dict[str, str | RecordProblem] = {}
    for key, track in tracks.items():
        try:
            texts[key] = read_track_text(track)
        except RecordProblem as problem:
            texts[key] = problem

    def hash_key(key: str) -> str:  # unreadable text: the track is rejected below anyway
        return texts[key] if isinstance(texts[key], str) else key

    def items() -> Iterator[ImportItem]:
        assigned = split_assignments(tracks, split_file, seed, names_by_track_name(tracks, src, split_file),
                                     hash_key, widths=(2, 3))
        for split, track in assigned:
            if isinstance(track, RejectedRecord):
                yield split, track
                continue
            key = track.relative_to(src).as_posix() if track != src else track.name
            if isinstance(texts[key], RecordProblem):
                yield UNKNOWN_SPLIT, RejectedRecord(str(track), str(texts[key]))
                continue
            for record in _track_records(track, key, texts[key], min_scale, max_scale):
                yield (split if isinstance(record, PlateRecord) else UNKNOWN_SPLIT), record

    return require_nonempty(items(), src, f"track folders {TRACK_GLOB}/ with lr-001.png, hr-001.png, ... "
                                          "at any depth")


def read_track_text(track: Path) -> str:
    """Plate text from the track's text file content (`plate-N_TEXT.txt`; `plate.txt` also read).

    Content is the bare text in the release; a 'plate:' line is read too. An empty file falls back
    to the TEXT part of the file name, which the release writes as well.
    """
    candidates = sorted(track.glob("*.txt"))
    if len(candidates) != 1:
        found = ", ".join(p.name for p in candidates) or "none"
        raise RecordProblem(f"expected one plate text file (plate-NNNNNN_TEXT.txt) in {track}, found {found}")
    label = candidates[0]
    values = read_key_values(label)
    if "plate" in values:
        return plate_text(values["plate"], f"{label} line 'plate:'")
    lines = [line.strip() for line in label.read_text(encoding="utf-8", errors="replace").splitlines()]
    first = next((line for line in lines if line), "")
    if not first and "_" in label.stem:
        return plate_text(label.stem.rsplit("_", 1)[1], f"{label.name} (file name; the file is empty)")
    return plate_text(first, str(label))


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


def _track_records(track: Path, key: str, text: str, min_scale: float, max_scale: float | None):
    for index, pair in frame_files(track).items():
        if set(pair) != {"lr", "hr"}:
            (have, path), = pair.items()
            missing = "hr" if have == "lr" else "lr"
            yield RejectedRecord(str(path), f"no matching {missing}-{index} image for {path.name}")
            continue

        def make(pair=pair) -> PlateRecord:
            hr_crop, lr_crop = load_plate_crop(pair["hr"]), load_plate_crop(pair["lr"])
            check_pair(hr_crop, lr_crop, min_scale, max_scale)
            return PlateRecord(hr=make_hr(hr_crop), lr=make_lr(lr_crop), text=text,
                               source=f"ufpr:{key}/{pair['lr'].name}", track=key)

        yield record_or_reject(pair["lr"], make)
