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


RODOSOL_PLATES = {
    "img_000001": ("ABC1D23", [(40, 30), (130, 34), (128, 66), (42, 62)]),
    "img_000002": ("DEF4567", [(30, 20), (120, 20), (120, 50), (30, 50)]),
    "img_000003": ("GHI8J90", [(50, 40), (140, 38), (142, 70), (52, 74)]),
}


def write_rodosol_source(root: Path) -> dict[str, str]:
    """root/images/cars/img_00000k.{png,txt}; corners written in a scrambled order."""
    folder = root / "images" / "cars"
    folder.mkdir(parents=True)
    for index, (name, (text, corners)) in enumerate(RODOSOL_PLATES.items()):
        scene_with_plate(180, 110, corners, seed=index).save(folder / f"{name}.png")
        scrambled = [corners[2], corners[0], corners[3], corners[1]]
        corner_text = " ".join(f"{x},{y}" for x, y in scrambled)
        (folder / f"{name}.txt").write_text(
            f"type: car\nplate: {text}\nlayout: Mercosur\ncorners: {corner_text}\n")
    return {f"images/cars/{name}.png": text for name, (text, _) in RODOSOL_PLATES.items()}


def labelme(points) -> dict:
    return {"version": "5.0.1", "shapes": [{"label": "plate", "points": [list(p) for p in points],
                                            "shape_type": "polygon"}], "imageHeight": 0, "imageWidth": 0}


def write_ufpr_source(root: Path) -> dict[str, str]:
    """Two tracks of 2 frames each; frame 1 has LabelMe corners, frame 2 is a pre-cut crop."""
    texts = {"plate-00001": "ABC1234", "plate-00002": "MNO5P67"}
    lr_corners, hr_corners = [(5, 5), (35, 6), (35, 16), (5, 15)], [(10, 10), (100, 12), (100, 42), (10, 40)]
    for index, (track, text) in enumerate(texts.items()):
        folder = root / track
        folder.mkdir(parents=True)
        scene_with_plate(44, 24, lr_corners, seed=index).save(folder / "lr-001.png")
        scene_with_plate(112, 56, hr_corners, seed=10 + index).save(folder / "hr-001.png")
        (folder / "lr-001.json").write_text(json.dumps(labelme(lr_corners)))
        (folder / "hr-001.json").write_text(json.dumps(labelme(hr_corners)))
        noise_image(48, 16, 20 + index).save(folder / "lr-002.png")
        noise_image(150, 50, 30 + index).save(folder / "hr-002.png")
        (folder / "plate.txt").write_text(f"plate: {text}\n" if index == 0 else f"{text}\n")
    return texts


def write_lrlpr_source(root: Path) -> dict[str, str]:
    """Two tracks with annotations.json; the first has corners, the second pre-cut crops."""
    texts = {"track-a": "ABC1D23", "track-b": "RST7890"}
    lr_corners, hr_corners = [[4, 4], [40, 4], [40, 16], [4, 16]], [[8, 8], [104, 8], [104, 40], [8, 40]]
    for index, (track, text) in enumerate(texts.items()):
        folder = root / track
        folder.mkdir(parents=True)
        frames = []
        for k in (1, 2):
            lr_name, hr_name = f"lr-00{k}.png", f"hr-00{k}.png"
            frame = {"lr": lr_name, "hr": hr_name}
            if index == 0:
                scene_with_plate(46, 22, lr_corners, seed=k).save(folder / lr_name)
                scene_with_plate(112, 48, hr_corners, seed=10 + k).save(folder / hr_name)
                frame.update(corners_lr=lr_corners, corners_hr=hr_corners)
            else:
                noise_image(48, 16, 40 + k).save(folder / lr_name)
                noise_image(96, 32, 50 + k).save(folder / hr_name)
            frames.append(frame)
        annotations = {"plate_text": text.lower(), "plate_layout": "Mercosur", "frames": frames}
        if index == 1:
            annotations["split"] = "validation"
        (folder / "annotations.json").write_text(json.dumps(annotations))
    return texts


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
