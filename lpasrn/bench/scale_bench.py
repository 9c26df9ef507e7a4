"""`lpasrn bench scale`: the cost of lpasrn's per-plate state for a split of N plates, on R gloo ranks.

Two parts (results belong in BENCHMARKS.md):
- simulated split of N plates: a real index and manifest written through the common writer path
  (shard_index.IndexBuilder, shards.write_manifest) with simulated offsets, so no N images are
  rendered. Each rank then opens the index (`startup_s`), builds the miner, confusion tracker and
  weighted sampler for N plates (`rss_mb` = resident memory this state adds), makes the epoch's
  global draw and takes its slice (`draw_s`), syncs miner + confusion once (`sync_s`), and finds
  the resume position half-way into the epoch (`resume_seek_s`: weights, draw, skip to the batch).
- real indexed reads over a rendered set (`--read-plates`, default 10^5, shards of 250) under the
  descriptor limit `--nofile` (default 256): random reads through IndexedPlateDataset
  (`max_open_fds`, the most descriptors the rank process held), and a mid-epoch resume of the
  stream reader (`stream_resume_seek_s`, time to the first batch after half an epoch).
Every number is the maximum over ranks.
"""
from __future__ import annotations

import json
import os
import random
import resource
import socket
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lpasrn.data.shard_index import INDEX_DTYPE, IndexBuilder, split_index
from lpasrn.data.shards import MANIFEST_NAME, shard_name, write_manifest

