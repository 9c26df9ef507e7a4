"""The main job end to end on CPU: `python launch/run.py --stage all` on a tiny synthetic dataset."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import write_tiny_config
from lpasrn.train.stages import STAGES

REQUIRED_TAGS = [
    "stage0_pretrain/train_loss", "stage0_pretrain/val_char_acc", "stage1_warmup/train_l1",
    "stage1_warmup/val_psnr", "stage2_lcofl/train_lcofl", "stage2_lcofl/val_word_acc",
    "stage3_finetune/train_loss", "stage3_finetune/val_word_acc", "stage4_hard_mining/train_loss",
    "stage4_hard_mining/embedding_loss",
]


@pytest.fixture(scope="module")
def smoke_run(tiny_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("smoke")
    config = write_tiny_config(root / "cfg.yaml", tiny_dataset, root / "run")
    proc = subprocess.run([sys.executable, "launch/run.py", "--stage", "all", "--config", config, "--eval"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "run", proc


def part(weights: dict, prefix: str) -> dict:
    return {k: v for k, v in weights.items() if k.startswith(prefix + ".")}


def export_of(run_dir: Path, index: int) -> dict:
    return load_file(str(run_dir / STAGES[index].prefix / "best" / "model.safetensors"))


def test_every_stage_exports_best_weights_and_config(smoke_run):
    run_dir, proc = smoke_run
    for spec in STAGES:
        best = run_dir / spec.prefix / "best"
        assert (best / "model.safetensors").is_file() and (best / "config.yaml").is_file()
        assert json.loads((best / "metrics.json").read_text())["metric"] == spec.best_metric
    assert (run_dir / "config.yaml").is_file()
    table = json.loads((run_dir / "eval.json").read_text())
    assert set(table) == {"lr_bicubic", "sr", "hr", "hr_only_ocr"}
    assert set(table["hr_only_ocr"]) == {"lr_bicubic", "sr", "hr"}
    for section in (table, table["hr_only_ocr"]):
        assert all(0.0 <= section[k]["word_acc"] <= 1.0 and section[k]["count"] == 16
                   for k in ("lr_bicubic", "sr", "hr"))
    assert "lr_bicubic" in proc.stdout and "word_acc" in proc.stdout and "trained on HR only" in proc.stdout


def test_log_to_a_file_is_one_line_per_epoch(smoke_run):
    """Output that is not a terminal (a SLURM log, `> log`) holds no progress-bar updates and no
    library INFO lines at every checkpoint, but an epoch line for every epoch of every stage."""
    _, proc = smoke_run
    text = proc.stdout + proc.stderr  # (text mode turns a carriage return into a newline)
    assert "it/s]" not in text and "s/it]" not in text, "progress-bar updates in a log file"
    assert not [line for line in text.splitlines() if " INFO accelerate" in line or " INFO DeepSpeed" in line]
    epochs = [line for line in proc.stdout.splitlines() if "] epoch " in line]
    assert len(epochs) >= len(STAGES), proc.stdout[-2000:]


def test_confusion_counts_reach_the_next_stage(smoke_run):
    """Stage 2 (after stage 1, which counts nothing) scores the training split before its first
    step; every later LCOFL stage starts from the counts exported beside the previous best weights."""
    run_dir, proc = smoke_run
    assert "[stage2_lcofl] confusion counts scored on the training split" in proc.stdout
    for spec in STAGES[3:]:
        assert f"[{spec.prefix}] confusion counts carried from " in proc.stdout
    for spec in STAGES[2:]:
        counts = load_file(str(run_dir / spec.prefix / "best" / "confusion.safetensors"))["counts"]
        assert counts.shape == (37, 37) and int(counts.sum()) > 0
    assert not (run_dir / STAGES[1].prefix / "best" / "confusion.safetensors").exists()


def test_lr_follows_the_schedule(smoke_run):
    """Warm-up then cosine: the logged lr rises, then falls towards min_lr_ratio x lr."""
    run_dir, _ = smoke_run
    for events in (run_dir / "tensorboard").rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        if "stage4_hard_mining/lr" in acc.Tags()["scalars"]:
            values = [e.value for e in acc.Scalars("stage4_hard_mining/lr")]
            break
    else:
        raise AssertionError("no stage4_hard_mining/lr scalar")
    peak = max(values)
    assert peak == pytest.approx(1.0e-4, rel=1e-5) and values[0] < peak
    assert values[-1] < 0.2 * peak and values.index(peak) < len(values) // 2


def test_tensorboard_has_the_design_tags(smoke_run):
    run_dir, _ = smoke_run
    tags = set()
    for events in (run_dir / "tensorboard").rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0, "images": 0})
        acc.Reload()
        tags |= set(acc.Tags()["scalars"]) | set(acc.Tags()["images"])
    missing = [t for t in REQUIRED_TAGS if t not in tags]
    assert not missing, f"missing tags {missing}; found {sorted(tags)}"
    assert any(t.endswith("/val_plates") for t in tags)  # the LR | SR | HR grid


def test_ocr_frozen_where_the_table_says(smoke_run):
    run_dir, _ = smoke_run
    exports = [export_of(run_dir, i) for i in range(5)]
    ocr = [part(e, "ocr") for e in exports]
    def same(a: dict, b: dict) -> bool:  # equal non-empty state dicts, key for key
        return bool(a) and a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)
    assert same(ocr[0], ocr[1]) and same(ocr[1], ocr[2])   # stages 1, 2: OCR frozen (BN stats too)
    assert not same(ocr[2], ocr[3])                       # stage 3 fine-tunes the OCR
    assert same(ocr[3], ocr[4])                           # stage 4: frozen again
    gen = [part(e, "generator") for e in exports]
    # stages 1-4 each train the generator: every hand-off changes it
    assert all(not same(gen[i], gen[i + 1]) for i in range(4)) and all(gen)
