"""launch/slurm/train.sbatch against a real SLURM (the local single-node cluster that
../shared/slurm/local-cluster.sh starts; CI starts it in .ci/run): preemption by USR1 to the batch
shell, mid-epoch checkpoint, requeue, automatic resume, and the same final weights as an
uninterrupted job.

The reference is a second job of the same script without the signal, not an in-process run: a
2-process DDP run sees other per-rank batches than a 1-process run, so only a 2-process run of the
same launch path is bitwise comparable.
"""
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import write_tiny_config
from lpasrn.train.train_cli import main as run_main

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(420)]

REPO = Path(__file__).resolve().parents[1]
SBATCH = REPO / "launch" / "slurm" / "train.sbatch"
START_CLUSTER = "bash ../shared/slurm/local-cluster.sh (as root, from the repository root)"
TERMINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
            "DEADLINE")
# 2 epochs of 12 steps per rank (48 plates / 2 ranks / batch 2), a poll at every step.
OVERRIDES = ["--stage", "1", "--set", "stages.warmup.epochs=2", "--set", "data.batch_size=2",
             "--set", "train.preempt_poll_every=1"]
FINAL = Path("stage1_warmup") / "checkpoints" / "epoch-0002" / "model.safetensors"


@pytest.fixture(scope="module", autouse=True)
def slurm_cluster():
    """Fail (not skip) when there is no SLURM to talk to: these tests are part of CI."""
    if shutil.which("sbatch") is None:
        pytest.fail(f"sbatch not found: start the local SLURM cluster first with {START_CLUSTER}")
    try:
        states = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail(f"sinfo did not answer in 20 s: is slurmctld running? Start it with {START_CLUSTER}")
    if states.returncode != 0 or not re.search(r"idle|mixed|alloc", states.stdout):
        pytest.fail(f"no usable SLURM node ({states.stdout.strip()} {states.stderr.strip()}): "
                    f"start the local cluster with {START_CLUSTER}")


@pytest.fixture(scope="module")
def stage0(tiny_dataset, tmp_path_factory):
    """Stage 0's export, trained in-process: the starting point of the stage-1 jobs."""
    root = tmp_path_factory.mktemp("slurm_stage0")
    config = write_tiny_config(root / "cfg.yaml", tiny_dataset, root / "run")
    assert run_main(["--config", config, "--stage", "0"]) == 0
    return root / "run" / "stage0_pretrain"


def submit(log: Path, config: str) -> str:
    env = {**os.environ, "LPASRN_MODE": "cpu-ddp", "LPASRN_GPUS_PER_NODE": "2", "LPASRN_ROOT": str(REPO),
           "LPASRN_PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    env.pop("LPASRN_PREEMPT_FILE", None)  # the script's own per-job mark is what is under test
    cmd = ["sbatch", "--parsable", "--job-name=lpasrn-test", f"--chdir={REPO}", f"--output={log}",
           str(SBATCH), "--config", config, *OVERRIDES]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().split(";")[0]


def job_info(job: str) -> dict:
    cmd = ["scontrol", "show", "job", "-o", job]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def read_log(log: Path) -> str:
    return log.read_text(errors="replace").replace("\r", "\n") if log.exists() else ""


def wait_for(what: str, check, job: str, log: Path, timeout: float) -> dict:
    """Poll until check(job_info) holds; fail with the job's state and log tail on timeout or on a
    terminal state that does not satisfy it."""
    deadline = time.monotonic() + timeout
    while True:
        info = job_info(job)
        if check(info):
            return info
        if info.get("JobState") in TERMINAL or time.monotonic() > deadline:
            pytest.fail(f"job {job}: waited for {what}; state {info.get('JobState')} restarts "
                        f"{info.get('Restarts')} after {timeout:.0f} s at most\n"
                        f"--- log ---\n{read_log(log)[-4000:]}")
        time.sleep(0.2)


def test_preempted_job_saves_requeues_and_ends_like_an_uninterrupted_one(stage0, tiny_dataset, tmp_path):
    run_dirs = {name: tmp_path / name for name in ("straight", "preempted")}
    jobs, logs = {}, {}
    for name, run_dir in run_dirs.items():
        shutil.copytree(stage0, run_dir / "stage0_pretrain")
        logs[name] = tmp_path / f"{name}.log"
    try:
        # Both jobs at once (one CPU each): the reference needs nothing from the preempted one.
        for name, run_dir in run_dirs.items():
            config = write_tiny_config(tmp_path / f"{name}.yaml", tiny_dataset, run_dir)
            jobs[name] = submit(logs[name], config)
        job, log = jobs["preempted"], logs["preempted"]

        # The runner's first line: srun is running and the batch shell sits in its wait loop with the
        # trap set. From here training needs more than a second for its 24 steps, and the runner
        # stops at the first poll after the mark appears: well before the end of the run.
        wait_for("the runner to start", lambda i: "lpasrn: DistributedType" in read_log(log), job, log, 180)
        assert "DistributedType.MULTI_CPU x2" in read_log(log)  # not a silent 1-process fallback
        subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True, timeout=30)

        wait_for("the requeue", lambda i: i.get("JobState") == "PENDING" and i.get("Restarts") == "1",
                 job, log, 120)
        first = read_log(log)
        assert "USR1: preemption requested" in first and "lpasrn: preempted" in first
        assert "requeueing" in first, first[-3000:]
        checkpoints = run_dirs["preempted"] / "stage1_warmup" / "checkpoints"
        saved = sorted(p.name for p in checkpoints.iterdir())
        # The newest checkpoint (names sort in save order) is a mid-epoch one: the stop came at a
        # poll inside an epoch (almost always the first), not at an epoch end.
        assert re.fullmatch(r"epoch-000[01]-step-\d{6}", saved[-1]), saved
        assert (checkpoints / saved[-1] / "COMPLETE").is_file()
        assert not Path(f"/tmp/lpasrn-preempt-{job}").exists()  # served and removed by rank 0

        # A requeued job waits for its BeginTime (minutes): release it now, but not within the second
        # of the requeue: slurmd revokes the old instance's credential with a 1-second timestamp and
        # refuses ("Job credential revoked") a launch whose credential is not strictly newer.
        time.sleep(2)
        subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True, timeout=30)
        info = wait_for("the resumed run to finish", lambda i: i.get("JobState") == "COMPLETED",
                        job, log, 180)
        assert info["Restarts"] == "1" and info["ExitCode"] == "0:0"
        assert f"job {job} restart 1]: srun exited with status 0" in read_log(log)

        ref = wait_for("the reference run to finish", lambda i: i.get("JobState") == "COMPLETED",
                       jobs["straight"], logs["straight"], 180)
        assert ref["Restarts"] == "0" and "USR1" not in read_log(logs["straight"])
    finally:
        for j in jobs.values():
            if job_info(j).get("JobState") not in TERMINAL:
                subprocess.run(["scancel", j], timeout=30)

    straight = load_file(str(run_dirs["straight"] / FINAL))
    resumed = load_file(str(run_dirs["preempted"] / FINAL))
    assert straight.keys() == resumed.keys()
    differ = [k for k in straight if not torch.equal(straight[k], resumed[k])]
    assert not differ, f"resumed weights differ from the uninterrupted job in {differ[:8]}"
