"""launch/slurm/train.sbatch on a real two-node SLURM (scripts/slurm-local.sh: two slurmd on this
host): one process per node over gloo, preempted twice - USR1 to the batch shell (the
`--signal=B:USR1@120` path), then the scheduler's own requeue, which sends SIGTERM to every process -
each time both ranks save a mid-epoch checkpoint and exit 0, the job is requeued and resumes with
`--resume auto`, and it ends with the same weights as an uninterrupted two-node job.

The reference is a second job of the same script without signals, not an in-process run: a
2-process DDP run sees other per-rank batches than a 1-process run, so only a 2-process run of the
same launch path is bitwise comparable.
"""
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from slurm_jobs import (assert_two_nodes, ranks, cancel, job_info, read_log, release_requeued,
                        require_two_node_cluster, submit, wait_for)

from conftest import write_tiny_config
from lpasrn.train.train_cli import main as run_main

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(480)]

# 3 epochs of 12 steps per rank (48 plates / 2 ranks / batch 2), a poll at every step: a stop
# requested after a rank's handler is installed is served long before the run could end.
OVERRIDES = ["--stage", "1", "--set", "stages.warmup.epochs=3", "--set", "data.batch_size=2",
             "--set", "train.preempt_poll_every=1"]
CHECKPOINTS = Path("stage1_warmup") / "checkpoints"
FINAL = CHECKPOINTS / "epoch-0003" / "model.safetensors"
MID_EPOCH = re.compile(r"epoch-000[0-2]-step-\d{6}")


@pytest.fixture(scope="module", autouse=True)
def slurm_cluster():
    require_two_node_cluster()


@pytest.fixture(scope="module")
def stage0(tiny_dataset, tmp_path_factory):
    """Stage 0's export, trained in-process: the starting point of the stage-1 jobs."""
    root = tmp_path_factory.mktemp("slurm_stage0")
    config = write_tiny_config(root / "cfg.yaml", tiny_dataset, root / "run")
    assert run_main(["--config", config, "--stage", "0"]) == 0
    return root / "run" / "stage0_pretrain"


def since_restart(log: Path, job: str, restart: int) -> str:
    """The part of the (appended) job log written by the job's start number `restart`."""
    text = read_log(log)
    start = text.find(f"[job {job} restart {restart}]: cpu-ddp on")
    return text[start:] if start >= 0 else ""


def newest_checkpoint(run_dir: Path) -> Path:
    saved = sorted((run_dir / CHECKPOINTS).iterdir(), key=lambda p: p.stat().st_mtime)
    return saved[-1]


def assert_both_ranks_saved(text: str, checkpoint: Path) -> None:
    """Both ranks served the stop (their own line, exit 0) and wrote their part of one checkpoint."""
    assert MID_EPOCH.fullmatch(checkpoint.name), checkpoint  # a poll inside an epoch, not an epoch end
    assert (checkpoint / "COMPLETE").is_file()
    assert {p.name for p in checkpoint.glob("random_states_*.pkl")} == {"random_states_0.pkl",
                                                                       "random_states_1.pkl"}
    for rank in (0, 1):
        assert f"lpasrn-rank: rank {rank} saved its part of {checkpoint}; exiting 0" in text, text[-3000:]


def test_two_node_job_preempted_by_usr1_and_by_scheduler_ends_like_an_uninterrupted_one(
        stage0, tiny_dataset, tmp_path):
    run_dirs = {name: tmp_path / name for name in ("straight", "preempted")}
    jobs, logs = {}, {}
    for name, run_dir in run_dirs.items():
        shutil.copytree(stage0, run_dir / "stage0_pretrain")
        logs[name] = tmp_path / f"{name}.log"
    try:
        # Both jobs at once (one CPU per node each): the reference needs nothing from the other.
        for name, run_dir in run_dirs.items():
            config = write_tiny_config(tmp_path / f"{name}.yaml", tiny_dataset, run_dir)
            jobs[name] = submit(logs[name], config, OVERRIDES)
        job, log = jobs["preempted"], logs["preempted"]

        # 1. USR1 to the batch shell only. The runner's summary line comes after every rank
        # installed its handlers and joined the process group.
        # both ranks' layout lines: rank 1 may write its line after rank 0's "DistributedType" one
        wait_for("the runner to start on both ranks", lambda i: "lpasrn: DistributedType" in read_log(log)
                 and len(ranks(read_log(log))) == 2, job, log, 180)
        assert_two_nodes(read_log(log), "MULTI_CPU")
        subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True, timeout=30)
        release_requeued(job, log, restarts=1)
        first = since_restart(log, job, 0)
        assert "USR1: preemption requested" in first and "requeueing" in first, first[-3000:]
        first_checkpoint = newest_checkpoint(run_dirs["preempted"])
        assert_both_ranks_saved(first, first_checkpoint)
        assert not Path(f"/tmp/lpasrn-preempt-{job}").exists()  # served and removed by rank 0

        # 2. The scheduler's requeue: SIGTERM to every process of the job, SIGKILL after KillWait.
        wait_for("the first resume", lambda i: "resumed from" in since_restart(log, job, 1), job, log, 180)
        assert f"resumed from {first_checkpoint}" in since_restart(log, job, 1)
        subprocess.run(["scontrol", "requeue", job], check=True, timeout=30)
        release_requeued(job, log, restarts=2)
        second = since_restart(log, job, 1)
        assert "TERM: preemption requested" in second, second[-3000:]
        second_checkpoint = newest_checkpoint(run_dirs["preempted"])
        assert second_checkpoint != first_checkpoint
        assert_both_ranks_saved(second, second_checkpoint)

        info = wait_for("the resumed run to finish", lambda i: i.get("JobState") == "COMPLETED",
                        job, log, 240)
        assert info["Restarts"] == "2" and info["ExitCode"] == "0:0"
        last = since_restart(log, job, 2)
        assert f"resumed from {second_checkpoint}" in last
        assert f"job {job} restart 2]: srun exited with status 0" in last

        ref = wait_for("the reference run to finish", lambda i: i.get("JobState") == "COMPLETED",
                       jobs["straight"], logs["straight"], 240)
        straight_log = read_log(logs["straight"])
        assert ref["Restarts"] == "0" and "preemption requested" not in straight_log
        assert_two_nodes(straight_log, "MULTI_CPU")
    finally:
        cancel(jobs.values())

    straight = load_file(str(run_dirs["straight"] / FINAL))
    resumed = load_file(str(run_dirs["preempted"] / FINAL))
    assert straight.keys() == resumed.keys()
    differ = [k for k in straight if not torch.equal(straight[k], resumed[k])]
    assert not differ, f"resumed weights differ from the uninterrupted job in {differ[:8]}"
    assert job_info(jobs["preempted"]).get("JobState") == "COMPLETED"
