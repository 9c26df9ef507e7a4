"""Shared pieces of the importers: image loading, text rules, corner rectification, sizing, splits.

An importer turns each candidate record into a PlateRecord or, when anything about it is wrong,
a RejectedRecord(path, reason). Helpers here raise `RecordProblem(reason)`; `record_or_reject`
turns that into the RejectedRecord, so each importer reads as the happy path.

Deterministic hash split (used when no split file is given): sha256 of "<seed>:<key>" taken mod
100 -> 0..79 train, 80..89 val, 90..99 test. The key is the record's path relative to the source
(or its track name for track formats, so all frames of a track land in one split).
"""
from __future__ import annotations

import hashlib
import os
import math
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Iterator

import numpy as np
from PIL import Image

from lpasrn.data.degrade import prepare_hr
from lpasrn.data.records import PlateRecord, RejectedRecord
from lpasrn.errors import LpasrnError
from lpasrn.plates import LR_SIZE, InvalidTextError, normalize_text, pad_to_aspect, validate_text

ImportItem = tuple[str, PlateRecord | RejectedRecord]
UNKNOWN_SPLIT = ""  # the split of a rejected record whose split could not be read
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
PHASE_TO_SPLIT = {"training": "train", "train": "train", "validation": "val", "val": "val",
                  "valid": "val", "testing": "test", "test": "test"}
# Relative difference allowed between the HR and LR crop aspect ratios of one pair.
PAIR_ASPECT_TOLERANCE = 0.25


class RecordProblem(Exception):
    """Why one record cannot be imported; becomes a RejectedRecord, never stops the import."""


def record_or_reject(path: Path | str, make: Callable[[], PlateRecord]) -> PlateRecord | RejectedRecord:
    """Run `make`; a RecordProblem (or a PlateRecord check) becomes RejectedRecord(path, reason)."""
    try:
        return make()
    except (RecordProblem, InvalidTextError) as problem:
        return RejectedRecord(str(path), str(problem))


def require_nonempty(items: Iterable[ImportItem], src: Path, expected: str) -> Iterator[ImportItem]:
    """Pass items through; an importer that finds nothing at all raises one clear error."""
    found = False
    for item in items:
        found = True
        yield item
    if not found:
        raise LpasrnError(f"{src}: no records found (expected {expected})")


def require_path(src: Path | str, kind: str = "dir") -> Path:
    src = Path(src)
    if not src.exists():
        raise LpasrnError(f"{src}: no such file or directory")
    if kind == "dir" and not src.is_dir():
        raise LpasrnError(f"{src}: expected a directory")
    if kind == "file" and not src.is_file():
        raise LpasrnError(f"{src}: expected a file")
    return src


# ---------------------------------------------------------------- images and text

