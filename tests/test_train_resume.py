"""Hand-off between stages, resume equivalence (end of epoch and mid-epoch preemption), and the
runner's bad-input messages. Runs the real runner in-process on tiny shards."""
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import corrupt_hr, write_tiny_config
from lpasrn.train.train_cli import main as run_main


def run(config, *extra) -> int:
    return run_main(["--config", str(config), *extra])


def weights(path: Path) -> dict:
    return load_file(str(path))


def assert_same(a: dict, b: dict, prefix: str = "") -> None:
    keys = [k for k in a if k.startswith(prefix)]
    assert keys and all(torch.equal(a[k], b[k]) for k in keys)


@pytest.fixture(scope="module")
def stage01(tiny_dataset, tmp_path_factory):
    """A run dir holding finished stages 0 and 1 (warmup with 2 epochs, for resume tests)."""
    root = tmp_path_factory.mktemp("stage01")
    config = write_tiny_config(root / "cfg.yaml", tiny_dataset, root / "run")
    assert run(config, "--stage", "0") == 0
    assert run(config, "--stage", "1", "--set", "stages.warmup.epochs=2") == 0
    return root, config


def copy_run(stage01, tmp_path, keep=("stage0_pretrain",)) -> Path:
    root, _ = stage01
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name in keep:
        shutil.copytree(root / "run" / name, run_dir / name)
    return run_dir


def test_next_stage_starts_from_previous_best(stage01, tiny_dataset, tmp_path):
    run_dir = copy_run(stage01, tmp_path, keep=("stage0_pretrain", "stage1_warmup"))
    config = write_tiny_config(tmp_path / "cfg.yaml", tiny_dataset, run_dir)
    assert run(config, "--stage", "2", "--set", "stages.lcofl.lr=0.0") == 0
    start = weights(run_dir / "stage1_warmup" / "best" / "model.safetensors")
    after = weights(run_dir / "stage2_lcofl" / "best" / "model.safetensors")
    assert_same(start, after)  # lr 0: the export is exactly the weights the stage started from


def test_resume_after_epoch_equals_uninterrupted(stage01, tiny_dataset, tmp_path):
    """A finished stage continued with more epochs (`--resume auto`) equals one that ran them all.
    Under a constant lr: a cosine spans the configured epochs, so 1 epoch then 2 is another schedule
    than 2 straight (the cosine's resume is the mid-epoch test below, same total)."""
    constant = ["--set", "stages.warmup.lr_schedule=constant", "--set", "stages.warmup.warmup_fraction=0"]
    runs = {}
    for name in ("straight", "resumed"):
        (tmp_path / name).mkdir()
        run_dir = copy_run(stage01, tmp_path / name)  # stage 0 only: stage 1 runs here
        config = write_tiny_config(tmp_path / f"{name}.yaml", tiny_dataset, run_dir)
        if name == "resumed":  # "stopped" after epoch 1
            assert run(config, "--stage", "1", "--set", "stages.warmup.epochs=1", *constant) == 0
        resume = ["--resume", "auto"] if name == "resumed" else []
        assert run(config, "--stage", "1", "--set", "stages.warmup.epochs=2", *constant, *resume) == 0
        runs[name] = weights(run_dir / "stage1_warmup" / "checkpoints" / "epoch-0002" / "model.safetensors")
    assert_same(runs["straight"], runs["resumed"])


def test_preempted_mid_epoch_resumes_to_the_same_weights(stage01, tiny_dataset, tmp_path, monkeypatch):
    root, _ = stage01
    run_dir = copy_run(stage01, tmp_path)
    config = write_tiny_config(tmp_path / "cfg.yaml", tiny_dataset, run_dir)
    mark = tmp_path / "preempt.mark"
    monkeypatch.setenv("LPASRN_PREEMPT_FILE", str(mark))
    overrides = ["--set", "stages.warmup.epochs=2", "--set", "train.preempt_poll_every=2"]
    mark.touch()  # as the SLURM batch shell does on SIGUSR1; seen at the first poll (step 2)
    assert run(config, "--stage", "1", *overrides) == 0  # saves mid-epoch, exits 0
    assert not mark.exists()  # served: the resumed run must not stop again
    saved = sorted(p.name for p in (run_dir / "stage1_warmup" / "checkpoints").iterdir())
    assert saved == ["epoch-0000-step-000002"]
    assert run(config, "--stage", "1", *overrides, "--resume", "auto") == 0
    resumed = weights(run_dir / "stage1_warmup" / "checkpoints" / "epoch-0002" / "model.safetensors")
    straight = weights(root / "run" / "stage1_warmup" / "checkpoints" / "epoch-0002" / "model.safetensors")
    assert_same(straight, resumed)


