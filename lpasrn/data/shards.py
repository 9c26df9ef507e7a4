"""Shard writer and manifest: WebDataset tars with deterministic bytes and a pread-able index.

Layout of a dataset directory (DESIGN.md section 2):
    <dir>/<split>-NNNNNN.tar   members <key>.hr.png, <key>.lr.png, <key>.json, key = f"{split}-{sid:08d}"
    <dir>/<split>.index.npy    sid -> shard, member offsets and sizes (memory-mapped; see shard_index.py)
    <dir>/manifest.json        splits, shards (count, sha256, size), index file of each split, settings

The same records and settings always give the same bytes: tar headers are fixed (mtime 0, uid/gid 0,
no user names, mode 0o644, USTAR), PNGs are encoded with fixed options and no metadata, JSON uses
sorted keys and fixed separators, and the manifest holds no timestamp.
"""
from __future__ import annotations

import io
import json
import os
import re
import tarfile
from pathlib import Path

from lpasrn.data.records import PlateRecord
from lpasrn.data.shard_index import IndexBuilder, sha256_of
from lpasrn.errors import LpasrnError

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "lpasrn-shards/2"
# Format 1 listed every member's offset in the JSON; it is still read (shard_index converts it).
READABLE_FORMATS = ("lpasrn-shards/1", MANIFEST_FORMAT)
# Member suffixes in the order they are written (and therefore read) for every sample.
MEMBER_SUFFIXES = ("hr.png", "lr.png", "json")
# Manifest field names of each member's offset/size lists, parallel to MEMBER_SUFFIXES.
MEMBER_FIELDS = ("hr", "lr", "json")
PNG_COMPRESS_LEVEL = 6
SYNTH_HINT = "create shards with `lpasrn data synth --out DIR ...` (or `lpasrn data import ... --out DIR`)"
_SPLIT_RE = re.compile(r"^[A-Za-z0-9_-]+$")  # no dots: WebDataset splits key and suffix at the first dot


def _created_by() -> str:
    try:
        from importlib.metadata import version
        return f"lpasrn {version('lpasrn')}"
    except Exception:  # not installed as a distribution (e.g. run from a source tree)
        return "lpasrn"


def sample_key(split: str, sid: int) -> str:
    return f"{split}-{sid:08d}"


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.tar"


