"""Two-process runs of the real runner on CPU: DDP (gloo) and DeepSpeed ZeRO-2, launched through the
shipped launch/accelerate/*.yaml and configs/deepspeed/*.json (tests/launching.py).

Each launch asserts the distributed type and process count the runner reports, so a launch that
silently fell back to one process or to plain DDP fails instead of passing.
"""
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import write_tiny_config
from launching import launch_two
from lpasrn.distributed.sampler import CurriculumSampler
from lpasrn.train.train_cli import main as run_main

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(900)]

@pytest.fixture(scope="module")
def stages_0_to_3(tiny_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    config = write_tiny_config(root / "cfg.yaml", tiny_dataset, root / "run")
    for stage in "0123":
        assert run_main(["--config", config, "--stage", stage]) == 0
    return root / "run"


def fresh_run_dir(stages_0_to_3, tmp_path) -> Path:
    run_dir = tmp_path / "run"
    shutil.copytree(stages_0_to_3, run_dir, ignore=shutil.ignore_patterns("stage4_*"))
    return run_dir


@pytest.mark.parametrize("mode", ["ddp", "zero2"])
def test_stage4_two_processes_same_statistics_on_every_rank(mode, stages_0_to_3, tiny_dataset, tmp_path):
    run_dir = fresh_run_dir(stages_0_to_3, tmp_path)
    config = write_tiny_config(tmp_path / "cfg.yaml", tiny_dataset, run_dir,
                               extra="train: {log_every: 1, image_every: 2, write_fingerprints: true}")
    launch_two(mode, config, "--stage", "4")
    prints = run_dir / "stage4_hard_mining" / "fingerprints"
    for epoch in (1, 2):
        ranks = [json.loads((prints / f"epoch-{epoch:04d}.rank-{r}.json").read_text()) for r in (0, 1)]
        assert all(r["num_processes"] == 2 for r in ranks)
        assert ranks[0]["hashes"] == ranks[1]["hashes"]  # confusion, miner, sampling weights: bitwise
        assert {"miner.counters", "confusion.counts", "sampling_weights"} <= set(ranks[0]["hashes"])
    # ...and equal to one process over the same global draw: in epoch 2 the ranks' disjoint slices
    # together read every sid exactly as often as the one-process draw from the same weights does
    checkpoints = run_dir / "stage4_hard_mining" / "checkpoints"
    before = load_file(str(checkpoints / "epoch-0001" / "trainer_state.safetensors"))
    after = load_file(str(checkpoints / "epoch-0002" / "trainer_state.safetensors"))
    weights = before["sampling_weights"]
    draw = CurriculumSampler(lambda e: weights, 48, 16, 0, 2, seed=0).global_draw(1)  # 1 process
    seen = (after["miner.counters"][0] - before["miner.counters"][0]).long()
    assert draw.numel() == 32 and torch.equal(seen, torch.bincount(draw, minlength=48))
    assert int(before["miner.counters"][0].sum()) == 48 + 32  # scoring pass + epoch 1, none lost
    assert int(after["miner.counters"][3].sum()) > 0 and int(after["confusion.counts"].sum()) > 0
    # The plain fp32 export of a 2-process (or ZeRO) stage starts a 1-process stage.
    export = run_dir / "stage4_hard_mining" / "best" / "model.safetensors"
    next_dir = tmp_path / "next"
    (next_dir / "stage3_finetune" / "best").mkdir(parents=True)
    shutil.copy(export, next_dir / "stage3_finetune" / "best" / "model.safetensors")
    config_1p = write_tiny_config(tmp_path / "cfg1.yaml", tiny_dataset, next_dir)
    assert run_main(["--config", config_1p, "--stage", "4", "--set", "stages.hard_mining.epochs=1"]) == 0
    assert all(v.dtype == torch.float32 for v in load_file(str(export)).values() if v.is_floating_point())


def test_two_process_preemption_resumes_to_the_same_weights(stages_0_to_3, tiny_dataset, tmp_path):
    overrides = ["--stage", "1", "--set", "stages.warmup.epochs=2", "--set", "data.batch_size=4",
                 "--set", "train.preempt_poll_every=2"]
    straight_dir, preempted_dir = tmp_path / "straight", tmp_path / "preempted"
    for run_dir in (straight_dir, preempted_dir):
        run_dir.mkdir()
        shutil.copytree(stages_0_to_3 / "stage0_pretrain", run_dir / "stage0_pretrain")
    launch_two("ddp", write_tiny_config(tmp_path / "a.yaml", tiny_dataset, straight_dir), *overrides)
    config = write_tiny_config(tmp_path / "b.yaml", tiny_dataset, preempted_dir)
    (preempted_dir / "PREEMPT").touch()  # the mark, as the SLURM batch shell writes it on SIGUSR1
    first = launch_two("ddp", config, *overrides)
    assert "preempted" in first.stdout
    saved = [p.name for p in (preempted_dir / "stage1_warmup" / "checkpoints").iterdir()]
    assert saved == ["epoch-0000-step-000002"]
    launch_two("ddp", config, *overrides, "--resume", "auto")
    name = "stage1_warmup/checkpoints/epoch-0002/model.safetensors"
    a, b = load_file(str(straight_dir / name)), load_file(str(preempted_dir / name))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