def test_stage_without_previous_export_says_which_to_run(tiny_dataset, tmp_path, capsys):
    config = write_tiny_config(tmp_path / "cfg.yaml", tiny_dataset, tmp_path / "run")
    assert run(config, "--stage", "2") == 2
    assert "run `--stage 1` first" in capsys.readouterr().err


def test_stage_out_of_range(tiny_dataset, tmp_path, capsys):
    config = write_tiny_config(tmp_path / "cfg.yaml", tiny_dataset, tmp_path / "run")
    assert run(config, "--stage", "7") == 2
    assert "stage 7 is out of range: stages are 0..4 or 'all'" in capsys.readouterr().err


def test_missing_shards_directory_says_how_to_create(tmp_path, capsys):
    config = write_tiny_config(tmp_path / "cfg.yaml", tmp_path / "nowhere", tmp_path / "run")
    assert run(config, "--stage", "0") == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "nowhere") in err and "lpasrn data synth" in err


def test_unknown_config_key_names_it(tiny_dataset, tmp_path, capsys):
    config = write_tiny_config(tmp_path / "cfg.yaml", tiny_dataset, tmp_path / "run")
    assert run(config, "--stage", "0", "--set", "train.grad_clipp=1") == 2
    assert "train.grad_clipp" in capsys.readouterr().err


def test_export_from_another_preset_names_the_keys(stage01, tiny_dataset, tmp_path, capsys):
    run_dir = copy_run(stage01, tmp_path, keep=("stage0_pretrain", "stage1_warmup"))
    config = write_tiny_config(tmp_path / "cfg.yaml", tiny_dataset, run_dir)
    assert run(config, "--stage", "2", "--set", "model.generator_preset=small") == 2
    err = capsys.readouterr().err
    assert "different model preset" in err and "generator." in err


def test_existing_checkpoints_need_resume(stage01, tiny_dataset, tmp_path, capsys):
    run_dir = copy_run(stage01, tmp_path, keep=("stage0_pretrain", "stage1_warmup"))
    config = write_tiny_config(tmp_path / "cfg.yaml", tiny_dataset, run_dir)
    assert run(config, "--stage", "1") == 2
    assert "pass --resume auto" in capsys.readouterr().err


def test_corrupt_training_sample_is_counted_and_reported(stage01, tiny_dataset, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    keys = corrupt_hr(data, (5, 21, 37))  # one per shard: the resampled stream draws shards, so some are met
    run_dir = copy_run(stage01, tmp_path)
    config = write_tiny_config(tmp_path / "cfg.yaml", data, run_dir)
    assert run(config, "--stage", "1") == 0  # the run goes on...
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if "corrupt training sample(s) skipped" in line)
    count = int(line.split(": ")[1].split()[0])  # ...and says how many, naming each by shard and key
    assert count >= 1 and sum(line.count(key) for key in keys) == count


def test_preempted_stage4_resumes_to_the_uninterrupted_state(stage01, tiny_dataset, tmp_path, monkeypatch):
    """Hard mining, one process: a save between two miner syncs must not fold the interval into the
    EMA (it would take an extra EMA step and change every later draw)."""
    root, _ = stage01
    overrides = ["--stage", "4", "--set", "data.batch_size=8", "--set", "train.preempt_poll_every=2"]
    runs = {}
    for name in ("straight", "preempted"):
        run_dir = tmp_path / name
        (run_dir / "stage3_finetune").mkdir(parents=True)  # stage 4 starts from this export
        shutil.copytree(root / "run" / "stage1_warmup" / "best", run_dir / "stage3_finetune" / "best")
        runs[name] = (run_dir / "stage4_hard_mining" / "checkpoints",
                      write_tiny_config(tmp_path / f"{name}.yaml", tiny_dataset, run_dir))
    assert run(runs["straight"][1], *overrides) == 0
    mark = tmp_path / "preempt.mark"
    monkeypatch.setenv("LPASRN_PREEMPT_FILE", str(mark))
    mark.touch()
    checkpoints, config = runs["preempted"]
    assert run(config, *overrides) == 0
    assert sorted(p.name for p in checkpoints.iterdir()) == ["epoch-0000-step-000002"]
    mid = load_file(str(checkpoints / "epoch-0000-step-000002" / "trainer_state.safetensors"))
    # 2 steps of 8 carried over unfolded: the counters are still those of the scoring pass
    assert int(mid["miner.deltas"][0].sum()) == 16 and int(mid["miner.counters"][0].sum()) == 48
    assert run(config, *overrides, "--resume", "auto") == 0
    a, b = (load_file(str(c / "epoch-0002" / "trainer_state.safetensors")) for c in (runs["straight"][0], checkpoints))
    assert {"miner.ema_accuracy", "miner.counters", "sampling_weights", "class_weights"} <= set(a)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert_same(weights(runs["straight"][0] / "epoch-0002" / "model.safetensors"),
                weights(checkpoints / "epoch-0002" / "model.safetensors"))
