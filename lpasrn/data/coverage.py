"""How much of a split one resampled epoch reads: the stream reader's own shard order, shuffle buffer
and per-worker quotas replayed on sids only (no tar is opened, nothing is decoded).

Coverage = distinct plates yielded by all ranks and workers in one epoch / plates in the split.
Two things lower it: shards read twice (drawn with replacement, an epoch reads ~63% of them), and
the shuffle buffer: each reading slot (rank x worker) yields only its quota, and whatever is still
in its buffer at the end of the epoch is not seen. The buffer holds up to `shuffle_buffer` plates,
so when the quota per slot (plates / (ranks x workers)) is not much larger than the buffer, a
large part of what a slot read stays unseen. `lpasrn data inspect --coverage` prints it for a set.
"""
from __future__ import annotations

import random

import numpy as np
from webdataset.filters import _shuffle

from lpasrn.data.read_stream import cycled_shard_order, derive_seed, resampled_buffer
from lpasrn.data.shard_index import split_index


def _shard_sids(records: np.ndarray, num_shards: int) -> list[np.ndarray]:
    shard = np.asarray(records["shard"], dtype=np.int64)
    order = np.argsort(shard, kind="stable")  # sids of a shard in file order (written in sid order)
    bounds = np.searchsorted(shard[order], np.arange(num_shards + 1))
    return [order[bounds[i]:bounds[i + 1]] for i in range(num_shards)]


def slot_sids(shard_sids, names, seed, epoch, slot, slots, quota, shuffle_buffer, rank, worker):
    """Sids one slot yields in an epoch: the reader's pipeline without the bytes."""
    position = {name: i for i, name in enumerate(names)}
    rng = random.Random(derive_seed(seed, epoch, rank, worker))

    def raw():
        for name in cycled_shard_order(names, seed, epoch, slot, slots):
            yield from shard_sids[position[name]].tolist()

    out = []
    for sid in _shuffle(raw(), bufsize=shuffle_buffer, initial=shuffle_buffer, rng=rng):
        if len(out) == quota:
            break
        out.append(sid)
    return out


def epoch_coverage(data_dir, split: str, batch_size: int, world_size: int, num_workers: int,
                   shuffle_buffer: int = 1000, seed: int = 0, epoch: int = 0,
                   batches_per_epoch: int | None = None) -> float:
    """Fraction of `split` one resampled epoch of StreamReader(...) yields over all ranks."""
    index = split_index(data_dir, split)
    names = list(index.shard_names)
    shard_sids = _shard_sids(index.records, len(names))
    n = len(index)
    workers = max(1, num_workers)
    if batches_per_epoch is None:
        batches_per_epoch = -(-n // (batch_size * world_size))
    buffer = resampled_buffer(max(1, shuffle_buffer), batches_per_epoch, batch_size, workers)
    seen = np.zeros(n, dtype=bool)
    for rank in range(world_size):
        base, extra = divmod(batches_per_epoch, workers)
        for worker in range(workers):
            quota = (base + (1 if worker < extra else 0)) * batch_size
            sids = slot_sids(shard_sids, names, seed, epoch, rank * workers + worker, world_size * workers,
                             quota, buffer, rank, worker)
            seen[sids] = True
    return float(seen.mean())
