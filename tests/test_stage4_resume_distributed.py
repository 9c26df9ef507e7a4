"""Stage 4 (hard mining) across preemption, process counts and corrupt samples: 2-process runs of
the real runner through the SHIPPED accelerate/DeepSpeed files (tests/launching.py).

- A preempted stage 4 (saved mid-epoch, resumed) ends bitwise like the uninterrupted one: confusion,
  miner, class weights, sampling weights and fp32 exports (DDP and ZeRO-2).
- A mid-epoch checkpoint refuses another number of processes, saying what to do; an end-of-epoch
  DDP checkpoint resumes on 1 process and draws what one process draws; ZeRO-2 refuses.
- A corrupt sample is counted and reported; every rank still takes the same number of steps.
"""
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import corrupt_hr, write_tiny_config
from launching import launch_two
from lpasrn.distributed.sampler import CurriculumSampler
from lpasrn.train.train_cli import main as run_main
from test_train_distributed import stages_0_to_3  # noqa: F401  (module fixture: stages 0-3, 1 process)

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(1800)]

STAGE = "stage4_hard_mining"
EXTRA = "train: {log_every: 1, image_every: 100, write_fingerprints: true, preempt_poll_every: 2}"
ARGS = ("--stage", "4", "--set", "data.batch_size=8")  # 48 plates / (8 x 2 ranks): 3 steps per epoch
NUM_TRAIN = 48


def trainer_tensors(checkpoint: Path) -> dict:
    return load_file(str(checkpoint / "trainer_state.safetensors"))


def copy_stages(stages_0_to_3, run_dir: Path) -> Path:
    shutil.copytree(stages_0_to_3, run_dir, ignore=shutil.ignore_patterns("stage4_*"))
    return run_dir


def one_process_draw(weights: torch.Tensor, batch: int, world: int, epoch: int) -> torch.Tensor:
    """The epoch draw one process makes from `weights` (the runner's seed is 0)."""
    return CurriculumSampler(lambda e: weights, NUM_TRAIN, batch, 0, world, seed=0).global_draw(epoch)


@pytest.fixture(scope="module", params=["ddp", "zero2"])
def preempted_pair(request, stages_0_to_3, tiny_dataset, tmp_path_factory):  # noqa: F811
    """(engine, uninterrupted run dir, preempted-and-resumed run dir, copy of the mid-epoch checkpoint)."""
    engine, root = request.param, tmp_path_factory.mktemp(f"stage4-{request.param}")
    straight, preempted = copy_stages(stages_0_to_3, root / "straight"), copy_stages(stages_0_to_3, root / "preempted")
    launch_two(engine, write_tiny_config(root / "a.yaml", tiny_dataset, straight, EXTRA), *ARGS)
    config = write_tiny_config(root / "b.yaml", tiny_dataset, preempted, EXTRA)
    (preempted / "PREEMPT").touch()  # the mark the SLURM batch shell writes on SIGUSR1
    first = launch_two(engine, config, *ARGS)
    assert "preempted" in first.stdout
    checkpoints = preempted / STAGE / "checkpoints"
    assert [p.name for p in checkpoints.iterdir()] == ["epoch-0000-step-000002"]
    mid = root / "mid-epoch"
    shutil.copytree(checkpoints / "epoch-0000-step-000002", mid)
    launch_two(engine, config, *ARGS, "--resume", "auto")
    return engine, straight, preempted, mid


