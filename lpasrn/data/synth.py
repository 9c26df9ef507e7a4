"""Synthetic Brazilian and Mercosur plates in a scene: the default dataset, so training needs no download.

A sample is a pure function of (seed, split, index): its generator is seeded by
SeedSequence([seed, split code, index]), so record i is the same whether 10 or 10 million are made,
and any slice can be regenerated on its own.

Per sample: text drawn from the layout pattern -> flat plate face (synth_plate) with dirt and
specks -> pasted on a car-body/bumper background -> one perspective warp that also rotates, tilts and
crops with small random margins -> lighting gradient, shadow, colour cast, noise -> prepare_hr ->
HR 32x96 -> degrade(hr, name, seed) -> LR 16x48.
"""
from __future__ import annotations

import zlib
from typing import Iterator

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from lpasrn.data.degrade import HR_WH, degradation_params, degrade_recorded, prepare_hr
from lpasrn.data.records import PlateRecord
from lpasrn.data.synth_plate import PLATE_WH, render_plate_face
from lpasrn.plates import CHARSET, LAYOUTS

# Bumped whenever a change alters the pixels produced for a given (seed, split, index).
RENDERER_VERSION = 1
SOURCE = "synthetic"
_DIGITS, _LETTERS = CHARSET[:10], CHARSET[10:]

# Car body colours (white, silver, greys, black, red, blue, green, beige) and plate holders.
_BODY_COLOURS = np.array([(225, 225, 222), (180, 182, 185), (120, 122, 125), (35, 35, 38),
                          (150, 25, 25), (30, 50, 110), (40, 70, 50), (200, 185, 150)], dtype=np.float32)
_SCENE_MARGIN = 0.3  # background around the plate in the source, as a fraction of plate height


def split_code(split: str) -> int:
    """Stable integer for a split name (crc32), one of the three words seeding every sample."""
    return zlib.crc32(split.encode("utf-8"))


def sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, split_code(split), index]))


def random_text(layout: str, rng: np.random.Generator) -> str:
    """Text drawn uniformly from the layout's L/N pattern (letters A-Z, digits 0-9)."""
    return "".join(_LETTERS[rng.integers(26)] if kind == "L" else _DIGITS[rng.integers(10)]
                   for kind in LAYOUTS[layout])


