"""The one place that says what a plate is: charset, layouts, sizes, text rules, aspect padding.

Every other module (renderer, importers, OCR, losses, metrics) takes these definitions from here.
"""
from __future__ import annotations

import re

from PIL import Image

# Charset: 36 symbols; class 0 is the CTC blank, so symbol i has class index i + 1.
CHARSET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
BLANK = 0
NUM_CLASSES = len(CHARSET) + 1  # 37 with the blank
CHAR_TO_CLASS = {c: i + 1 for i, c in enumerate(CHARSET)}
CLASS_TO_CHAR = {i + 1: c for i, c in enumerate(CHARSET)}
DIGIT_CLASSES = tuple(CHAR_TO_CLASS[c] for c in "0123456789")
LETTER_CLASSES = tuple(CHAR_TO_CLASS[c] for c in CHARSET[10:])
MAX_TEXT_LEN = 8  # K in DESIGN.md: text length 1..K

# Layout patterns: L = letter, N = digit.
LAYOUTS = {"brazilian": "LLLNNNN", "mercosur": "LLLNLNN"}
OTHER_LAYOUT = "other"

# Image sizes (height, width) and geometry of the published LP-SR work.
HR_SIZE = (32, 96)
LR_SIZE = (16, 48)
SCALE = 2
ASPECT = 3.0
ASPECT_TOLERANCE = 0.15
PAD_GRAY = 127

_TEXT_RE = re.compile(r"^[0-9A-Z]+$")


class InvalidTextError(ValueError):
    """A plate text that is empty, too long, or uses characters outside 0-9A-Z."""


def normalize_text(raw: str) -> str:
    """Upper-case and drop separators users write on plates ('ABC-1234', 'abc 1d23')."""
    return re.sub(r"[\s\-._·]", "", raw).upper()


def validate_text(text: str, max_len: int = MAX_TEXT_LEN) -> str:
    """Return `text` if it is a valid plate text, else raise InvalidTextError saying why."""
    if not text:
        raise InvalidTextError("empty plate text")
    if not _TEXT_RE.match(text):
        bad = sorted({c for c in text if c not in CHARSET})
        raise InvalidTextError(f"plate text {text!r} has characters outside 0-9A-Z: {''.join(bad)!r}")
    if len(text) > max_len:
        raise InvalidTextError(f"plate text {text!r} is longer than {max_len} characters")
    return text


def pattern_of(text: str) -> str:
    return "".join("N" if c.isdigit() else "L" for c in text)


def detect_layout(text: str) -> str:
    """'brazilian', 'mercosur' or 'other' from the letter/digit pattern of `text`."""
    pattern = pattern_of(text)
    for name, layout_pattern in LAYOUTS.items():
        if pattern == layout_pattern:
            return name
    return OTHER_LAYOUT


def layout_pattern(layout: str) -> str | None:
    """The L/N pattern of a named layout, or None for 'other' (no layout prior)."""
    return LAYOUTS.get(layout)


def encode(text: str) -> list[int]:
    """Class indices (1..36) of a valid text."""
    return [CHAR_TO_CLASS[c] for c in text]


def decode(classes) -> str:
    return "".join(CLASS_TO_CHAR[int(c)] for c in classes if int(c) != BLANK)


def pad_to_aspect(img: Image.Image, aspect: float = ASPECT, tolerance: float = ASPECT_TOLERANCE,
                  fill: int = PAD_GRAY) -> Image.Image:
    """Pad a crop with gray to width/height = aspect (+-tolerance), centred, as the published work does.

    A crop already within tolerance is returned unchanged; a too-narrow crop gets gray columns left
    and right, a too-wide one gray rows above and below.
    """
    img = img.convert("RGB")
    w, h = img.size
    ratio = w / h
    if abs(ratio - aspect) <= tolerance:
        return img
    if ratio < aspect:
        new_w, new_h = int(round(h * aspect)), h
    else:
        new_w, new_h = w, int(round(w / aspect))
    canvas = Image.new("RGB", (new_w, new_h), (fill, fill, fill))
    canvas.paste(img, ((new_w - w) // 2, (new_h - h) // 2))
    return canvas