def test_preempted_stage4_ends_bitwise_like_the_uninterrupted_one(preempted_pair):
    engine, straight, preempted, mid = preempted_pair
    saved = trainer_tensors(mid)
    # the save came between syncs: 2 steps x 8 plates x 2 ranks of deltas, summed, not folded
    assert int(saved["miner.deltas"][0].sum()) == 32 and int(saved["miner.counters"][0].sum()) == NUM_TRAIN
    a = trainer_tensors(straight / STAGE / "checkpoints" / "epoch-0002")
    b = trainer_tensors(preempted / STAGE / "checkpoints" / "epoch-0002")
    assert {"confusion.counts", "miner.counters", "miner.ema_accuracy", "class_weights",
            "sampling_weights"} <= set(a) and a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert int(a["miner.counters"][0].sum()) == NUM_TRAIN + 2 * NUM_TRAIN  # scoring pass + 2 epochs
    assert int(a["confusion.counts"].sum()) > 0
    export_a = load_file(str(straight / STAGE / "best" / "model.safetensors"))
    export_b = load_file(str(preempted / STAGE / "best" / "model.safetensors"))
    assert export_a.keys() == export_b.keys() and all(torch.equal(export_a[k], export_b[k]) for k in export_a)
    for rank in (0, 1):  # fp32 master weights and BN buffers of the last epoch, on each rank
        name = f"fingerprints/epoch-0002.rank-{rank}.json"
        print_a = json.loads((straight / STAGE / name).read_text())["hashes"]
        print_b = json.loads((preempted / STAGE / name).read_text())["hashes"]
        assert print_a == print_b


def test_resume_on_another_number_of_processes(preempted_pair, tiny_dataset, tmp_path, capsys):
    engine, straight, _, mid = preempted_pair
    run_dir = tmp_path / "run"
    shutil.copytree(straight, run_dir, ignore=shutil.ignore_patterns("epoch-0002"))
    config = write_tiny_config(tmp_path / "cfg.yaml", tiny_dataset, run_dir, EXTRA)
    assert run_main(["--config", config, *ARGS, "--resume", str(mid)]) == 2  # 1 process
    err = capsys.readouterr().err
    assert "mid-epoch by 2 processes; this run has 1" in err and "end-of-epoch checkpoint" in err
    epoch_end = run_dir / STAGE / "checkpoints" / "epoch-0001"
    code = run_main(["--config", config, *ARGS, "--resume", str(epoch_end)])
    if engine != "ddp":  # DeepSpeed's optimizer state is partitioned by rank: refused, with the way out
        assert code == 2
        err = capsys.readouterr().err
        assert "under DeepSpeed" in err and "by 2 processes; this run has 1" in err and "best" in err
        return
    assert code == 0
    before, after = trainer_tensors(epoch_end), trainer_tensors(run_dir / STAGE / "checkpoints" / "epoch-0002")
    seen = (after["miner.counters"][0] - before["miner.counters"][0]).long()
    draw = one_process_draw(before["sampling_weights"], batch=8, world=1, epoch=1)
    assert draw.numel() == NUM_TRAIN and torch.equal(seen, torch.bincount(draw, minlength=NUM_TRAIN))


def test_corrupt_sample_is_counted_in_stage4_on_every_rank(stages_0_to_3, tiny_dataset, tmp_path):  # noqa: F811
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    bad = [3, 4, 5, 6, 7, 30]  # both ranks' scoring shares and, surely, some draws
    keys = [name.split(":")[1] for name in corrupt_hr(data, bad)]
    run_dir = copy_stages(stages_0_to_3, tmp_path / "run")
    proc = launch_two("ddp", write_tiny_config(tmp_path / "cfg.yaml", data, run_dir, EXTRA), *ARGS)
    reports = [line for line in proc.stdout.splitlines() if "corrupt training sample(s) skipped" in line]
    assert {line.split("rank ")[1][0] for line in reports} == {"0", "1"}, proc.stdout[-3000:]
    named = sum(line.count(key) for line in reports for key in keys)
    counted = sum(int(line.split(": ")[1].split()[0]) for line in reports)
    assert counted > len(bad) and named >= min(counted, 10 * len(reports))  # scoring + draws, each named
    final = trainer_tensors(run_dir / STAGE / "checkpoints" / "epoch-0002")
    seen = final["miner.counters"][0]
    assert int(seen[bad].sum()) == 0 and int(seen.sum()) > 0  # never read, never counted
    prints = run_dir / STAGE / "fingerprints"
    ranks = [json.loads((prints / f"epoch-0002.rank-{r}.json").read_text())["hashes"] for r in (0, 1)]
    assert ranks[0] == ranks[1]  # same steps on both ranks, same synced state
