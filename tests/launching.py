"""Two-process launches of the real runner through the SHIPPED accelerate/DeepSpeed files.

`launch_two(engine, ...)` runs `accelerate launch --config_file launch/accelerate/<engine>.yaml
--num_processes 2 launch/run.py ...` and asserts that the runner really ran as that engine with 2
processes, so a launch that silently fell back to one process or to plain DDP fails instead of
passing. On this CPU machine the only addition a user also needs is ACCELERATE_USE_CPU=1 for DDP
(DeepSpeed must run WITHOUT it, or it is switched off).
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

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
