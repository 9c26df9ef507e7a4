"""`lpasrn bench data`: samples/s per worker of the stream and indexed readers, plates/s of the renderer.

Target (DESIGN.md section 8): >= 2,000 samples/s per worker for each reader, decoded to float tensors.
Without --data it writes a temporary dataset of plate-like random images (smooth colour fields plus
noise, so PNG sizes are close to real plate crops rather than worst-case white noise).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import tempfile
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image

from lpasrn.data.readers import IndexedPlateDataset, StreamReader
from lpasrn.data.records import PlateRecord
from lpasrn.data.shards import DatasetWriter, load_manifest
from lpasrn.plates import HR_SIZE, LAYOUTS, LR_SIZE

BENCH_SPLIT = "train"


def _random_text(rng: random.Random) -> str:
    pattern = rng.choice(list(LAYOUTS.values()))
    return "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ" if c == "L" else "0123456789") for c in pattern)


def random_plate_records(count: int, seed: int = 0, noise: int = 12) -> Iterator[PlateRecord]:
    """`count` PlateRecords with plate-like random images (for tests and benchmarks, not training)."""
    rng = np.random.default_rng(seed)
    text_rng = random.Random(seed)
    (hr_h, hr_w), (lr_h, lr_w) = HR_SIZE, LR_SIZE
    for i in range(count):
        coarse = rng.integers(0, 256, (4, 12, 3), dtype=np.uint8)
        field = np.asarray(Image.fromarray(coarse).resize((hr_w, hr_h), Image.BICUBIC), dtype=np.int16)
        pixels = np.clip(field + rng.integers(-noise, noise + 1, field.shape), 0, 255).astype(np.uint8)
        hr = Image.fromarray(pixels)
        lr = hr.resize((lr_w, lr_h), Image.BICUBIC)
        yield PlateRecord(hr=hr, lr=lr, text=_random_text(text_rng), source=f"random:{seed}:{i}",
                          track=f"track{i // 5}" if i % 2 else None)


def write_random_dataset(out_dir, count: int, seed: int = 0, shard_size: int = 1000,
                         split: str = BENCH_SPLIT) -> dict:
    with DatasetWriter(out_dir, {"generator": "random_plate_records", "count": count, "seed": seed},
                       shard_size=shard_size) as writer:
        for record in random_plate_records(count, seed):
            writer.write(split, record)
    return load_manifest(out_dir)


def _cpu_seconds() -> tuple[float, float]:
    """(CPU seconds of this process, of its finished children): DataLoader workers count once joined."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def _time_stream(data_dir, split: str, num_workers: int, batch_size: int, limit: int) -> dict:
    """Samples/s over wall time and per CPU-second of the process doing the reading.

    The CPU-time rate is what "per worker" means on a shared machine: other jobs stretch the wall
    clock, not the CPU time a worker spends per sample.
    """
    reader = StreamReader(data_dir, split, batch_size, num_workers=num_workers)
    own0, children0 = _cpu_seconds()
    start, seen = time.perf_counter(), 0
    batches = iter(reader)
    for batch in batches:
        seen += int(batch["sid"].numel())
        if seen >= limit:
            break
    batches.close()  # shuts the DataLoader down and joins its workers, so their CPU time is counted
    wall = time.perf_counter() - start
    own1, children1 = _cpu_seconds()
    cpu = (children1 - children0) if num_workers else (own1 - own0)
    return {"samples": seen, "wall_samples_per_s": seen / wall, "cpu_samples_per_s": seen / max(cpu, 1e-9)}


def _time_indexed(data_dir, split: str, limit: int) -> dict:
    dataset = IndexedPlateDataset(data_dir, split)
    count = min(limit, len(dataset))
    order = np.random.default_rng(0).permutation(len(dataset))[:count]  # random access, as a sampler does
    cpu0, start = time.process_time(), time.perf_counter()
    for sid in order:
        dataset[int(sid)]
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
    dataset.close()
    return {"samples": count, "wall_samples_per_s": count / wall, "cpu_samples_per_s": count / max(cpu, 1e-9)}


def _synth_rate(samples: int):
    """Plates/s per core of the synthetic renderer, or None when lpasrn.data.synth does not exist."""
    try:
        from lpasrn.data.synth import synth_throughput
    except ImportError as err:
        # err.name is the module that failed: lpasrn.data.synth itself (absent, or without the
        # function yet) means "not available"; a missing dependency of it is a real error.
        if err.name == "lpasrn.data.synth":
            return None
        raise
    return synth_throughput(samples)


def _print_results(results: dict) -> None:
    data = results["dataset"]
    print(f"dataset: {data['dir']} split={data['split']} samples={data['samples']}; "
          f"torch {results['torch']}, {results['cpu_count']} CPUs, load average {results['load_average']}")
    rows = [("stream reader, num_workers=0 (main process)", results["stream_workers0"]),
            ("stream reader, num_workers=1 (per worker)", results["stream_workers1"]),
            ("indexed reader, pread + decode (per worker)", results["indexed"])]
    for name, r in rows:
        print(f"{name:45s} {r['cpu_samples_per_s']:7.0f} samples/s per CPU-second, "
              f"{r['wall_samples_per_s']:7.0f} samples/s wall")
    synth = results["synth"]
    if synth is None:
        print("synth: not available")
    elif isinstance(synth, (int, float)):
        print(f"synth: {synth:.0f} plates/s per core")
    else:
        print(f"synth: {synth}")


def run(args) -> int:
    torch.set_num_threads(1)  # per-worker numbers: one core each
    results = {"command": "lpasrn bench data" + (f" --data {args.data}" if args.data else "")
               + f" --samples {args.samples}", "torch": torch.__version__, "cpu_count": os.cpu_count(),
               "machine": platform.machine(), "python": platform.python_version(),
               "load_average": " ".join(f"{x:.1f}" for x in os.getloadavg())}
    with tempfile.TemporaryDirectory(prefix="lpasrn-bench-") as tmp:
        data_dir = Path(args.data) if args.data else Path(tmp)
        if not args.data:
            write_random_dataset(data_dir, args.samples, shard_size=max(1, args.samples // 4))
        num = load_manifest(data_dir)["splits"][args.split]["num_samples"]
        results["dataset"] = {"dir": str(args.data or "temporary random plates"), "split": args.split,
                              "samples": num}
        for workers in (0, 1):
            results[f"stream_workers{workers}"] = _time_stream(data_dir, args.split, workers, args.batch_size,
                                                               args.samples)
        results["indexed"] = _time_indexed(data_dir, args.split, args.samples)
    results["synth"] = _synth_rate(min(args.samples, 500))
    _print_results(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, sort_keys=True, default=str) + "\n")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("data", help="reader and synthetic-data throughput",
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", default=None, help="dataset directory (default: a temporary random one)")
    parser.add_argument("--split", default=BENCH_SPLIT, help="split to read")
    parser.add_argument("--samples", type=int, default=4000, help="samples to write/read")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--json", default=None, metavar="OUT", help="also write the results as JSON")
    parser.set_defaults(func=run)
