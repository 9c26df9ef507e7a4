"""What importers and the synthetic renderer hand to the shard writer."""
from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from lpasrn.plates import HR_SIZE, LR_SIZE, detect_layout, validate_text


@dataclass
class PlateRecord:
    """One plate: HR and LR crops (RGB, exactly HR_SIZE and LR_SIZE) and its text.

    `track` groups frames of the same vehicle (UFPR-SR-Plates, LRLPR-26) so evaluation can fuse them;
    `source` says where the record came from (dataset name and original path or 'synthetic').
    `degradation` is the strength a synthetic LR got ({parameter: number}, degrade_recorded), so
    evaluation can break accuracy down by it; None for real LR.
    """

    hr: Image.Image
    lr: Image.Image
    text: str
    source: str
    layout: str = ""
    track: str | None = None
    degradation: dict | None = None

    def __post_init__(self) -> None:
        validate_text(self.text)
        if not self.layout:
            self.layout = detect_layout(self.text)
        # PIL sizes are (width, height); our sizes are (height, width).
        if self.hr.size != (HR_SIZE[1], HR_SIZE[0]) or self.lr.size != (LR_SIZE[1], LR_SIZE[0]):
            raise ValueError(
                f"{self.source}: HR must be {HR_SIZE[1]}x{HR_SIZE[0]} and LR {LR_SIZE[1]}x{LR_SIZE[0]} "
                f"(width x height), got HR {self.hr.size[0]}x{self.hr.size[1]} and LR {self.lr.size[0]}x{self.lr.size[1]}")
        self.hr = self.hr.convert("RGB")
        self.lr = self.lr.convert("RGB")


@dataclass(frozen=True)
class RejectedRecord:
    """A record an importer could not use: the path and the reason, reported, never dropped silently."""

    path: str
    reason: str
