"""SIGTERM as the scheduler sends it (to every process of the job: the rank and its DataLoader
workers) turns into a mid-epoch checkpoint and exit 0, and `--resume auto` then finishes the stage.
No SLURM needed: the signal goes to the process group of a real `launch/run.py` run."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import write_tiny_config
from lpasrn.train.train_cli import main as run_main

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(300)


def workers_ready(pid: int, since: list[float]) -> bool:
    """Two DataLoader workers exist, and they ignore SIGTERM (bit 15 of SigIgn: past worker_init_fn)
    or have had 3 s to get there (if they never do, the signal below kills them and the test fails)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    workers = path.read_text().split() if path.exists() else []
    if len(workers) < 2:
        return False
    since.append(since[-1] if since else time.monotonic())
    ignoring = 0
    for worker in workers:
        try:
            status = Path(f"/proc/{worker}/status").read_text()
        except OSError:
            return False
        ignored = int(status.split("SigIgn:")[1].split()[0], 16)
        ignoring += bool(ignored & (1 << (signal.SIGTERM - 1)))
    return ignoring == len(workers) or time.monotonic() - since[0] > 3


def test_sigterm_to_rank_and_workers_saves_mid_epoch_and_resumes(tiny_dataset, tmp_path):
    run_dir = tmp_path / "run"
    # Two DataLoader workers and 3 epochs of 24 steps with a poll at every step.
    config = write_tiny_config(tmp_path / "cfg.yaml", tiny_dataset, run_dir)
    assert run_main(["--config", config, "--stage", "0"]) == 0
    args = [sys.executable, str(REPO / "launch" / "run.py"), "--config", config, "--stage", "1",
            "--set", "stages.warmup.epochs=3", "--set", "data.batch_size=2", "--set", "data.num_workers=2",
            "--set", "train.preempt_poll_every=1", "--resume", "auto"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "LPASRN_PREEMPT_FILE": str(tmp_path / "mark")}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    try:
        deadline, since = time.monotonic() + 120, []
        # Its DataLoader workers run: training is under way, and the signal must reach them too.
        while not workers_ready(proc.pid, since) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert since, "the run never started its DataLoader workers"
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"no exit 120 s after SIGTERM:\n{proc.communicate()[0][-4000:]}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, out[-4000:]
    assert "lpasrn: preempted" in out and "rank 0 saved its part of" in out, out[-3000:]
    saved = sorted(p.name for p in (run_dir / "stage1_warmup" / "checkpoints").iterdir())
    assert len(saved) == 1 and "-step-" in saved[0], saved  # mid-epoch, long before the run's end

    resumed = subprocess.run(args, capture_output=True, text=True, env=env, timeout=240)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"resumed from {run_dir / 'stage1_warmup' / 'checkpoints' / saved[0]}" in resumed.stdout
    assert (run_dir / "stage1_warmup" / "checkpoints" / "epoch-0003").is_dir()
