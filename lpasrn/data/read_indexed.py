"""Indexed reader: random access to any sample by sid, reading its three members with os.pread.

Tar members are stored uncompressed, so the manifest's (offset, size) of each member is all that is
needed: no tar scanning, one syscall per member. File descriptors are opened lazily per process, so
the dataset can be handed to DataLoader workers (forked or spawned) and each opens its own.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from lpasrn.data.read_decode import CorruptSampleError, decode_sample
from lpasrn.data.shards import MEMBER_FIELDS, MEMBER_SUFFIXES, load_manifest, sample_key, split_entry


class IndexedPlateDataset(Dataset):
    """Map-style dataset over one split: `ds[sid]` is the same sample dict the stream reader yields.

    A corrupt sample raises CorruptSampleError naming the shard and key (the caller decides whether
    to skip it; a weighted sampler should count it, never drop it silently).
    """

    def __init__(self, data_dir, split: str):
        self.data_dir = Path(data_dir)
        self.split = split
        entry = split_entry(load_manifest(self.data_dir), split, self.data_dir)
        self.shard_names = [s["name"] for s in entry["shards"]]
        members = entry["members"]
        self._shard_of = np.asarray(members["shard"], dtype=np.int64)
        # [N, 3] offsets and sizes, columns in MEMBER_FIELDS order.
        self._offsets = np.stack([np.asarray(members[f"{f}_offset"], np.int64) for f in MEMBER_FIELDS], 1)
        self._sizes = np.stack([np.asarray(members[f"{f}_size"], np.int64) for f in MEMBER_FIELDS], 1)
        self._fds: dict[int, int] = {}
        self._fd_pid = None

    def __len__(self) -> int:
        return len(self._shard_of)

    def _fd(self, shard_index: int) -> int:
        # Descriptors inherited through fork share nothing harmful with pread, but a spawned worker
        # gets none, and reopening per pid keeps both cases identical.
        if self._fd_pid != os.getpid():
            self._fds, self._fd_pid = {}, os.getpid()
        fd = self._fds.get(shard_index)
        if fd is None:
            path = self.data_dir / self.shard_names[shard_index]
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError as err:
                raise CorruptSampleError(str(path), "*", f"cannot open shard: {err.strerror}") from None
            self._fds[shard_index] = fd
        return fd

    def read_members(self, sid: int) -> tuple[str, str, dict[str, bytes]]:
        """(shard name, key, raw member bytes) of one sample, read by pread at manifest offsets."""
        if not 0 <= sid < len(self):
            raise IndexError(f"sid {sid} out of range for split {self.split!r} with {len(self)} samples")
        shard_index = int(self._shard_of[sid])
        shard, key = self.shard_names[shard_index], sample_key(self.split, sid)
        fd = self._fd(shard_index)
        members = {}
        for column, suffix in enumerate(MEMBER_SUFFIXES):
            offset, size = int(self._offsets[sid, column]), int(self._sizes[sid, column])
            data = os.pread(fd, size, offset)
            if len(data) != size:
                raise CorruptSampleError(shard, key,
                                         f"{suffix}: shard ends after {len(data)} of {size} bytes")
            members[suffix] = data
        return shard, key, members

    def __getitem__(self, sid: int) -> dict:
        shard, key, members = self.read_members(int(sid))
        sample = decode_sample(members, shard, key)
        if sample["sid"] != sid:
            raise CorruptSampleError(shard, key, f"json says sid {sample['sid']}, manifest says {sid}")
        return sample

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}

    def __getstate__(self):
        # Descriptors are per process; a worker reopens what it needs.
        state = self.__dict__.copy()
        state["_fds"], state["_fd_pid"] = {}, None
        return state

    def __del__(self):
        if getattr(self, "_fd_pid", None) == os.getpid():
            self.close()
