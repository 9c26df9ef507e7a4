"""Multi-process test helpers: 2-process launches of the real runner through the SHIPPED
accelerate/DeepSpeed files, and `spawn_gloo` for tests of distributed pieces in one gloo group.

`launch_two(engine, ...)` runs `accelerate launch --config_file launch/accelerate/<engine>.yaml
--num_processes 2 launch/run.py ...` and asserts that the runner really ran as that engine with 2
processes, so a launch that silently fell back to one process or to plain DDP fails instead of
passing. On this CPU machine the only addition a user also needs is ACCELERATE_USE_CPU=1 for DDP
(DeepSpeed must run WITHOUT it, or it is switched off).
"""
from __future__ import annotations

import datetime
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch.distributed as dist
import torch.multiprocessing as mp

REPO = Path(__file__).resolve().parents[1]

# engine -> (shipped accelerate config, extra environment, DistributedType the runner must report)
ENGINES = {
    "ddp": ("launch/accelerate/ddp.yaml", {"ACCELERATE_USE_CPU": "1"}, "MULTI_CPU"),
    "zero1": ("launch/accelerate/zero1.yaml", {}, "DEEPSPEED"),
    "zero2": ("launch/accelerate/zero2.yaml", {}, "DEEPSPEED"),
    "zero3": ("launch/accelerate/zero3.yaml", {}, "DEEPSPEED"),
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_two(engine: str, config, *args: str, precision: str = "no", timeout: int = 600,
               check: bool = True) -> subprocess.CompletedProcess:
    """Run launch/run.py with 2 processes; `precision` goes to the LAUNCHER (--mixed_precision), which
    the runner's `train.mixed_precision: auto` must follow. A hang fails by `timeout`."""
    config_file, env_extra, expected = ENGINES[engine]
    env = {**os.environ, **env_extra, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(REPO / ".torch_extensions"))}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / config_file),
           "--num_processes", "2", "--main_process_port", str(free_port()), "--mixed_precision", precision,
           str(REPO / "launch" / "run.py"), "--config", str(config), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
        assert f"DistributedType.{expected} x2" in proc.stdout, proc.stdout[-3000:]
    return proc


def _gloo_rank(rank: int, worker, init_file: str, world_size: int, timeout_s: int, args: tuple) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=timeout_s))
    try:
        worker(rank, *args)
    finally:
        dist.destroy_process_group()


def spawn_gloo(worker, tmp_path: Path, *args, world_size: int = 2, timeout_s: int = 120) -> None:
    """Run `worker(rank, *args)` in `world_size` spawned processes joined in one gloo group (file
    rendezvous under `tmp_path`, a collective that waits longer than `timeout_s` fails); raises when a
    rank fails. `worker` must be a module-level function (it is pickled into the children)."""
    mp.spawn(_gloo_rank, args=(worker, str(tmp_path / "gloo_init"), world_size, timeout_s, args),
             nprocs=world_size, join=True)
