"""Stream reader: a DataLoader over a WebDataset pipeline, exact-once or resampled.

Pipeline per DataLoader worker (batching happens in the worker, as in open_clip's data.py):
    shard list -> tar members -> samples (by key) -> shuffle buffer -> decode -> batches
Rank and world size are arguments (the trainer takes them from Accelerate); nothing here reads
RANK/WORLD_SIZE from the environment or asks torch.distributed, so webdataset's split_by_node is
replaced by an explicit slice.

Corrupt samples never vanish: the decoder turns them into markers that travel inside the stream,
the batcher attaches them to the batch as `batch["corrupt"]` (a list of "shard:key: reason"), and
the reader in the main process counts and logs them in `read_errors`, whatever num_workers is.
"""
from __future__ import annotations

import itertools
import logging
import math
import random
from pathlib import Path

import numpy as np
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.filters import _shuffle
from webdataset.tariterators import group_by_keys

from lpasrn.data.read_decode import CorruptSampleError, ReadErrors, collate, corrupt_entry, decode_sample
from lpasrn.data.shards import load_manifest, sample_key, split_entry
from lpasrn.distributed.preemption import worker_ignores_stop_signals
from lpasrn.errors import LpasrnError

log = logging.getLogger(__name__)

MODES = ("exact", "resampled")
CORRUPT = "__corrupt__"  # key of a marker item standing for a sample that could not be read
# Resampled streams are endless: give up when this many corrupt items arrive with no good sample.
MAX_CONSECUTIVE_CORRUPT = 10_000


