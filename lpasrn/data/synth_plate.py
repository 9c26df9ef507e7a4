"""Flat plate faces: Brazilian grey plates and Mercosur plates, drawn as a real plate would be laid out.

Geometry is in millimetres on the 400 x 130 mm Brazilian car plate and scaled by PX_PER_MM. Glyphs come
from the pip-installed Roboto Condensed variable font (bold weights) so a fresh machine has them; each
glyph is rendered once, cropped to its ink, scaled to the plate's character height and cached, so a
plate costs a handful of pastes instead of font rasterisation.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from lpasrn.plates import LAYOUTS

PX_PER_MM = 0.5
PLATE_MM = (400, 130)
PLATE_WH = (round(PLATE_MM[0] * PX_PER_MM), round(PLATE_MM[1] * PX_PER_MM))
GLYPH_WEIGHTS = (700, 800)

# Top strip of the grey plates: state and city, as painted on pre-2018 Brazilian plates.
CITY_STRIPS = (
    "SP-SAO PAULO", "RJ-RIO DE JANEIRO", "MG-BELO HORIZONTE", "PR-CURITIBA", "RS-PORTO ALEGRE",
    "SC-FLORIANOPOLIS", "BA-SALVADOR", "PE-RECIFE", "CE-FORTALEZA", "GO-GOIANIA", "DF-BRASILIA",
    "AM-MANAUS", "PA-BELEM", "ES-VITORIA", "SP-CAMPINAS", "MG-UBERLANDIA", "SC-JOINVILLE",
    "PR-LONDRINA", "ES-VILA VELHA", "SP-SANTOS", "RJ-NITEROI", "MT-CUIABA", "MS-CAMPO GRANDE",
)

# Per layout: character cap height, left edge of the first cell, cell width, vertical centre (mm).
_TEXT_GEOMETRY = {
    "brazilian": {"cap": 63.0, "left": 18.0, "cell": 48.0, "dash": 28.0, "centre_y": 80.0},
    "mercosur": {"cap": 64.0, "left": 28.0, "cell": 50.0, "dash": 0.0, "centre_y": 82.0},
}
_BAND_MM = 30.0  # Mercosur blue band height


def _mm(value: float) -> int:
    return int(round(value * PX_PER_MM))


@lru_cache(maxsize=None)
def _font(size: int, weight: int) -> ImageFont.FreeTypeFont:
    from fontpkg_roboto_condensed import ROOT
    font = ImageFont.truetype(str(ROOT / "files" / "RobotoCondensed[wght].ttf"), size)
    font.set_variation_by_axes([weight])
    return font


@lru_cache(maxsize=None)
def glyph_mask(text: str, weight: int, cap_px: int, max_width_px: int = 10_000) -> Image.Image:
    """An 'L' mask of `text` cropped to its ink, scaled so letters are cap_px high (cached)."""
    # Render large (cap height of Roboto is ~0.71 em), then scale: crisper than tiny hinted glyphs.
    size = max(12, int(cap_px * 4 / 0.71))
    font = _font(size, weight)
    left, top, right, bottom = font.getbbox(text, anchor="ls")
    canvas = Image.new("L", (right - left + 4, bottom - top + 4), 0)
    ImageDraw.Draw(canvas).text((2 - left, 2 - top), text, font=font, fill=255, anchor="ls")
    ink = canvas.crop(canvas.getbbox())
    # Height of the ink: cap height for letters/digits; the dash is placed by the caller.
    scale = cap_px / ink.height if text.isalnum() else cap_px / (font.getbbox("H", anchor="ls")[3]
                                                                 - font.getbbox("H", anchor="ls")[1])
    width = max(1, min(max_width_px, int(round(ink.width * scale))))
    return ink.resize((width, max(1, int(round(ink.height * scale)))), Image.LANCZOS)


def _jitter_colour(rng: np.random.Generator, base: tuple, spread: float) -> tuple:
    shift = rng.uniform(-spread, spread)  # common brightness change
    tint = rng.uniform(-spread / 8, spread / 8, size=3)
    return tuple(int(np.clip(c + shift + t, 0, 255)) for c, t in zip(base, tint))


def _draw_characters(plate: Image.Image, text: str, layout: str, ink: tuple, background: tuple,
                     rng: np.random.Generator) -> None:
    geo = _TEXT_GEOMETRY[layout]
    weight = GLYPH_WEIGHTS[int(rng.integers(len(GLYPH_WEIGHTS)))]
    cap, cell = _mm(geo["cap"]), _mm(geo["cell"])
    top = _mm(geo["centre_y"] - geo["cap"] / 2)
    x = _mm(geo["left"])
    # Raised (embossed) characters: a faint darker copy offset down-right reads as relief.
    relief = tuple(max(0, c - 25) for c in background)
    for index, char in enumerate(text):
        if layout == "brazilian" and index == 3:
            dash = glyph_mask("-", weight, cap)
            dash_w = _mm(geo["dash"])
            plate.paste(ink, (x + (dash_w - dash.width) // 2, top + (cap - dash.height) // 2), dash)
            x += dash_w
        mask = glyph_mask(char, weight, cap, max_width_px=cell - 2)
        offset = (x + (cell - mask.width) // 2 + int(rng.integers(-1, 2)), top + int(rng.integers(-1, 2)))
        plate.paste(relief, (offset[0] + 1, offset[1] + 1), mask)
        plate.paste(ink, offset, mask)
        x += cell


def _draw_screw(draw: ImageDraw.ImageDraw, centre: tuple, rng: np.random.Generator) -> None:
    radius = _mm(4.5)
    shade = int(rng.integers(60, 140))
    x, y = centre
    draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=(shade, shade, shade),
                 outline=(shade // 2,) * 3)


def _brazilian_face(text: str, rng: np.random.Generator) -> Image.Image:
    background = _jitter_colour(rng, (178, 178, 176), 28)
    ink = _jitter_colour(rng, (32, 32, 34), 18)
    plate = Image.new("RGB", PLATE_WH, background)
    draw = ImageDraw.Draw(plate)
    draw.rectangle((1, 1, PLATE_WH[0] - 2, PLATE_WH[1] - 2), outline=ink, width=_mm(4))
    city = CITY_STRIPS[int(rng.integers(len(CITY_STRIPS)))]
    strip = glyph_mask(city, 600, _mm(12), max_width_px=_mm(250))
    plate.paste(ink, ((PLATE_WH[0] - strip.width) // 2, _mm(17) - strip.height // 2), strip)
    for screw_x in (45, 355):
        _draw_screw(draw, (_mm(screw_x), _mm(17)), rng)
    _draw_characters(plate, text, "brazilian", ink, background, rng)
    return plate


@lru_cache(maxsize=None)
def _mercosur_band_marks() -> tuple[Image.Image, Image.Image]:
    """(BRASIL lettering mask, flag image) for the Mercosur band; drawn once."""
    lettering = glyph_mask("BRASIL", 500, _mm(13))
    flag_w, flag_h = _mm(30), _mm(20)
    flag = Image.new("RGB", (flag_w, flag_h), (0, 146, 63))
    draw = ImageDraw.Draw(flag)
    draw.polygon([(flag_w / 2, 1), (flag_w - 2, flag_h / 2), (flag_w / 2, flag_h - 2), (1, flag_h / 2)],
                 fill=(254, 223, 0))
    r = flag_h * 0.27
    draw.ellipse((flag_w / 2 - r, flag_h / 2 - r, flag_w / 2 + r, flag_h / 2 + r), fill=(0, 39, 118))
    return lettering, flag


def _draw_mercosur_logo(draw: ImageDraw.ImageDraw, left: int, centre_y: int) -> None:
    # The Mercosur emblem is a white arc over four stars; at plate scale an arc and dots suffice.
    r = _mm(9)
    draw.arc((left, centre_y - r, left + 2 * r, centre_y + r), 200, 340, fill=(255, 255, 255), width=2)
    for dx, dy in ((0.7, 0.1), (1.0, 0.45), (1.3, 0.2), (1.05, -0.1)):
        x, y = left + dx * r, centre_y + dy * r
        draw.point([(x, y), (x + 1, y)], fill=(255, 255, 255))


@lru_cache(maxsize=None)
def _qr_pattern() -> Image.Image:
    """A fixed QR-like block pattern, as printed on the left edge of Mercosur plates."""
    cells = np.random.default_rng(2018).integers(0, 2, size=(9, 9)).astype(np.uint8) * 255
    for r, c in ((0, 0), (0, 6), (6, 0)):  # finder squares
        cells[r:r + 3, c:c + 3] = 0
    return Image.fromarray(255 - cells, "L").resize((_mm(13), _mm(13)), Image.NEAREST)


def _mercosur_face(text: str, rng: np.random.Generator) -> Image.Image:
    background = _jitter_colour(rng, (236, 236, 234), 16)
    ink = _jitter_colour(rng, (18, 18, 20), 14)
    blue = _jitter_colour(rng, (12, 52, 150), 20)
    plate = Image.new("RGB", PLATE_WH, background)
    draw = ImageDraw.Draw(plate)
    band_h = _mm(_BAND_MM)
    draw.rectangle((0, 0, PLATE_WH[0] - 1, band_h), fill=blue)
    lettering, flag = _mercosur_band_marks()
    plate.paste((250, 250, 250), ((PLATE_WH[0] - lettering.width) // 2, (band_h - lettering.height) // 2),
                lettering)
    plate.paste(flag, (PLATE_WH[0] - _mm(12) - flag.width, (band_h - flag.height) // 2))
    _draw_mercosur_logo(draw, _mm(10), band_h // 2)
    plate.paste(ink, (_mm(7), _mm(44)), _qr_pattern())
    br = glyph_mask("BR", 700, _mm(8))
    plate.paste(ink, (_mm(13.5) - br.width // 2, _mm(64)), br)
    draw.rectangle((0, 0, PLATE_WH[0] - 1, PLATE_WH[1] - 1), outline=(40, 40, 40), width=1)
    _draw_characters(plate, text, "mercosur", ink, background, rng)
    return plate


def render_plate_face(text: str, layout: str, rng: np.random.Generator) -> Image.Image:
    """The flat plate (RGB, PLATE_WH) for a Brazilian or Mercosur text, before any scene effect."""
    if layout not in LAYOUTS:
        raise ValueError(f"cannot draw layout {layout!r}; drawable layouts: {', '.join(LAYOUTS)}")
    if len(text) != len(LAYOUTS[layout]):
        raise ValueError(f"a {layout} plate holds {len(LAYOUTS[layout])} characters, got {text!r}")
    return _brazilian_face(text, rng) if layout == "brazilian" else _mercosur_face(text, rng)
