"""`lpasrn bench dist`: stage-2 and stage-4 training samples/s with 1 and 2 CPU processes (the
scaling ratio), and the cost of one miner + confusion sync for 10^4..10^6 samples as a fraction of
an epoch. Runs the real runner (`launch/run.py`, `accelerate launch` for 2 processes).
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lpasrn.distributed.confusion import CharacterConfusionTracker
from lpasrn.distributed.miner import HardExampleMiner

REPO = Path(__file__).resolve().parents[2]
SYNC_SIZES = (10_000, 100_000, 1_000_000)


def _launch(processes: int, config: Path, *args: str) -> None:
    run_py = str(REPO / "launch" / "run.py")
    if processes == 1:
        cmd, env = [sys.executable, run_py], dict(os.environ)
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
               str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", run_py]
        env = {**os.environ, "ACCELERATE_USE_CPU": "1"}
    proc = subprocess.run([*cmd, "--config", str(config), *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"run failed ({' '.join(cmd)}):\n{proc.stderr[-3000:]}")


def _rate(stage_dir: Path) -> float:
    rows = [json.loads(line) for line in (stage_dir / "throughput.jsonl").read_text().splitlines()]
    return rows[-1]["samples_per_s"]


def stage_rates(config: Path, steps: int, work: Path) -> dict:
    """Samples/s of stages 2 and 4 for 1 and 2 processes, each from the same stage-1/3 exports."""
    base = work / "base"
    quick = ["--set", f"run_dir={base}", "--set", "train.max_steps_per_epoch=2"]  # exports to start from
    for stage in ("0", "1", "2", "3"):
        _launch(1, config, "--stage", stage, *quick)
    rates = {}
    for stage, name in (("2", "stage2_lcofl"), ("4", "stage4_hard_mining")):
        for processes in (1, 2):
            run_dir = work / f"p{processes}-s{stage}"
            shutil.copytree(base, run_dir, ignore=shutil.ignore_patterns(f"{name}"))
            key = name.split("_", 1)[1]
            _launch(processes, config, "--stage", stage, "--set", f"run_dir={run_dir}",
                    "--set", f"train.max_steps_per_epoch={steps}", "--set", f"stages.{key}.epochs=1")
            rates[f"{name}/{processes}p"] = _rate(run_dir / name)
        rates[f"{name}/scaling"] = rates[f"{name}/2p"] / rates[f"{name}/1p"]
    return rates


def _sync_worker(rank: int, init_file: str, out_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    assert dist.get_world_size() == 2
    timings = {}
    for size in SYNC_SIZES:
        miner, confusion = HardExampleMiner(size), CharacterConfusionTracker()
        samples = []
        for _ in range(5):
            sids = torch.arange(rank, size, 7)  # a realistic share: each rank saw a slice since the last sync
            miner.update(sids, torch.ones_like(sids), torch.full_like(sids, 7), torch.full_like(sids, 7))
            confusion.update(["ABC1234"], ["A8C1234"])
            dist.barrier()
            start = time.perf_counter()
            miner.sync()
            confusion.sync()
            samples.append(time.perf_counter() - start)
        timings[size] = statistics.median(samples)
    if rank == 0:
        Path(out_file).write_text(json.dumps(timings))
    dist.destroy_process_group()


def sync_times(work: Path) -> dict[int, float]:
    out = work / "sync.json"
    mp.spawn(_sync_worker, args=(str(work / "pg_init"), str(out)), nprocs=2, join=True)
    return {int(k): v for k, v in json.loads(out.read_text()).items()}


def run(args) -> int:
    work = Path(tempfile.mkdtemp(prefix="lpasrn-bench-dist-"))
    try:
        rates = stage_rates(Path(args.config), args.steps, work)
        syncs = sync_times(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rate4 = rates["stage4_hard_mining/2p"]
    result = {"config": args.config, "steps": args.steps, "rates": rates,
              "sync_seconds": syncs, "sync_fraction_of_epoch": {n: t / (n / rate4) for n, t in syncs.items()}}
    for key, value in rates.items():
        print(f"{key:<28} {value:8.2f}" + (" (2p / 1p)" if key.endswith("scaling") else " samples/s"))
    for size, seconds in syncs.items():
        print(f"sync of miner + confusion, {size:>9,} samples: {seconds * 1e3:8.2f} ms = "
              f"{result['sync_fraction_of_epoch'][size]:.2e} of a 2-process stage-4 epoch")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("dist", help="1 vs 2 process samples/s and statistics sync cost")
    parser.add_argument("--config", default=str(REPO / "configs" / "quickstart.yaml"))
    parser.add_argument("--steps", type=int, default=20, help="training steps per measured epoch")
    parser.add_argument("--json", default=None)
    parser.set_defaults(func=run)
