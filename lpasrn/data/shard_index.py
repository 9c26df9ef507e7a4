"""Compact binary index of a split: sid -> (shard, member offsets, member sizes), memory-mapped.

Why: a JSON list of offsets costs ~39 bytes of text per plate (~390 MB at 10^7) and is parsed whole
by every process that opens the dataset. The index is one `.npy` file per split beside
`manifest.json` (`<split>.index.npy`, 40 bytes a plate, little-endian structured records), opened
with `np.load(mmap_mode="r")`: opening it costs a header read, and a process only pages in the
records it reads. `manifest.json` keeps what a person reads (splits, shards, counts, hashes,
settings) and names each split's index file with its size and sha256.

Indexes are opened once per process: `split_index(data_dir, split)` caches by the manifest's
identity (path, inode, size, mtime), so every reader, validation pass and stage of a run shares one
memory map, and a dataset rewritten in place is reopened.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lpasrn.errors import LpasrnError

# Member columns follow shards.MEMBER_FIELDS: hr, lr, json.
INDEX_DTYPE = np.dtype([("shard", "<u4"), ("offset", "<u8", (3,)), ("size", "<u4", (3,))])
INDEX_SUFFIX = ".index.npy"
_CHUNK = 1 << 20  # records copied at a time when finishing an index (bounded memory at any N)


def index_name(split: str) -> str:
    return f"{split}{INDEX_SUFFIX}"


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (shards and index files alike)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class IndexBuilder:
    """Appends records to `<split>.index.npy.partial` (raw), then `finish()` writes the `.npy`.

    Memory stays flat at any N: records are streamed to disk as they come and copied in chunks.
    """

    def __init__(self, out_dir, split: str):
        self.path = Path(out_dir) / index_name(split)
        self.raw_path = self.path.with_name(self.path.name + ".raw.partial")
        self._raw = open(self.raw_path, "wb")
        self.count = 0

    def append(self, shard: int, offsets, sizes) -> None:
        record = np.zeros(1, INDEX_DTYPE)
        record["shard"], record["offset"], record["size"] = shard, offsets, sizes
        self._raw.write(record.tobytes())
        self.count += 1

    def append_many(self, records: np.ndarray) -> None:
        """Bulk append of INDEX_DTYPE records (simulated splits, converted manifests)."""
        self._raw.write(np.ascontiguousarray(records, INDEX_DTYPE).tobytes())
        self.count += len(records)

    def finish(self) -> dict:
        """Write the `.npy` atomically; return the manifest's `index` entry."""
        self._raw.close()
        partial = self.path.with_name(self.path.name + ".partial")
        out = np.lib.format.open_memmap(partial, mode="w+", dtype=INDEX_DTYPE, shape=(self.count,))
        if self.count:
            raw = np.memmap(self.raw_path, dtype=INDEX_DTYPE, mode="r", shape=(self.count,))
            for start in range(0, self.count, _CHUNK):
                out[start:start + _CHUNK] = raw[start:start + _CHUNK]
            del raw
        out.flush()
        del out
        os.replace(partial, self.path)
        self.raw_path.unlink()
        return {"file": self.path.name, "records": self.count, "size": self.path.stat().st_size,
                "sha256": sha256_of(self.path)}

    def abort(self) -> None:
        self._raw.close()
        self.raw_path.unlink(missing_ok=True)


@dataclass(frozen=True)
class SplitIndex:
    """One split's shard names and its memory-mapped records (read-only)."""

    data_dir: Path
    split: str
    shard_names: tuple[str, ...]
    shard_counts: tuple[int, ...]
    records: np.ndarray  # INDEX_DTYPE [N], memory-mapped

    def __len__(self) -> int:
        return len(self.records)

    def location(self, sid: int) -> tuple[int, np.ndarray, np.ndarray]:
        record = self.records[sid]
        return int(record["shard"]), record["offset"], record["size"]


def records_from_json_members(members: dict) -> np.ndarray:
    """Records of a format-1 manifest (offsets listed in JSON); kept so old datasets still read."""
    records = np.zeros(len(members["shard"]), INDEX_DTYPE)
    records["shard"] = members["shard"]
    for column, field in enumerate(("hr", "lr", "json")):
        records["offset"][:, column] = members[f"{field}_offset"]
        records["size"][:, column] = members[f"{field}_size"]
    return records


def _open_records(data_dir: Path, split: str, entry: dict) -> np.ndarray:
    if "members" in entry:  # format 1
        return records_from_json_members(entry["members"])
    info = entry["index"]
    path = data_dir / info["file"]
    hint = "recreate the dataset (`lpasrn data synth` / `lpasrn data import`)"
    if not path.is_file():
        raise LpasrnError(f"{data_dir}: index {path.name} of split {split!r} is missing; {hint}")
    if path.stat().st_size != info["size"]:
        raise LpasrnError(f"{path}: size {path.stat().st_size} differs from the manifest's {info['size']} "
                          f"(truncated or replaced index); {hint}")
    try:
        records = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as err:
        raise LpasrnError(f"{path}: not a readable index ({err}); {hint}") from None
    if records.dtype != INDEX_DTYPE or records.shape != (entry["num_samples"],):
        raise LpasrnError(f"{path}: holds {records.shape} records of {records.dtype}, the manifest says "
                          f"{entry['num_samples']} of {INDEX_DTYPE}; {hint}")
    return records


_CACHE: dict[tuple, SplitIndex] = {}
LOADS = {"count": 0}  # how many times an index was opened in this process (checked by tests, bench)


def split_index(data_dir, split: str) -> SplitIndex:
    """The split's index, opened once per process per version of the manifest."""
    from lpasrn.data.shards import MANIFEST_NAME, load_manifest, split_entry

    data_dir = Path(data_dir).resolve()
    try:
        st = (data_dir / MANIFEST_NAME).stat()
        key = (str(data_dir), split, st.st_ino, st.st_size, st.st_mtime_ns)
    except OSError:
        key = None  # load_manifest below raises the clear error
    if key is not None and key in _CACHE:
        return _CACHE[key]
    entry = split_entry(load_manifest(data_dir), split, data_dir)
    index = SplitIndex(data_dir, split, tuple(s["name"] for s in entry["shards"]),
                       tuple(s["num_samples"] for s in entry["shards"]),
                       _open_records(data_dir, split, entry))
    LOADS["count"] += 1
    if key is not None:
        for old in [k for k in _CACHE if k[:2] == key[:2]]:
            del _CACHE[old]  # an older version of this dataset: drop its map
        _CACHE[key] = index
    return index