def _add_dirt(plate: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Smudges (a smooth random alpha field) and specks (small dark dots) on the plate face."""
    width, height = plate.size
    strength = rng.uniform(0.0, 0.45) if rng.random() < 0.6 else 0.0
    if strength > 0:
        field = rng.random((4, 10)) ** 2 * (255 * strength)
        alpha = Image.fromarray(field.astype(np.uint8), "L").resize(plate.size, Image.BICUBIC)
        dirt = tuple(int(c) for c in rng.integers(60, 120, size=3))
        plate = Image.composite(Image.new("RGB", plate.size, dirt), plate, alpha)
    draw = ImageDraw.Draw(plate)
    background = plate.getpixel((width // 2, height - 6))  # below the characters, inside the rim
    for _ in range(int(rng.poisson(3))):
        # Specks are mud and chipped paint: small and only somewhat darker than the plate, so they do
        # not read as an extra character or a separator.
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        r = rng.uniform(0.3, 0.9)
        darken = rng.uniform(0.45, 0.8)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(c * darken) for c in background))
    return plate


def _scene(plate: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, tuple, tuple]:
    """The plate on a car-body background. Returns (scene, plate top-left in scene, mean bg colour)."""
    margin = int(PLATE_WH[1] * _SCENE_MARGIN)
    width, height = plate.width + 2 * margin, plate.height + 2 * margin
    body = _BODY_COLOURS[rng.integers(len(_BODY_COLOURS))] * rng.uniform(0.6, 1.15)
    # Low-resolution texture upscaled: paint sheen and road grime are smooth, not per-pixel noise.
    small = (height // 8, width // 8)
    ramp = np.linspace(rng.uniform(-30, 10), rng.uniform(-10, 30), small[0], dtype=np.float32)[:, None, None]
    texture = rng.normal(0, rng.uniform(4, 18), size=small + (1,)).astype(np.float32)
    background = np.clip(body + ramp + texture, 0, 255).astype(np.uint8)
    scene = Image.fromarray(background, "RGB").resize((width, height), Image.BILINEAR)
    draw = ImageDraw.Draw(scene)
    if rng.random() < 0.6:  # a dark plate holder / recess around the plate
        pad = int(rng.integers(2, 7))
        shade = int(rng.integers(10, 70))
        draw.rectangle((margin - pad, margin - pad, margin + plate.width + pad, margin + plate.height + pad),
                       fill=(shade, shade, shade))
    scene.paste(plate, (margin, margin))
    return scene, (margin, margin), tuple(int(c) for c in np.clip(body, 0, 255))


def _homography(src: np.ndarray, dst: np.ndarray) -> tuple:
    """PIL PERSPECTIVE coefficients mapping output points `dst` to input points `src` (4x2 each)."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(dst, src):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs += [u, v]
    return tuple(np.linalg.solve(np.array(rows, dtype=np.float64), np.array(rhs, dtype=np.float64)))


def _crop_box(span: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, int]]:
    """Small random margins around a plate whose warped bounding box is `span` (w, h), chosen so the
    crop's aspect stays within 2.92..3.08: prepare_hr then only resizes (no gray padding), as for
    the tight rectified crops of the published datasets. Returns (top-left margin, crop size)."""
    aspect = rng.uniform(2.92, 3.08)
    width = span[0] * (1 + rng.uniform(0.01, 0.08))
    height = width / aspect
    if height < span[1] * 1.03:  # a tall warped plate: keep a little margin above and below
        height = span[1] * (1 + rng.uniform(0.03, 0.12))
        width = height * aspect
    origin = (np.array([width, height]) - span) * rng.uniform(0.3, 0.7, size=2)
    return origin, (int(round(width)), int(round(height)))


def _warped_crop(scene: Image.Image, plate_origin: tuple, fill: tuple, rng: np.random.Generator) -> Image.Image:
    """One perspective transform that tilts, rotates, rescales and crops around the plate."""
    w, h = PLATE_WH
    ox, oy = plate_origin
    src = np.array([(ox, oy), (ox + w, oy), (ox + w, oy + h), (ox, oy + h)], dtype=np.float64)
    centred = np.array([(-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2)])
    yaw, pitch = rng.uniform(-0.1, 0.1), rng.uniform(-0.04, 0.04)
    centred[:, 1] *= 1 + yaw * np.sign(centred[:, 0])        # one side nearer the camera
    centred[:, 0] *= 1 - pitch * np.sign(centred[:, 1])      # top or bottom nearer
    centred += rng.normal(0, 0.01 * h, size=centred.shape)   # lens and mounting irregularity
    angle = np.deg2rad(rng.normal(0, 2.0))
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    # Capture scale: plates 0.55x..1x the face size, so the HR sharpness varies like real crops do.
    dst = centred @ rotation.T * rng.uniform(0.55, 1.0)
    low = dst.min(axis=0)
    margin, size = _crop_box(dst.max(axis=0) - low, rng)
    dst += margin - low
    return scene.transform(size, Image.PERSPECTIVE, _homography(src, dst), Image.BILINEAR, fillcolor=fill)