def encode_png(image) -> bytes:
    """PNG bytes of a PIL image with fixed options (no optimize pass, no metadata chunks)."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL, optimize=False)
    return buf.getvalue()


def encode_json(obj: dict) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("utf-8")


def _tar_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


class _ShardTar:
    """One shard being written to `<name>.partial`; renamed to its final name only when complete."""

    def __init__(self, path: Path):
        self.path = path
        self.partial_path = path.with_name(path.name + ".partial")
        self._file = open(self.partial_path, "wb")
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.USTAR_FORMAT)
        self.num_samples = 0

    def add(self, name: str, data: bytes) -> tuple[int, int]:
        """Append one member; return (offset of its data inside the tar, size)."""
        info = _tar_info(name, len(data))
        header = info.tobuf(self._tar.format, self._tar.encoding, self._tar.errors)
        # addfile writes exactly this header at the current offset, then the data.
        data_offset = self._tar.offset + len(header)
        self._tar.addfile(info, io.BytesIO(data))
        return data_offset, len(data)

    def finish(self) -> dict:
        self._tar.close()  # writes the end-of-archive blocks; the file object stays open
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.partial_path, self.path)
        return {"name": self.path.name, "num_samples": self.num_samples,
                "sha256": sha256_of(self.path), "size": self.path.stat().st_size}

    def abort(self) -> None:
        self._file.close()
        self.partial_path.unlink(missing_ok=True)


def write_manifest(out_dir: Path, settings: dict, splits: dict) -> dict:
    """Write `manifest.json` atomically (the one place it is written: the shard writer, hence every
    importer and the renderer, and the scale benchmark's simulated splits)."""
    manifest = {"format": MANIFEST_FORMAT, "created_by": _created_by(), "settings": settings,
                "splits": splits}
    tmp = Path(out_dir) / (MANIFEST_NAME + ".partial")
    tmp.write_bytes(encode_json(manifest))
    os.replace(tmp, Path(out_dir) / MANIFEST_NAME)
    return manifest


class _SplitIndex:
    """Per-split bookkeeping: finished shards and, per sample, where its members are (streamed to
    the binary index, so the writer's memory does not grow with the number of samples)."""

    def __init__(self, out_dir: Path, split: str):
        self.shards: list[dict] = []
        self.current: _ShardTar | None = None
        self.builder = IndexBuilder(out_dir, split)

    @property
    def num_samples(self) -> int:
        return self.builder.count

    def to_manifest(self) -> dict:
        return {"num_samples": self.num_samples, "shards": self.shards, "index": self.builder.finish()}


class DatasetWriter:
    """Write PlateRecords into per-split shards; `close()` writes `manifest.json`.

    Sids are dense per split, 0..N-1 in write order. A run killed before `close()` leaves only
    `*.partial` files and no manifest, so nothing half-written looks like a dataset.
    """

    def __init__(self, out_dir, settings: dict, shard_size: int = 1000):
        if shard_size < 1:
            raise LpasrnError(f"shard_size must be >= 1, got {shard_size}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.settings = json.loads(encode_json(settings))  # fails early on non-JSON settings
        self.shard_size = shard_size
        self._splits: dict[str, _SplitIndex] = {}
        self._closed = False
        # A stale manifest would describe shards this run is about to overwrite.
        (self.out_dir / MANIFEST_NAME).unlink(missing_ok=True)

    def write(self, split: str, record: PlateRecord) -> int:
        if self._closed:
            raise RuntimeError("DatasetWriter is closed")
        if not _SPLIT_RE.match(split):
            raise LpasrnError(f"split name {split!r} must match [A-Za-z0-9_-]+")
        if split not in self._splits:
            self._splits[split] = _SplitIndex(self.out_dir, split)
        index = self._splits[split]
        if index.current is None:
            index.current = _ShardTar(self.out_dir / shard_name(split, len(index.shards)))
        sid = index.num_samples
        key = sample_key(split, sid)
        meta = {"sid": sid, "text": record.text, "layout": record.layout,
                "source": record.source, "track": record.track}
        if record.degradation is not None:  # absent for real LR, so their shards stay as they were
            meta["degradation"] = record.degradation
        payloads = (encode_png(record.hr), encode_png(record.lr), encode_json(meta))
        where = [index.current.add(f"{key}.{suffix}", data)
                 for suffix, data in zip(MEMBER_SUFFIXES, payloads)]
        index.builder.append(len(index.shards), [o for o, _ in where], [n for _, n in where])
        index.current.num_samples += 1
        if index.current.num_samples >= self.shard_size:
            index.shards.append(index.current.finish())
            index.current = None
        return sid

    def close(self) -> dict:
        """Finish open shards, write `manifest.json` atomically, return the manifest."""
        if self._closed:
            raise RuntimeError("DatasetWriter is already closed")
        for index in self._splits.values():
            if index.current is not None:
                index.shards.append(index.current.finish())
                index.current = None
        manifest = write_manifest(self.out_dir, self.settings,
                                  {name: self._splits[name].to_manifest() for name in sorted(self._splits)})
        self._closed = True
        return manifest

    def abort(self) -> None:
        """Drop unfinished shards (e.g. after an error); no manifest is written."""
        for index in self._splits.values():
            if index.current is not None:
                index.current.abort()
                index.current = None
            index.builder.abort()
        self._closed = True

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._closed:
            return
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _check_manifest(manifest, path: Path) -> None:
    def bad(why: str):
        return LpasrnError(f"malformed manifest {path}: {why}; recreate the dataset ({SYNTH_HINT})")

    if not isinstance(manifest, dict) or manifest.get("format") not in READABLE_FORMATS:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise bad(f"format is {found!r}, expected {MANIFEST_FORMAT!r}")
    splits = manifest.get("splits")
    if not isinstance(splits, dict):
        raise bad("'splits' is missing")
    for name, split in splits.items():
        try:
            count = split["num_samples"]
            if "members" in split:  # format 1: offsets listed in the JSON
                members = split["members"]
                columns = ["shard"] + [f"{f}_{kind}" for f in MEMBER_FIELDS for kind in ("offset", "size")]
                index_count = {len(members[c]) for c in columns}
            else:
                index = split["index"]
                _ = index["file"], index["size"]
                index_count = {index["records"]}
            shard_total = sum(s["num_samples"] for s in split["shards"])
            for shard in split["shards"]:
                _ = shard["name"], shard["sha256"], shard["size"]
        except (KeyError, TypeError) as err:
            raise bad(f"split {name!r} lacks field {err}") from None
        if index_count != {count} or shard_total != count:
            raise bad(f"split {name!r} says {count} samples but its shards/index disagree")


def load_manifest(data_dir) -> dict:
    """Read and check `<data_dir>/manifest.json`; LpasrnError saying how to fix it otherwise."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise LpasrnError(f"dataset directory {data_dir} does not exist; "
                          f"{SYNTH_HINT.replace('DIR', str(data_dir))}")
    path = data_dir / MANIFEST_NAME
    if not path.is_file():
        raise LpasrnError(f"{data_dir} has no {MANIFEST_NAME} (not a finished dataset); "
                          f"{SYNTH_HINT.replace('DIR', str(data_dir))}")
    try:
        manifest = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as err:
        raise LpasrnError(f"malformed manifest {path}: not valid JSON ({err}); "
                          f"recreate the dataset ({SYNTH_HINT})") from None
    _check_manifest(manifest, path)
    return manifest


def split_entry(manifest: dict, split: str, data_dir) -> dict:
    """The manifest entry of one split, or LpasrnError naming the splits there are."""
    splits = manifest["splits"]
    if split not in splits:
        names = ", ".join(sorted(splits)) or "none"
        raise LpasrnError(f"dataset {data_dir} has no split {split!r}; it has: {names}")
    return splits[split]


def verify_shards(data_dir) -> list[str]:
    """Problems found by re-hashing every shard against the manifest (empty list = all good)."""
    data_dir = Path(data_dir)
    manifest = load_manifest(data_dir)
    problems = []
    for split in manifest["splits"].values():
        index = split.get("index")
        if index is not None:
            path = data_dir / index["file"]
            if not path.is_file():
                problems.append(f"{path}: missing")
            elif path.stat().st_size != index["size"] or sha256_of(path) != index["sha256"]:
                problems.append(f"{path}: size or sha256 differs from the manifest")
        for shard in split["shards"]:
            path = data_dir / shard["name"]
            if not path.is_file():
                problems.append(f"{path}: missing")
            elif path.stat().st_size != shard["size"] or sha256_of(path) != shard["sha256"]:
                problems.append(f"{path}: size or sha256 differs from the manifest")
    return problems
