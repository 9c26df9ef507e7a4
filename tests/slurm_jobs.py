"""Jobs of the shipped launch/slurm/train.sbatch on a real SLURM cluster, for tests/test_slurm*.py.

The cluster is the local two-node one of scripts/slurm-local.sh (two slurmd on this host), which
`bash scripts/test.sh` starts and stops. Where SLURM cannot be provided (not root and not
installed) the tests skip with the reason; a cluster that is there but unusable fails them.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SBATCH = REPO / "launch" / "slurm" / "train.sbatch"
START = "bash scripts/slurm-local.sh start (as root)"
TERMINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
            "DEADLINE", "PREEMPTED")
RANK_RE = re.compile(r"lpasrn-rank: rank (\d+)/(\d+) node (\S+) machine_rank (\d+) local_rank \d+ "
                     r"DistributedType\.(\w+) cpus (\d+) slurm_cpus_per_task (\S+)")


def require_two_node_cluster() -> None:
    """Skip where SLURM cannot be provided; fail where a cluster should answer and does not."""
    reason = os.environ.get("LPASRN_SLURM_UNAVAILABLE")
    if reason:
        pytest.skip(f"SLURM cannot be provided here: {reason}")
    if shutil.which("sbatch") is None:
        pytest.skip(f"SLURM is not installed (no sbatch): run `bash scripts/test.sh` or {START} as root")
    try:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail(f"sinfo did not answer in 20 s: is slurmctld running? Start it with {START}")
    usable = [line.split()[0] for line in out.stdout.splitlines() if re.search(r" (idle|mixed|alloc)", line)]
    if out.returncode != 0 or len(set(usable)) < 2:
        pytest.fail(f"these tests need 2 usable SLURM nodes, sinfo shows: {out.stdout.strip()} "
                    f"{out.stderr.strip()} (the local cluster: {START})")


def submit(log: Path, config: str, args: list[str], mode: str = "cpu-ddp", cpus_per_task: int = 1) -> str:
    """sbatch the shipped script on 2 nodes, one task (and one process) per node."""
    env = {**os.environ, "LPASRN_MODE": mode, "LPASRN_GPUS_PER_NODE": "1", "LPASRN_ROOT": str(REPO),
           "LPASRN_PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline",
           "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(REPO / ".torch_extensions"))}
    env.pop("LPASRN_PREEMPT_FILE", None)  # the script's own per-job mark is what is under test
    cmd = ["sbatch", "--parsable", "--job-name=lpasrn-test", "--nodes=2", f"--cpus-per-task={cpus_per_task}",
           f"--chdir={REPO}", f"--output={log}", str(SBATCH), "--config", config, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().split(";")[0]


def job_info(job: str) -> dict:
    cmd = ["scontrol", "show", "job", "-o", job]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def cancel(jobs) -> None:
    """scancel every job that has not ended (called from `finally`, so a failing test leaves none)."""
    for job in jobs:
        if job_info(job).get("JobState") not in TERMINAL:
            subprocess.run(["scancel", job], timeout=30)


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


def release_requeued(job: str, log: Path, restarts: int) -> None:
    """Start a requeued job now instead of after its BeginTime. Not within the second of the requeue:
    slurmd revokes the old credential with a 1-second timestamp and refuses ("Job credential
    revoked") a launch whose credential is not strictly newer."""
    wait_for(f"requeue number {restarts}",
             lambda i: i.get("JobState") == "PENDING" and i.get("Restarts") == str(restarts), job, log, 120)
    time.sleep(2)
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True, timeout=30)


def ranks(log_text: str) -> dict[int, dict]:
    """The per-rank layout lines of a job log (the last start's), keyed by process index."""
    found = {}
    for rank, world, node, machine, kind, cpus, per_task in RANK_RE.findall(log_text):
        found[int(rank)] = {"world": int(world), "node": node, "machine_rank": int(machine), "type": kind,
                            "cpus": int(cpus), "cpus_per_task": per_task}
    return found


def assert_two_nodes(log_text: str, kind: str) -> dict[int, dict]:
    """Rank 0 and rank 1 ran on different SLURM nodes as machine_rank 0 and 1 of 2 processes."""
    layout = ranks(log_text)
    assert sorted(layout) == [0, 1], log_text[-3000:]
    assert {r["world"] for r in layout.values()} == {2}
    assert {r["type"] for r in layout.values()} == {kind}
    assert layout[0]["machine_rank"] == 0 and layout[1]["machine_rank"] == 1, layout
    assert layout[0]["node"] != layout[1]["node"], layout
    assert f"DistributedType.{kind} x2" in log_text  # the runner's own summary line agrees
    return layout