def derive_seed(*parts: int) -> int:
    """A 32-bit seed from non-negative ints, stable across processes and Python hash seeds."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def exact_shard_order(shard_names: list[str], seed: int, epoch: int, rank: int, world_size: int,
                      worker: int = 0, num_workers: int = 1) -> list[str]:
    """The shards one worker of one rank reads in exact mode, in reading order."""
    order = list(shard_names)
    # NOTE: same shard order on all ranks: the permutation depends on (seed, epoch) only.
    random.Random(derive_seed(seed, epoch)).shuffle(order)
    # NOTE: ranks take disjoint strided slices whose union is every shard: each sample once per epoch.
    mine = order[rank::world_size]
    # NOTE: workers of a rank split that rank's slice the same way, again disjoint and complete.
    return mine[worker::num_workers]


def cycled_shard_order(shard_names: list[str], seed: int, epoch: int, slot: int, slots: int):
    """Endless shard order of one reading slot (rank * num_workers + worker) in resampled mode.

    Why not shards drawn with replacement: then an epoch reads ~1 - 1/e of the shards (about 62% of
    the plates with the paper's 20 shards and 32 slots). Here the shards of an epoch are a chain of
    permutations seeded by (seed, epoch, cycle), dealt out in turn to the slots: every shard is read
    once before any is read twice, whatever the number of ranks and workers.
    # NOTE: slots take disjoint positions of the same chain on every rank: ranks read different
    # shards, and a rerun (or a resume) reads the same ones.
    """
    position = 0
    for cycle in itertools.count():
        order = list(shard_names)
        random.Random(derive_seed(seed, epoch, cycle)).shuffle(order)
        for name in order:
            if position % slots == slot:
                yield name
            position += 1


def resampled_buffer(shuffle_buffer: int, batches_per_epoch: int, batch_size: int, num_workers: int) -> int:
    """The shuffle buffer a resampled epoch uses: at most a quarter of what one worker yields.

    Why: what is still in a worker's buffer when its quota is met is not seen this epoch. With the
    paper's 20,000 plates, batch 64, 8 ranks x 4 workers (640 plates a worker) and shards of 250, a
    1,000-plate buffer leaves 26% of the plates unseen; 160 leaves 10% (lpasrn.data.coverage).
    """
    per_worker = batches_per_epoch * batch_size // max(1, num_workers)
    return max(1, min(shuffle_buffer, per_worker // 4))


def iter_tar_members(path: Path, shard: str):
    """(name, bytes) of each regular member of a tar, read whole and parsed from its 512-byte headers.

    Why not tarfile: its header parsing costs ~70 us a member, a third of the per-sample budget at
    2,000 samples/s. Shards are plain USTAR/GNU tars with short names (our writer's), so reading name,
    size and type straight from the header is enough; a bad checksum or a member running past the end
    of the file raises ValueError.
    """
    data = memoryview(Path(path).read_bytes())
    pos, end = 0, len(data)
    while pos + 512 <= end:
        header = bytes(data[pos:pos + 512])
        if header.count(0) == 512:  # end-of-archive block
            return
        stored = int(header[148:156].split(b"\0", 1)[0].strip() or b"0", 8)
        if stored != sum(header[:148]) + 256 + sum(header[156:]):  # 256 = checksum field read as spaces
            raise ValueError(f"{shard}: bad tar header checksum at byte {pos}")
        name = header[0:100].split(b"\0", 1)[0].decode("utf-8")
        if header[257:262] == b"ustar" and header[345] != 0:
            name = header[345:500].split(b"\0", 1)[0].decode("utf-8") + "/" + name
        size = int(header[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
        start = pos + 512
        if start + size > end:
            raise ValueError(f"{shard}: member {name} runs past the end of the file (truncated shard)")
        if header[156:157] in (b"0", b"\0"):  # regular file
            yield name, bytes(data[start:start + size])
        pos = start + (size + 511) // 512 * 512
    raise ValueError(f"{shard}: no end-of-archive marker (truncated shard)")


def _expand_shards(shard_items, data_dir: Path, expected: dict[str, int]):
    """Raw samples ({"__key__", "__url__" = shard name, member bytes}) or corrupt markers."""
    for item in shard_items:
        name = Path(item["url"]).name
        count = 0
        try:
            files = ({"fname": fname, "data": data, "__url__": name}
                     for fname, data in iter_tar_members(data_dir / name, name))
            for sample in group_by_keys(files):
                count += 1
                yield sample
        except Exception as err:  # truncated or unreadable tar: report the shard, keep going
            yield {CORRUPT: f"{name}:*: shard unreadable after {count} samples ({type(err).__name__}: {err})"}
            continue
        if count != expected.get(name, count):
            yield {CORRUPT: f"{name}:*: shard holds {count} samples, manifest says {expected[name]}"}


def _decode_stream(raw_samples, split: str):
    for raw in raw_samples:
        if CORRUPT in raw:
            yield raw
            continue
        shard, key = raw["__url__"], raw["__key__"]
        members = {k: v for k, v in raw.items() if not k.startswith("__")}
        try:
            sample = decode_sample(members, shard, key)
            if key != sample_key(split, sample["sid"]):
                raise CorruptSampleError(shard, key, f"json sid {sample['sid']} does not match the key")
        except CorruptSampleError as err:
            yield {CORRUPT: corrupt_entry(err)}
            continue
        yield sample


def _skip_raw(raw_samples, count: int):
    """Drop the first `count` samples before decoding (a mid-epoch resume's position); shard-level
    corrupt markers still pass, so they are reported. Why before decoding: a requeued job would
    otherwise decode up to an epoch of PNGs only to throw them away."""
    for raw in raw_samples:
        if count > 0 and CORRUPT not in raw:
            count -= 1
            continue
        yield raw


def worker_skip(skip_batches: int, worker: int, num_workers: int) -> int:
    """Batches of the first `skip_batches` of a rank that came from `worker`: the DataLoader takes
    batches from its workers in turn (batch i from worker i % num_workers), and the quotas differ by
    at most one batch, given to the first workers, so the turns never shift."""
    return len(range(worker, skip_batches, num_workers))


def _batch_stream(samples, batch_size: int):
    """Collated batches of good samples; corrupt markers ride on the next batch (or the last one).

    One finished batch is held back so markers met after the last full batch still have a batch to
    ride on; only a worker that met nothing but corrupt samples yields an empty batch.
    """
    good, corrupt, held, corrupt_run = [], [], None, 0
    for item in samples:
        if CORRUPT in item:
            corrupt.append(item[CORRUPT])
            corrupt_run += 1
            if corrupt_run > MAX_CONSECUTIVE_CORRUPT:
                raise LpasrnError(f"{corrupt_run} corrupt samples in a row, none readable; "
                                  f"last: {item[CORRUPT]}")
            continue
        corrupt_run = 0
        good.append(item)
        if len(good) == batch_size:
            if held is not None:
                yield held
            held, good, corrupt = collate(good, corrupt), [], []
    if good:
        if held is not None:
            yield held
        held, corrupt = collate(good, corrupt), []
    if corrupt:
        held = collate([], corrupt) if held is None else {**held, "corrupt": held["corrupt"] + corrupt}
    if held is not None:
        yield held


def _batch_as_is(batch: dict) -> dict:
    """Batches are collated in the worker already; torch's default_convert would only re-walk them."""
    return batch


def _worker_info() -> tuple[int, int]:
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


class _PlateStream(IterableDataset):
    """One epoch of batches for one rank; built fresh per epoch and pickled into each worker."""

    def __init__(self, reader: "StreamReader", epoch: int):
        self.data_dir, self.split = reader.data_dir, reader.split
        self.shard_names, self.expected = reader.shard_names, reader.shard_counts
        self.batch_size, self.seed, self.epoch = reader.batch_size, reader.seed, epoch
        self.rank, self.world_size, self.mode = reader.rank, reader.world_size, reader.mode
        self.batches_per_epoch, self.shuffle_buffer = reader.batches_per_epoch, reader.shuffle_buffer
        self.skip_batches = reader.skip_batches

    def _shard_source(self, worker: int, num_workers: int):
        if self.mode == "exact":
            names = exact_shard_order(self.shard_names, self.seed, self.epoch, self.rank, self.world_size,
                                      worker, num_workers)
            # A callable, not a list: DataPipeline would splice a list in as pipeline stages.
            return lambda: iter([{"url": name} for name in names])
        # NOTE: the stream is endless, so every rank fills its quota (see cycled_shard_order).
        order = cycled_shard_order(self.shard_names, self.seed, self.epoch, self.rank * num_workers + worker,
                                   self.world_size * num_workers)
        return lambda: ({"url": name} for name in order)

    def _batch_quota(self, worker: int, num_workers: int) -> int | None:
        if self.mode == "exact":
            return None
        # NOTE: the rank's batches_per_epoch is split over its workers so the rank yields exactly that many.
        base, extra = divmod(self.batches_per_epoch, num_workers)
        return base + (1 if worker < extra else 0)

    def __iter__(self):
        worker, num_workers = _worker_info()
        # The DataLoader always starts its turns at worker 0; after skipping k batches the next one
        # belongs to worker k % num_workers, so each worker plays the part of worker (w + k) % n.
        worker = (worker + self.skip_batches) % num_workers
        rng = random.Random(derive_seed(self.seed, self.epoch, self.rank, worker))
        skip = worker_skip(self.skip_batches, worker, num_workers)
        stages = [
            self._shard_source(worker, num_workers),
            lambda src: _expand_shards(src, self.data_dir, self.expected),
            lambda src: _shuffle(src, bufsize=self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng),
            lambda src: _skip_raw(src, skip * self.batch_size),
            lambda src: _decode_stream(src, self.split),
            lambda src: _batch_stream(src, self.batch_size),
        ]
        pipeline = wds.DataPipeline(*stages)
        quota = self._batch_quota(worker, num_workers)
        if quota is not None:
            quota = max(0, quota - skip)
            pipeline = pipeline.with_epoch(nbatches=quota)
            if quota == 0:
                return iter(())
        return iter(pipeline)


class StreamReader:
    """Batches of one split for one rank; call `set_epoch(e)` before iterating epoch e.

    mode="exact": every sample exactly once per epoch across all ranks (shards shuffled by seed+epoch,
    split by rank then worker; the last partial batch of each worker is kept). Ranks can then get
    different numbers of batches when shards do not divide evenly; `num_batches()` says how many.
    mode="resampled": shards drawn with replacement; every rank yields exactly `batches_per_epoch`
    full batches (default ceil(num_samples / (batch_size * world_size))).
    Corrupt samples are skipped, logged, counted in `read_errors` and listed in `batch["corrupt"]`.
    """

    def __init__(self, data_dir, split: str, batch_size: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1, num_workers: int = 0, mode: str = "exact",
                 batches_per_epoch: int | None = None, shuffle_buffer: int = 1000):
        if mode not in MODES:
            raise LpasrnError(f"stream mode must be one of {MODES}, got {mode!r}")
        if not (batch_size >= 1 and 0 <= rank < world_size and num_workers >= 0 and seed >= 0):
            raise LpasrnError(f"bad reader arguments: batch_size={batch_size} rank={rank} "
                              f"world_size={world_size} num_workers={num_workers} seed={seed}")
        self.data_dir, self.split = Path(data_dir), split
        entry = split_entry(load_manifest(self.data_dir), split, self.data_dir)
        self.shard_names = [s["name"] for s in entry["shards"]]
        self.shard_counts = {s["name"]: s["num_samples"] for s in entry["shards"]}
        self.num_samples = entry["num_samples"]
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.num_workers, self.mode, self.shuffle_buffer = num_workers, mode, max(1, shuffle_buffer)
        if batches_per_epoch is None:
            batches_per_epoch = math.ceil(self.num_samples / (batch_size * world_size))
        self.batches_per_epoch = batches_per_epoch
        if mode == "resampled":
            self.shuffle_buffer = resampled_buffer(self.shuffle_buffer, batches_per_epoch, batch_size,
                                                   num_workers)
        self.epoch = 0
        self.skip_batches = 0
        self.read_errors = ReadErrors()
        if mode == "exact" and len(self.shard_names) < world_size * max(1, num_workers):
            log.warning("%s/%s: %d shards for %d ranks x %d workers: some workers read nothing; "
                        "write smaller shards", self.data_dir, split, len(self.shard_names), world_size,
                        max(1, num_workers))

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Iterate `epoch` from batch `skip_batches` on (a mid-epoch resume): the skipped samples are
        read from the tars (the shuffle needs them) but never decoded. Resampled mode only: it is the
        mode whose batch order is a fixed function of (seed, epoch, rank). A corrupt sample among the
        skipped ones is not seen, so the resumed batches may then start a few samples early."""
        if epoch < 0 or skip_batches < 0:
            raise LpasrnError(f"epoch and skip_batches must be >= 0, got {epoch}, {skip_batches}")
        if skip_batches and self.mode != "resampled":
            raise LpasrnError("skip_batches needs mode='resampled' (exact-mode workers end at different "
                              "batches, so a rank's batch index does not name a worker position)")
        self.epoch, self.skip_batches = epoch, skip_batches

    def num_batches(self) -> int:
        """Batches this rank yields in the current epoch (exact mode: if no sample is corrupt)."""
        if self.mode == "resampled":
            return self.batches_per_epoch
        workers, total = max(1, self.num_workers), 0
        for worker in range(workers):
            shards = exact_shard_order(self.shard_names, self.seed, self.epoch, self.rank, self.world_size,
                                       worker, workers)
            total += math.ceil(sum(self.shard_counts[name] for name in shards) / self.batch_size)
        return total

    def __len__(self) -> int:
        """Batches left to iterate (after `skip_batches`)."""
        return max(0, self.num_batches() - self.skip_batches)

    def __iter__(self):
        dataset = _PlateStream(self, self.epoch)
        # NOTE: non-persistent workers: each epoch pickles a fresh _PlateStream carrying that epoch,
        # so every worker of every rank agrees on the epoch without shared state.
        loader = DataLoader(dataset, batch_size=None, num_workers=self.num_workers,
                            collate_fn=_batch_as_is, persistent_workers=False,
                            worker_init_fn=worker_ignores_stop_signals)
        for batch in loader:
            if batch["corrupt"]:
                self.read_errors.record(batch["corrupt"])
            yield batch

    def loader(self):
        """The iterable of batches (this reader itself; kept for the architecture.md interface)."""
        return self
