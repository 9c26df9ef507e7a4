"""launch/slurm/train.sbatch with LPASRN_MODE=zero2 on a real two-node SLURM: the shipped
launch/accelerate/zero2.yaml + configs/deepspeed/zero2.json, one process per node (torchrun on each
node started by srun, `--deepspeed_multinode_launcher standard`), finishes a stage; each node's task
gets the job's --cpus-per-task (srun does not inherit it since Slurm 22.05: the script passes it on).
"""
import pytest
from slurm_jobs import assert_two_nodes, cancel, read_log, require_two_node_cluster, submit, wait_for

from conftest import write_tiny_config

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(720)]


@pytest.fixture(scope="module", autouse=True)
def slurm_cluster():
    require_two_node_cluster()


def test_two_node_zero2_job_finishes_a_stage_with_its_cpus(tiny_dataset, tmp_path):
    run_dir = tmp_path / "run"
    config = write_tiny_config(tmp_path / "cfg.yaml", tiny_dataset, run_dir)
    log = tmp_path / "zero2.log"
    args = ["--stage", "0"]
    job = None
    try:
        # Two CPUs per task: the whole of each (two-CPU) node, so nothing else runs beside it. The
        # first DeepSpeed run on a machine builds its CPU communication op (minutes): a long wait.
        job = submit(log, config, args, mode="zero2", cpus_per_task=2)
        info = wait_for("the job to finish", lambda i: i.get("JobState") == "COMPLETED", job, log, 600)
    finally:
        if job is not None:
            cancel([job])
    text = read_log(log)
    assert info["ExitCode"] == "0:0" and "srun exited with status 0" in text, text[-3000:]
    layout = assert_two_nodes(text, "DEEPSPEED")
    # The task on each node is bound to the 2 CPUs the job asked for per task, and knows it.
    assert [layout[r]["cpus"] for r in (0, 1)] == [2, 2], layout
    assert [layout[r]["cpus_per_task"] for r in (0, 1)] == ["2", "2"], layout
    assert (run_dir / "stage0_pretrain" / "best" / "model.safetensors").is_file()
    assert "lpasrn: finished in" in text
