"""Fonts for captions and labels: Roboto Mono from its pip package (a project dependency, so a fresh
machine without system fonts has it), PIL's bundled font if it is somehow missing."""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

from PIL import ImageFont


@functools.lru_cache(maxsize=16)
def mono_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    spec = importlib.util.find_spec("fontpkg_roboto_mono")
    if spec is not None and spec.origin is not None:
        path = Path(spec.origin).parent / "files" / "RobotoMono[wght].ttf"
        if path.is_file():
            return ImageFont.truetype(str(path), size)
    return ImageFont.load_default(size)