def open_image(path: Path) -> Image.Image:
    """Fully decode an image as RGB; a missing, truncated or non-image file is a RecordProblem."""
    if not path.is_file():
        raise RecordProblem(f"image file not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()  # decode now: a truncated file fails here, not later in the writer
            return img.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise RecordProblem(f"unreadable or truncated image {path.name}: {err}") from err


def plate_text(raw: str | None, where: str) -> str:
    """Normalised, validated plate text; `where` names the file or field it came from."""
    if raw is None:
        raise RecordProblem(f"missing plate text ({where})")
    text = normalize_text(raw)
    try:
        return validate_text(text)
    except InvalidTextError as err:
        raise RecordProblem(f"invalid plate text in {where}: {err}") from err


def read_key_values(path: Path) -> dict[str, str]:
    """`key: value` lines of an annotation .txt (keys lower-cased); missing file -> RecordProblem."""
    if not path.is_file():
        raise RecordProblem(f"annotation file not found: {path}")
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as err:
        raise RecordProblem(f"unreadable annotation file {path}: {err}") from err
    values = {}
    for line in lines:
        key, sep, value = line.partition(":")
        if sep:
            values[key.strip().lower()] = value.strip()
    return values


# ---------------------------------------------------------------- geometry

def parse_corner_string(raw: str) -> list[tuple[float, float]]:
    """'x1,y1 x2,y2 x3,y3 x4,y4' (RodoSol) -> four points."""
    try:
        points = [tuple(float(v) for v in pair.split(",")) for pair in raw.split()]
    except ValueError as err:
        raise RecordProblem(f"corners {raw!r} are not numbers") from err
    return check_corners(points)


def check_corners(points) -> list[tuple[float, float]]:
    """Four finite (x, y) points enclosing a non-degenerate quadrilateral."""
    try:
        points = [(float(p[0]), float(p[1])) for p in points if len(p) == 2]
    except (TypeError, ValueError, IndexError) as err:
        raise RecordProblem(f"corners {points!r} are not (x, y) numbers") from err
    if len(points) != 4 or not all(math.isfinite(v) for p in points for v in p):
        raise RecordProblem(f"expected 4 corner points (x, y), got {points!r}")
    xs, ys = zip(*points)
    if max(xs) - min(xs) < 2 or max(ys) - min(ys) < 2:
        raise RecordProblem(f"corners {points!r} enclose no plate (degenerate quadrilateral)")
    return points


def order_corners(points: list[tuple[float, float]]) -> np.ndarray:
    """Top-left, top-right, bottom-right, bottom-left, whatever order the annotation used.

    Sorted by angle around the centroid (image y points down), then rotated so the corner with
    the smallest x + y comes first: robust for the modest rotations plates have in traffic images.
    """
    pts = np.asarray(points, dtype=np.float64)
    centre = pts.mean(axis=0)
    angles = np.arctan2(pts[:, 1] - centre[1], pts[:, 0] - centre[0])
    pts = pts[np.argsort(angles)]  # clockwise on screen, starting anywhere
    start = int(np.argmin(pts.sum(axis=1)))
    return np.roll(pts, -start, axis=0)


def perspective_coefficients(src_corners: np.ndarray, width: int, height: int) -> tuple[float, ...]:
    """PIL PERSPECTIVE data mapping the output rectangle (0,0)-(width,height) onto `src_corners`.

    PIL maps each output pixel (x, y) to the input point ((a x + b y + c) / (g x + h y + 1),
    (d x + e y + f) / (g x + h y + 1)); two linear equations per corner give the 8 unknowns.
    """
    dst = [(0.0, 0.0), (width, 0.0), (width, height), (0.0, height)]
    rows, rhs = [], []
    for (x, y), (u, v) in zip(dst, src_corners):
        rows.append([x, y, 1, 0, 0, 0, -x * u, -y * u])
        rows.append([0, 0, 0, x, y, 1, -x * v, -y * v])
        rhs.extend([u, v])
    try:
        coefficients = np.linalg.solve(np.asarray(rows), np.asarray(rhs))
    except np.linalg.LinAlgError as err:
        raise RecordProblem("corners do not define a perspective (three are collinear)") from err
    return tuple(float(c) for c in coefficients)


def rectify(img: Image.Image, corners) -> Image.Image:
    """The plate quadrilateral warped to an upright rectangle as large as its longer edges."""
    tl, tr, br, bl = pts = order_corners(check_corners(corners))
    width = max(np.linalg.norm(tr - tl), np.linalg.norm(br - bl))
    height = max(np.linalg.norm(bl - tl), np.linalg.norm(br - tr))
    width, height = max(1, int(round(width))), max(1, int(round(height)))
    coefficients = perspective_coefficients(pts, width, height)
    return img.transform((width, height), Image.Transform.PERSPECTIVE, coefficients,
                         resample=Image.Resampling.BICUBIC)


def fit_crop(crop: Image.Image, size_hw: tuple[int, int]) -> Image.Image:
    """Pad to aspect 3 (+-0.15) with gray 127, then bicubic resize to (height, width)."""
    padded = pad_to_aspect(crop.convert("RGB"))
    return padded.resize((size_hw[1], size_hw[0]), Image.Resampling.BICUBIC)


def make_hr(crop: Image.Image) -> Image.Image:
    """HR sample from a crop by the same function the synthetic data uses (pad, bicubic 32x96)."""
    return prepare_hr(crop)


def make_lr(crop: Image.Image) -> Image.Image:
    return fit_crop(crop, LR_SIZE)


def check_pair(hr: Image.Image, lr: Image.Image, min_scale: float, max_scale: float | None) -> None:
    """HR and LR crops show the same plate: similar aspect, HR min_scale..max_scale times larger."""
    (hw, hh), (lw, lh) = hr.size, lr.size
    hr_aspect, lr_aspect = hw / hh, lw / lh
    if abs(hr_aspect - lr_aspect) > PAIR_ASPECT_TOLERANCE * max(hr_aspect, lr_aspect):
        raise RecordProblem(f"LR/HR aspect mismatch: HR {hw}x{hh} (aspect {hr_aspect:.2f}) vs "
                            f"LR {lw}x{lh} (aspect {lr_aspect:.2f})")
    scale = math.sqrt((hw * hh) / (lw * lh))
    if scale < min_scale or (max_scale is not None and scale > max_scale):
        wanted = f"{min_scale:g}..{max_scale:g}" if max_scale is not None else f">= {min_scale:g}"
        raise RecordProblem(f"LR/HR size mismatch: HR {hw}x{hh} is {scale:.2f}x LR {lw}x{lh}, "
                            f"expected {wanted}x")


# ---------------------------------------------------------------- splits and seeds

def _digest(key: str, seed: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big")


def hash_split(key: str, seed: int = 0) -> str:
    """Deterministic 80/10/10 train/val/test split of a record (or track) key."""
    bucket = _digest(key, seed) % 100
    return "train" if bucket < 80 else "val" if bucket < 90 else "test"


def stable_seed(key: str, seed: int = 0) -> int:
    """A per-record seed derived from its path, so re-imports give the same LR bytes."""
    return _digest(key, seed) % (2**31)


def phase_to_split(phase: str) -> str:
    split = PHASE_TO_SPLIT.get(phase.strip().lower())
    if split is None:
        raise RecordProblem(f"unknown phase {phase!r} (expected training, validation or testing)")
    return split


def read_split_lines(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of a `a;b;...;phase` split file; blank and '#' lines are skipped."""
    path = require_path(path, "file")
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        yield number, [part.strip() for part in line.split(";")]



def entry_path(entry: str) -> str:
    """A split-file path as a key: './a/b/' and 'a\\b' -> 'a/b' (split files write './' paths)."""
    return PurePosixPath(entry.strip().replace("\\", "/")).as_posix().removeprefix("./")


def read_split_entries(split_file: Path, widths: tuple[int, ...] = (2,)) -> Iterator[tuple[str, str, str] | RejectedRecord]:
    """(where, entry, split) for every line of a split file, or a RejectedRecord for a bad line.

    The entry is the second-to-last field and the phase the last, so `NAME;phase` and UFPR's
    `TEXT;./<res>/<layout>/plate-N;phase` are read by the same rule (`widths`: field counts allowed).
    """
    expected = " or ".join(("NAME;phase", "TEXT;PATH;phase")[:len(widths)])
    for number, fields in read_split_lines(split_file):
        where = f"{split_file}:{number}"
        if len(fields) not in widths:
            yield RejectedRecord(where, f"expected {expected}, got {';'.join(fields)!r}")
            continue
        try:
            yield where, fields[-2], phase_to_split(fields[-1])
        except RecordProblem as problem:
            yield RejectedRecord(where, str(problem))


def split_assignments(candidates: dict[str, Path], split_file: Path | None, seed: int,
                      entry_key: Callable[[str], str], hash_key: Callable[[str], str] | None = None,
                      widths: tuple[int, ...] = (2,)) -> Iterator[tuple[str, Path | RejectedRecord]]:
    """(split, path) for every candidate, from a split file or the hash split.

    Without a split file each candidate gets `hash_split(hash_key(key))` (default: its own key; track
    formats pass the plate text so a plate seen in several tracks never lands in two splits).
    With one, an entry naming no candidate and a candidate the file does not list are both
    rejected (so nothing is dropped silently); `entry_key` maps an entry to a candidate key.
    """
    if split_file is None:
        for key, path in candidates.items():
            yield hash_split(hash_key(key) if hash_key else key, seed), path
        return
    listed: dict[str, str] = {}
    for entry in read_split_entries(split_file, widths):
        if isinstance(entry, RejectedRecord):
            yield UNKNOWN_SPLIT, entry
            continue
        _where, name, split = entry
        key = entry_key(name)
        if key is None:  # the entry lies outside the folder being imported (another part of the dataset)
            continue
        if key not in candidates:
            yield split, RejectedRecord(str(split_file.parent / name),
                                        f"file named in split file {split_file.name} does not exist")
            continue
        listed[key] = split
    for key, path in candidates.items():
        if key in listed:
            yield listed[key], path
        else:
            yield UNKNOWN_SPLIT, RejectedRecord(str(path), f"not listed in split file {split_file}")


def default_split_file(src: Path, pattern: str = "split*.txt") -> Path | None:
    """The dataset's own split file at its root (one file matching `pattern`), else None.

    Several candidates are an error naming them: guessing would silently change the benchmark.
    """
    found = sorted(p for p in src.glob(pattern) if p.is_file())
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise LpasrnError(f"{src}: several split files ({names}); choose one with --split-file")
    if found:
        print(f"using the dataset's split file {found[0]} (pass --split-file to use another)")
    return found[0] if found else None


def names_by_track_name(candidates: dict[str, Path], src: Path,
                        split_file: Path | None) -> Callable[[str], str | None]:
    """entry -> candidate key: the entry as a path relative to SRC, a bare track name when exactly
    one track has it, else the entry read relative to the split file's folder (the dataset root, where the
    releases keep it). None for a path outside SRC: importing one sub-folder of a dataset with the
    dataset's split file leaves the other sub-folders' entries out instead of rejecting them."""
    by_name: dict[str, list[str]] = {}
    for key in candidates:
        by_name.setdefault(key.rsplit("/", 1)[-1], []).append(key)
    root, base = src.resolve(), (split_file.parent if split_file else src).resolve()

    def entry_key(entry: str) -> str | None:
        key = entry_path(entry)
        if key in candidates:
            return key
        if "/" not in key and len(by_name.get(key, [])) == 1:
            return by_name[key][0]
        listed = PurePosixPath(os.path.relpath(base / key, root)).as_posix()
        return None if listed.startswith("../") else listed

    return entry_key
