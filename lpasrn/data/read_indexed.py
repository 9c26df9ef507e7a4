"""Indexed reader: random access to any sample by sid, reading its three members with os.pread.

Tar members are stored uncompressed, so the index's (offset, size) of each member is all that is
needed: no tar scanning, one syscall per member. The index is the split's memory-mapped
`<split>.index.npy`, opened once per process (shard_index.split_index), however many readers,
epochs or stages open the dataset.

File descriptors are opened lazily per process (so the dataset can be handed to DataLoader workers,
forked or spawned) and kept in an LRU of at most `max_open_files`: a split of thousands of shards
reads under a low `ulimit -n`. Running out of descriptors (EMFILE/ENFILE) is a resource problem of
this process, never a corrupt shard: it raises LpasrnError saying so.
"""
from __future__ import annotations

import errno
import os
from collections import OrderedDict
from pathlib import Path

from torch.utils.data import Dataset

from lpasrn.data.read_decode import CorruptSampleError, decode_sample
from lpasrn.data.shard_index import split_index
from lpasrn.data.shards import MEMBER_SUFFIXES, sample_key
from lpasrn.errors import LpasrnError

DEFAULT_MAX_OPEN_FILES = 64
_OUT_OF_FDS = (errno.EMFILE, errno.ENFILE)


class IndexedPlateDataset(Dataset):
    """Map-style dataset over one split: `ds[sid]` is the same sample dict the stream reader yields.

    A corrupt sample raises CorruptSampleError naming the shard and key (the caller decides whether
    to skip it; a weighted sampler should count it, never drop it silently).
    """

    def __init__(self, data_dir, split: str, max_open_files: int = DEFAULT_MAX_OPEN_FILES):
        if max_open_files < 1:
            raise LpasrnError(f"max_open_files must be >= 1, got {max_open_files}")
        self.data_dir = Path(data_dir)
        self.split = split
        self.max_open_files = max_open_files
        index = split_index(self.data_dir, split)
        self.shard_names = list(index.shard_names)
        self._records = index.records
        self._fds: OrderedDict[int, int] = OrderedDict()
        self._fd_pid = None

    def __len__(self) -> int:
        return len(self._records)

    def _open(self, path: Path) -> int:
        try:
            return os.open(path, os.O_RDONLY)
        except OSError as err:
            if err.errno not in _OUT_OF_FDS:
                raise CorruptSampleError(str(path), "*", f"cannot open shard: {err.strerror}") from None
        # Out of descriptors: give back ours and retry once; if the process is still full, someone
        # else holds them, and that is no fault of the shard.
        self.close()
        try:
            return os.open(path, os.O_RDONLY)
        except OSError as err:
            if err.errno in _OUT_OF_FDS:
                raise LpasrnError(f"out of file descriptors opening {path} ({err.strerror}); this is not "
                                  f"a corrupt shard: raise `ulimit -n` or lower max_open_files "
                                  f"(now {self.max_open_files}) or num_workers") from None
            raise CorruptSampleError(str(path), "*", f"cannot open shard: {err.strerror}") from None

    def _fd(self, shard_index: int) -> int:
        # Descriptors inherited through fork share nothing harmful with pread, but a spawned worker
        # gets none, and reopening per pid keeps both cases identical.
        if self._fd_pid != os.getpid():
            self._fds, self._fd_pid = OrderedDict(), os.getpid()
        fd = self._fds.get(shard_index)
        if fd is not None:
            self._fds.move_to_end(shard_index)
            return fd
        while len(self._fds) >= self.max_open_files:
            _, oldest = self._fds.popitem(last=False)
            os.close(oldest)
        fd = self._open(self.data_dir / self.shard_names[shard_index])
        self._fds[shard_index] = fd
        return fd

    @property
    def open_files(self) -> int:
        return len(self._fds) if self._fd_pid == os.getpid() else 0

    def read_members(self, sid: int) -> tuple[str, str, dict[str, bytes]]:
        """(shard name, key, raw member bytes) of one sample, read by pread at the index's offsets."""
        if not 0 <= sid < len(self):
            raise IndexError(f"sid {sid} out of range for split {self.split!r} with {len(self)} samples")
        record = self._records[sid]
        shard_index = int(record["shard"])
        shard, key = self.shard_names[shard_index], sample_key(self.split, sid)
        fd = self._fd(shard_index)
        members = {}
        for column, suffix in enumerate(MEMBER_SUFFIXES):
            offset, size = int(record["offset"][column]), int(record["size"][column])
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
            raise CorruptSampleError(shard, key, f"json says sid {sample['sid']}, index says {sid}")
        return sample

    def close(self) -> None:
        if self._fd_pid == os.getpid():
            for fd in self._fds.values():
                os.close(fd)
        self._fds = OrderedDict()

    def __getstate__(self):
        # Descriptors are per process; a worker reopens what it needs. The memory map pickles as an
        # array copy, so the worker reopens the index (once per process) instead.
        state = self.__dict__.copy()
        state["_fds"], state["_fd_pid"], state["_records"] = OrderedDict(), None, None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._records = split_index(self.data_dir, self.split).records

    def __del__(self):
        if getattr(self, "_fd_pid", None) == os.getpid():
            self.close()