def _photometric(crop: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Lighting gradient, an occasional cast shadow, colour cast, contrast and sensor noise."""
    img = np.asarray(crop, dtype=np.float32)
    height, width = img.shape[:2]
    xs = (np.arange(width, dtype=np.float32) / width - 0.5)[None, :]
    ys = (np.arange(height, dtype=np.float32) / height - 0.5)[:, None]
    direction = rng.uniform(0, 2 * np.pi)
    light = 1.0 + rng.uniform(0.0, 0.6) * (np.cos(direction) * xs + np.sin(direction) * ys)
    if rng.random() < 0.3:  # cast shadow: a soft-edged half plane, darker on one side
        turn = direction + rng.uniform(-1, 1)
        cut = np.cos(turn) * xs + np.sin(turn) * ys - rng.uniform(-0.3, 0.3)
        edge = 0.5 + 0.5 * np.tanh(cut / rng.uniform(0.02, 0.12))
        light = light * (1 - rng.uniform(0.25, 0.6) * edge)
    gain = (rng.uniform(0.7, 1.15) * rng.uniform(0.95, 1.05, size=3)).astype(np.float32)
    img = img * (light[..., None] * gain) + np.float32(rng.uniform(-15, 15))
    img += np.float32(rng.uniform(0.5, 4.0)) * rng.standard_normal(img.shape, dtype=np.float32)
    return Image.fromarray(np.clip(img + 0.5, 0, 255).astype(np.uint8), "RGB")


def render_plate(text: str, layout: str, rng: np.random.Generator,
                 size: tuple[int, int] | None = HR_WH) -> Image.Image:
    """A plate crop in a scene (RGB, aspect within 3 +- 0.08), the input of prepare_hr.

    `size` (width, height) resizes the crop (bicubic, as prepare_hr would) before the lighting and
    sensor noise, which then cost a fraction of what they would at capture size; None keeps the
    capture size (0.55..1x of the 200 x 65 plate face plus margins).
    """
    face = _add_dirt(render_plate_face(text, layout, rng), rng)
    scene, origin, fill = _scene(face, rng)
    crop = _warped_crop(scene, origin, fill, rng)
    if rng.random() < 0.3:
        crop = crop.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.9)))  # slight defocus
    if size is not None:
        crop = crop.resize(size, Image.BICUBIC)
    return _photometric(crop, rng)


def synth_record(seed: int, split: str, index: int, degradation: str = "paper",
                 mercosur_fraction: float = 0.5, degradation_options: dict | None = None) -> PlateRecord:
    """Sample `index` of `split`: a pure function of its arguments."""
    rng = sample_rng(seed, split, index)
    layout = "mercosur" if rng.random() < mercosur_fraction else "brazilian"
    text = random_text(layout, rng)
    hr = prepare_hr(render_plate(text, layout, rng))
    lr, drawn = degrade_recorded(hr, degradation, int(rng.integers(2**63 - 1)), **(degradation_options or {}))
    return PlateRecord(hr=hr, lr=lr, text=text, source=SOURCE, layout=layout, track=None, degradation=drawn)


def synth_records(count: int, seed: int, split: str, degradation: str = "paper",
                  mercosur_fraction: float = 0.5, degradation_options: dict | None = None,
                  start: int = 0) -> Iterator[PlateRecord]:
    """Records start..start+count-1 of `split` (see synth_record)."""
    degradation_params(degradation, **(degradation_options or {}))  # fail before the first sample
    if not 0.0 <= mercosur_fraction <= 1.0:
        raise ValueError(f"mercosur_fraction must be in [0, 1], got {mercosur_fraction}")
    for index in range(start, start + count):
        yield synth_record(seed, split, index, degradation, mercosur_fraction, degradation_options)


def synth_throughput(n: int, degradation: str = "paper") -> float:
    """Plates per CPU-second (render + degrade) of this process: plates/s on one core.

    CPU time rather than wall time, so a busy shared machine does not make the renderer look slow;
    a few plates are made first so glyph and blur-operator caches are warm, as in a long run.
    """
    import time

    for _ in synth_records(5, seed=0, split="warmup", degradation=degradation):
        pass
    start = time.process_time()
    for _ in synth_records(n, seed=1, split="throughput", degradation=degradation):
        pass
    return n / max(time.process_time() - start, 1e-9)
