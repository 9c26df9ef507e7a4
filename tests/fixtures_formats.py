"""Tiny on-disk sources of every import format, drawn with PIL, for the importer and inspect tests.

Each writer returns the texts it expects to come back, keyed by what identifies the record.
Texts never equal folder names, so a test fails if an importer reads the name instead of the file.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def noise_image(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def scene_with_plate(width: int, height: int, corners, seed: int, colour=(250, 200, 20)) -> Image.Image:
    """Noise background with a solid plate quadrilateral at `corners` (TL, TR, BR, BL)."""
    image = noise_image(width, height, seed)
    ImageDraw.Draw(image).polygon([tuple(p) for p in corners], fill=colour)
    return image


def write_split_source(root: Path) -> dict[str, str]:
    """root/split.txt with 4 pairs (HR 120x40, LR 60x20) over training/validation/testing."""
    images = root / "images"
    images.mkdir(parents=True)
    texts = {"p0": "ABC1234", "p1": "BRA2E19", "p2": "XYZ9876", "p3": "QWE4R56"}
    phases = ["training", "training", "validation", "testing"]
    lines = []
    for index, (name, text) in enumerate(texts.items()):
        noise_image(120, 40, index).save(images / f"{name}_hr.png")
        noise_image(60, 20, 100 + index).save(images / f"{name}_lr.png")
        (images / f"{name}_hr.txt").write_text(f"type: car\nplate: {text}\nlayout: Brazilian\n")
        lines.append(f"images/{name}_hr.png;images/{name}_lr.png;{phases[index]}")
    (root / "split.txt").write_text("\n".join(lines) + "\n")
    return texts


def write_split_scales(root: Path) -> dict[str, str]:
    """root/data/{x1,x3}_{hr,lr}.png + root/splits/split.txt listing them relative to `root` (the
    working directory, as github.com/valfride/lpsr-lacd datasets/image.py opens them). x1: the LR
    stored at the HR's size (what the authors' generator writes); x3: other published pairs."""
    (root / "data").mkdir(parents=True)
    (root / "splits").mkdir()
    sizes = {"x1": (120, 40), "x3": (40, 13)}
    texts = {"x1": "ABC1234", "x3": "BRA2E19"}
    for index, (name, size) in enumerate(sizes.items()):
        noise_image(120, 40, index).save(root / "data" / f"{name}_hr.png")
        noise_image(*size, 10 + index).save(root / "data" / f"{name}_lr.png")
        (root / "data" / f"{name}_hr.txt").write_text(f"type: car\nplate: {texts[name]}\nlayout: Brazilian\n")
    (root / "splits" / "split.txt").write_text(
        "data/x1_hr.png;data/x1_lr.png;training\ndata/x3_hr.png;data/x3_lr.png;testing\n")
    return texts


# RodoSol-ALPR as released (github.com/raysonlaroca/rodosol-alpr-dataset README: cars and motorcycles,
# Brazilian and Mercosur, a .txt per image with type/layout/plate/corners; file names and split lines
# `./images/cars-br/img_004765.jpg;validation` as quoted from the release's split.txt in public loaders).
RODOSOL_PLATES = {
    "images/cars-br/img_000001.jpg": ("car", "ABC1234", [(40, 30), (130, 34), (128, 66), (42, 62)]),
    "images/cars-me/img_010001.jpg": ("car", "DEF4G67", [(30, 20), (120, 20), (120, 50), (30, 50)]),
    "images/cars-me/img_010002.jpg": ("car", "GHI8J90", [(50, 40), (140, 38), (142, 70), (52, 74)]),
    "images/motorcycles-br/img_005001.jpg": ("motorcycle", "MOT1234", [(60, 30), (110, 30), (110, 70), (60, 70)]),
}
RODOSOL_SPLIT = {"images/cars-br/img_000001.jpg": "training", "images/cars-me/img_010001.jpg": "testing",
                 "images/cars-me/img_010002.jpg": "validation", "images/motorcycles-br/img_005001.jpg": "training"}


def write_rodosol_source(root: Path, split_file: bool = True) -> dict[str, str]:
    """root/images/<type>-<layout>/img_N.{jpg,txt} (+ root/split.txt); corners in a scrambled order.
    Returns {relative path: text} of the CARS (the motorcycle is skipped by default)."""
    for index, (rel, (kind, text, corners)) in enumerate(RODOSOL_PLATES.items()):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        scene_with_plate(180, 110, corners, seed=index).save(path, quality=95)
        scrambled = [corners[2], corners[0], corners[3], corners[1]]
        corner_text = " ".join(f"{x},{y}" for x, y in scrambled)
        layout = "Brazilian" if "-br/" in rel else "Mercosur"
        path.with_suffix(".txt").write_text(
            f"type: {kind}\nlayout: {layout}\nplate: {text[:3]}-{text[3:]}\ncorners: {corner_text}\n")
    if split_file:
        (root / "split.txt").write_text("".join(f"./{rel};{phase}\n" for rel, phase in RODOSOL_SPLIT.items()))
    return {rel: text for rel, (kind, text, _) in RODOSOL_PLATES.items() if kind == "car"}


def labelme(points, width: int = 0, height: int = 0) -> dict:
    # LabelMe 5.x as in github.com/valfride/lpsrgan dataset_intelbras_1280X960/mercosur/plate-001348/lr-001.json
    return {"version": "5.3.1", "flags": {}, "shapes": [{"label": "lp", "points": [list(p) for p in points],
            "group_id": None, "description": "", "shape_type": "polygon", "flags": {}}],
            "imagePath": "", "imageData": None, "imageHeight": height, "imageWidth": width}


PLATE = (250, 200, 20)
# Plates placed off-centre so an unrectified frame shows noise where the plate should be.
LR_CORNERS = [(2, 2), (32, 2), (32, 13), (2, 13)]          # in a 49x34 LR frame (published lr-001.json)
HR_CORNERS = [(6, 5), (96, 8), (95, 38), (5, 35)]          # in a 150x100 HR frame


def write_ufpr_track(folder: Path, text: str, number: str, seed: int) -> None:
    """One track as released: lr/hr-001 with LabelMe corners, lr-002 a crop without JSON (as
    plate-002511 in the authors' samples), and the text file `plate-<number>_<TEXT>.txt`."""
    folder.mkdir(parents=True)
    scene_with_plate(49, 34, LR_CORNERS, seed=seed, colour=PLATE).save(folder / "lr-001.png")
    scene_with_plate(150, 100, HR_CORNERS, seed=seed + 1, colour=PLATE).save(folder / "hr-001.png")
    (folder / "lr-001.json").write_text(json.dumps(labelme(LR_CORNERS, 49, 34)))
    (folder / "hr-001.json").write_text(json.dumps(labelme(HR_CORNERS, 150, 100)))
    noise_image(45, 15, seed + 2).save(folder / "lr-002.png")
    scene_with_plate(150, 100, HR_CORNERS, seed=seed + 3, colour=PLATE).save(folder / "hr-002.png")
    (folder / "hr-002.json").write_text(json.dumps(labelme(HR_CORNERS, 150, 100)))
    (folder / f"plate-{number}_{text}.txt").write_text(f"{text}\n")


# (track path, text, text-file number, phase): two resolutions, layouts, the same folder number in
# both (ids are only unique per <res>/<layout>), a text file numbered unlike its folder.
UFPR_TRACKS = [
    ("dataset_intelbras_1280X960/mercosur/plate-001348", "TAN0F36", "001979", "testing"),
    ("dataset_intelbras_1920x1080/brazilian/plate-001348", "AAM6015", "001555", "training"),
]


def write_ufpr_source(root: Path, tracks=UFPR_TRACKS, split_name: str | None = "split_all.txt") -> dict[str, str]:
    """The UFPR-SR-Plates release tree (+ its split file `TEXT;./<res>/<layout>/plate-N;phase`, as
    github.com/valfride/lpsrgan split_all_example.txt). Returns {track path: text}."""
    for index, (track, text, number, _) in enumerate(tracks):
        write_ufpr_track(root / track, text, number, seed=10 * index)
    if split_name:
        (root / split_name).write_text("".join(f"{text};./{track};{phase}\n" for track, text, _, phase in tracks))
    return {track: text for track, text, _, _ in tracks}


LRLPR_TRACKS = {  # track path: (text as annotated, extension)
    "train/Scenario-A/Brazilian/track_00001": ("AVL5215", "png"),
    "train/Scenario-B/Mercosur/track_00001": ("abc1d23", "jpg"),
}
LRLPR_LR_CORNERS = [(20, 10), (38, 10), (38, 16), (20, 16)]  # bottom-right of a 40x24 LR crop


def named(points) -> dict:
    return dict(zip(("top-left", "top-right", "bottom-right", "bottom-left"), [list(p) for p in points]))


def write_lrlpr_source(root: Path, test_tracks: int = 1) -> dict[str, str]:
    """LRLPR-26 as published (train/Scenario-{A,B}/{Brazilian,Mercosur}/track_N/ lr-/hr-00k png or jpg,
    annotations.json {plate_text, plate_layout, corners: {file: {top-left..}}}; test-public LR only).
    The LR's corners differ from the HR's, so rectifying the LR by the HR's corners is caught."""
    for index, (track, (text, ext)) in enumerate(LRLPR_TRACKS.items()):
        folder = root / track
        folder.mkdir(parents=True)
        corners = {}
        for k in (1, 2):
            lr_name, hr_name = f"lr-00{k}.{ext}", f"hr-00{k}.{ext}"
            scene_with_plate(40, 24, LRLPR_LR_CORNERS, seed=index * 10 + k, colour=PLATE).save(folder / lr_name)
            scene_with_plate(150, 100, HR_CORNERS, seed=index * 10 + k + 5, colour=PLATE).save(folder / hr_name)
            corners[lr_name], corners[hr_name] = named(LRLPR_LR_CORNERS), named(HR_CORNERS)
        layout = track.split("/")[2]
        (folder / "annotations.json").write_text(json.dumps(
            {"plate_layout": layout, "plate_text": text, "corners": corners}))
    for t in range(test_tracks):
        folder = root / "test-public" / f"track_{10001 + t}"
        folder.mkdir(parents=True)
        for k in (1, 2):
            noise_image(40, 14, 90 + k).save(folder / f"lr-00{k}.png")
    return {track: text.upper() for track, (text, _) in LRLPR_TRACKS.items()}


def write_folder_source(root: Path, rows: list[tuple[str, str, str]] | None = None) -> dict[str, str]:
    """root/hr/*.png (120x40), root/lr/*.png (60x20), root/labels.csv (filename,text,split)."""
    rows = rows or [("a.png", "ABC1234", "train"), ("b.png", "BCD2345", "val"),
                    ("c.png", "CDE3F45", "test"), ("d.png", "DEF4567", "")]
    (root / "hr").mkdir(parents=True)
    (root / "lr").mkdir()
    for index, (name, _text, _split) in enumerate(rows):
        noise_image(120, 40, index).save(root / "hr" / name)
        noise_image(60, 20, 200 + index).save(root / "lr" / name)
    lines = ["filename,text,split"] + [",".join(row) for row in rows]
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return {name: text for name, text, _ in rows}


def truncate_file(path: Path) -> None:
    """Cut an image file in half: a realistic partial download."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
