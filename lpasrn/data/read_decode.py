"""The one sample decoder both readers use, the batch collator, and the corrupt-sample record.

Only png/jpg (PIL, restricted to those formats), json and txt members are decoded; anything else
is refused, so nothing read from a shard is ever unpickled or torch.load-ed.
"""
from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from lpasrn.errors import LpasrnError
from lpasrn.plates import HR_SIZE, LR_SIZE

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG"}
STRING_FIELDS = ("key", "text", "layout", "source", "track")


class CorruptSampleError(LpasrnError):
    """A sample whose members are missing or cannot be decoded; names the shard and the key."""

    def __init__(self, shard: str = "?", key: str = "?", reason: str = "", *, message: str | None = None):
        self.shard, self.key, self.reason = shard, key, reason
        # `message=` lets DataLoader re-raise this type from a worker (torch's ExceptionWrapper).
        super().__init__(message or f"corrupt sample {key} in shard {shard}: {reason}")

    def __reduce__(self):
        return (_rebuild_corrupt, (self.shard, self.key, self.reason, str(self)))


def _rebuild_corrupt(shard, key, reason, message):
    return CorruptSampleError(shard, key, reason, message=message)


def _decode_image(data: bytes, fmt: str, size_hw: tuple[int, int]) -> torch.Tensor:
    with Image.open(io.BytesIO(data), formats=[fmt]) as img:
        img.load()  # decode now, so a truncated stream fails here
        if img.size != (size_hw[1], size_hw[0]):
            raise ValueError(f"image is {img.size[0]}x{img.size[1]}, expected {size_hw[1]}x{size_hw[0]}")
        if img.mode != "RGB":
            img = img.convert("RGB")
        array = np.array(img)  # [H, W, 3] uint8; a writable copy, as torch.from_numpy wants
    # One vectorised conversion; permute is a view, the division makes the contiguous float copy.
    return torch.from_numpy(array).permute(2, 0, 1).float().div_(255.0).contiguous()


def _find_member(members: dict, stem: str) -> tuple[str, bytes] | None:
    for name, data in members.items():
        if name.startswith(stem + ".") or name == stem:
            return name, data
    return None


def decode_sample(members: dict[str, bytes], shard: str, key: str) -> dict:
    """Decode one sample's members (`hr.png`, `lr.png`, `json`; jpg allowed) into the sample dict.

    Raises CorruptSampleError (with shard and key) on a missing, undecodable or unsupported member.
    """
    for name in members:
        ext = name.rsplit(".", 1)[-1].lower()
        if ext not in IMAGE_EXTENSIONS and ext not in ("json", "txt"):
            raise CorruptSampleError(shard, key, f"member {name!r} has an unsupported type (refused, "
                                                 "only png/jpg/json/txt are decoded)")
    sample = {"key": key}
    try:
        for stem, size_hw in (("hr", HR_SIZE), ("lr", LR_SIZE)):
            found = _find_member(members, stem)
            if found is None:
                raise CorruptSampleError(shard, key, f"missing member {stem}.png")
            name, data = found
            ext = name.rsplit(".", 1)[-1].lower()
            sample[stem] = _decode_image(data, IMAGE_EXTENSIONS[ext], size_hw)
        if "json" not in members:
            raise CorruptSampleError(shard, key, "missing member json")
        meta = json.loads(members["json"].decode("utf-8"))
        sid = meta.get("sid") if isinstance(meta, dict) else None
        if not isinstance(sid, int) or isinstance(sid, bool):
            raise ValueError("json lacks an integer 'sid'")
        for name in ("text", "layout", "source"):
            if not isinstance(meta.get(name), str):
                raise ValueError(f"json field {name!r} is not a string")
        if meta.get("track") is not None and not isinstance(meta["track"], str):
            raise ValueError("json field 'track' is neither a string nor null")
        _check_degradation(meta.get("degradation"))
    except CorruptSampleError:
        raise
    except Exception as err:  # PIL, zlib, json, unicode: all mean the bytes are bad
        raise CorruptSampleError(shard, key, f"{type(err).__name__}: {err}") from None
    sample.update(sid=meta["sid"], text=meta["text"], layout=meta["layout"],
                  source=meta["source"], track=meta.get("track"), degradation=meta.get("degradation"))
    return sample


def _check_degradation(value) -> None:
    """Optional `degradation`: {parameter: number} recorded by the synthetic renderer."""
    if value is None:
        return
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) for k, v in value.items()):
        raise ValueError("json field 'degradation' is not a mapping of parameter names to numbers")


def collate(samples: list[dict], corrupt: list[str] | None = None) -> dict:
    """Stack sample dicts into a batch; `corrupt` lists the "shard:key: reason" met since the last batch."""
    if samples:
        hr = torch.stack([s["hr"] for s in samples])
        lr = torch.stack([s["lr"] for s in samples])
    else:  # only possible when every sample a worker met was corrupt; the batch still carries the report
        hr = torch.empty((0, 3) + HR_SIZE)
        lr = torch.empty((0, 3) + LR_SIZE)
    batch = {"sid": torch.tensor([s["sid"] for s in samples], dtype=torch.long), "hr": hr, "lr": lr}
    for name in STRING_FIELDS:
        batch[name] = [s[name] for s in samples]
    batch["degradation"] = [s.get("degradation") for s in samples]
    batch["corrupt"] = list(corrupt or [])
    return batch


@dataclass
class ReadErrors:
    """Corrupt samples a reader met: count and "shard:key: reason" entries, each logged once."""

    count: int = 0
    items: list[str] = field(default_factory=list)

    def record(self, entries: list[str]) -> None:
        for entry in entries:
            self.count += 1
            self.items.append(entry)
            log.warning("corrupt sample skipped and counted: %s", entry)

    def reset(self) -> None:
        self.count = 0
        self.items = []


def corrupt_entry(err: CorruptSampleError) -> str:
    return f"{err.shard}:{err.key}: {err.reason}"