SIM_SHARD_SIZE = 1000
READ_SHARD_SIZE = 250
BATCH = 64
KEYS = ("plates", "ranks", "startup_s", "rss_mb", "draw_s", "sync_s", "max_open_fds", "resume_seek_s")


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def write_simulated_split(out_dir: Path, plates: int, shard_size: int = SIM_SHARD_SIZE) -> None:
    """Index + manifest of a `train` split of `plates` plates in shards of `shard_size` (no tars)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if (out_dir / MANIFEST_NAME).is_file():
        manifest = json.loads((out_dir / MANIFEST_NAME).read_text())
        settings = manifest["settings"]
        if settings.get("plates") == plates and settings.get("shard_size") == shard_size:
            return  # reuse: the index is what is measured, not its writing
    builder = IndexBuilder(out_dir, "train")
    member = np.array([3000, 800, 90])  # typical member sizes of a 32x96 / 16x48 plate
    step = 512 * 4 + int(((member + 511) // 512 * 512).sum())
    for start in range(0, plates, 1 << 20):
        sids = np.arange(start, min(plates, start + (1 << 20)))
        records = np.zeros(len(sids), INDEX_DTYPE)
        records["shard"] = sids // shard_size
        first = (sids % shard_size) * step + 512
        records["offset"] = first[:, None] + np.array([0, 4096, 5632])[None, :]
        records["size"] = member
        builder.append_many(records)
    shards = [{"name": shard_name("train", i), "num_samples": min(shard_size, plates - i * shard_size),
               "sha256": "0" * 64, "size": 0} for i in range(-(-plates // shard_size))]
    settings = {"generator": "bench scale (simulated, no tars)", "plates": plates, "shard_size": shard_size}
    write_manifest(out_dir, settings,
                   {"train": {"num_samples": plates, "shards": shards, "index": builder.finish()}})


def ensure_read_set(out_dir: Path, plates: int) -> Path:
    from lpasrn.bench.data_bench import write_random_dataset

    if (out_dir / MANIFEST_NAME).is_file():
        manifest = json.loads((out_dir / MANIFEST_NAME).read_text())
        if manifest["splits"].get("train", {}).get("num_samples") == plates:
            return out_dir
    write_random_dataset(out_dir, plates, seed=0, shard_size=READ_SHARD_SIZE, split="train")
    return out_dir


def _simulated_state(sim_dir: Path, rank: int, world: int) -> dict:
    from lpasrn.distributed.confusion import CharacterConfusionTracker
    from lpasrn.distributed.miner import HardExampleMiner
    from lpasrn.distributed.sampler import CurriculumSampler
    from lpasrn.train.data_sources import SkipSampler

    base = _rss_mb()
    start = time.perf_counter()
    index = split_index(sim_dir, "train")
    plates = len(index)
    out = {"startup_s": time.perf_counter() - start}
    miner, confusion = HardExampleMiner(plates), CharacterConfusionTracker()
    gen = torch.Generator().manual_seed(rank)
    sids = torch.randint(0, plates, (100_000,), generator=gen)
    miner.update(sids, torch.randint(0, 2, (100_000,), generator=gen), torch.full((100_000,), 6),
                 torch.full((100_000,), 7))
    confusion.update(["ABC1234"] * 100, ["A8C1234"] * 100)
    dist.barrier()
    start = time.perf_counter()
    miner.sync()  # NOTE: collective: every rank
    confusion.sync()
    out["sync_s"] = time.perf_counter() - start
    weights = miner.sampling_weights(0.5)
    sampler = CurriculumSampler(lambda e: weights, plates, BATCH, rank, world, seed=0)
    start = time.perf_counter()
    sampler.set_epoch(0)
    first = sampler.rank_slice()[:BATCH].tolist()
    out["draw_s"] = time.perf_counter() - start
    # Resume half-way: a fresh sampler (as after a requeue) recomputes the weights and the draw
    # (resume_total_s), then jumps to the batch (resume_seek_s: the seek alone, nothing read).
    start = time.perf_counter()
    resumed = CurriculumSampler(lambda e: miner.sampling_weights(0.5), plates, BATCH, rank, world, seed=0)
    resumed.set_epoch(0)
    seek_start = time.perf_counter()
    skip = (len(resumed) // BATCH // 2) * BATCH
    position = next(iter(SkipSampler(resumed, skip)))
    out["resume_seek_s"] = time.perf_counter() - seek_start
    out["resume_total_s"] = time.perf_counter() - start
    assert position == int(sampler.rank_slice()[skip]) and first
    out["rss_mb"] = _rss_mb() - base
    out["max_open_fds"] = _open_fds()
    return out


def _real_reads(read_dir: Path, rank: int, world: int, reads: int) -> dict:
    from lpasrn.data.readers import IndexedPlateDataset, StreamReader

    dataset = IndexedPlateDataset(read_dir, "train")
    order = random.Random(rank).sample(range(len(dataset)), min(reads, len(dataset)))
    peak, start = _open_fds(), time.perf_counter()
    for i, sid in enumerate(order):
        assert dataset[sid]["sid"] == sid
        if i % 50 == 0:
            peak = max(peak, _open_fds())
    rate = len(order) / (time.perf_counter() - start)
    reader = StreamReader(read_dir, "train", BATCH, seed=0, rank=rank, world_size=world, mode="resampled")
    reader.set_epoch(0, skip_batches=reader.num_batches() // 2)
    start = time.perf_counter()
    next(iter(reader))
    seek = time.perf_counter() - start
    return {"max_open_fds": max(peak, _open_fds()), "read_samples_per_s": rate, "stream_resume_seek_s": seek}


def _rank_main(rank: int, world: int, port: int, sim_dir: str, read_dir: str, reads: int, nofile: int,
               out_dir: str) -> None:
    torch.set_num_threads(1)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(nofile, hard), hard))
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        result = _simulated_state(Path(sim_dir), rank, world)
        if read_dir:
            real = _real_reads(Path(read_dir), rank, world, reads)
            result["max_open_fds"] = max(result["max_open_fds"], real.pop("max_open_fds"))
            result.update(real)
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_scale(plates: int, ranks: int, work: Path, read_plates: int, reads: int, nofile: int) -> dict:
    write_simulated_split(work / f"sim-{plates}", plates)
    read_dir = str(ensure_read_set(work / f"read-{read_plates}", read_plates)) if read_plates else ""
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(_rank_main, args=(ranks, _free_port(), str(work / f"sim-{plates}"), read_dir, reads, nofile,
                                   out_dir), nprocs=ranks, join=True)
        per_rank = [json.loads(Path(out_dir, f"rank{r}.json").read_text()) for r in range(ranks)]
    result = {"plates": plates, "ranks": ranks, "read_plates": read_plates, "nofile": nofile}
    for key in per_rank[0]:
        result[key] = max(r[key] for r in per_rank) if key != "read_samples_per_s" else min(
            r[key] for r in per_rank)
    return result


def run(args) -> int:
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="lpasrn-bench-scale-"))
    result = run_scale(args.plates, args.ranks, work, args.read_plates, args.reads, args.nofile)
    text = json.dumps(result, indent=2, sort_keys=True)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("scale", help="per-plate state of an N-plate split on R ranks (simulated)")
    parser.add_argument("--plates", type=int, required=True, help="plates in the simulated train split")
    parser.add_argument("--ranks", type=int, default=2, help="gloo processes")
    parser.add_argument("--json", default=None, help="write the result here")
    parser.add_argument("--work", default=None, help="folder for the simulated split and the read set "
                                                     "(reused when present)")
    parser.add_argument("--read-plates", type=int, default=100_000,
                        help="plates of the rendered set for real indexed reads (0 = skip)")
    parser.add_argument("--reads", type=int, default=5000, help="random indexed reads per rank")
    parser.add_argument("--nofile", type=int, default=256, help="descriptor limit of each rank (ulimit -n)")
    parser.set_defaults(func=run)
