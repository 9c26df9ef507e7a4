"""The no-SR control (`lpasrn control lr-ocr`): the stage-0 OCR fine-tuned with CTC on bicubic LR."""
import json

import pytest
import torch
import torch.nn.functional as F

from eval_fixtures import tiny_export
from lpasrn.cli import main as lpasrn_main
from lpasrn.config import load_config
from lpasrn.data.readers import IndexedPlateDataset
from lpasrn.eval.loading import load_exported_ocr
from lpasrn.eval.lr_control import fine_tune, generator_stage_steps, loss_trend, read_split_lr, train_batches
from lpasrn.models.ocr_arch import ctc_loss, greedy_decode


@pytest.fixture(scope="module")
def run(tiny_dataset, tmp_path_factory):
    """(config path, stage-0 export) of the tiny run the evaluation tests share."""
    export = tiny_export(tiny_dataset, tmp_path_factory)
    return str(export.parents[2] / "cfg.yaml"), export.parents[1] / "stage0_pretrain" / "best"


def split_images(data_dir, split):
    dataset = IndexedPlateDataset(data_dir, split)
    samples = [dataset[sid] for sid in range(len(dataset))]
    dataset.close()
    lr, hr = torch.stack([s["lr"] for s in samples]), torch.stack([s["hr"] for s in samples])
    return lr, hr, [s["text"] for s in samples]


def bicubic(lr):
    return F.interpolate(lr, size=(32, 96), mode="bicubic", align_corners=False).clamp(0, 1)


def test_training_batches_are_bicubic_lr_of_the_train_split(tiny_dataset):
    lr, _, texts = split_images(tiny_dataset, "train")
    batches = train_batches(tiny_dataset, 16, seed=0)
    seen = []
    for _ in range(3):  # one pass over 48 train plates
        images, batch_texts, sids = next(batches)
        assert torch.allclose(images, bicubic(lr[sids]), atol=1e-6)
        assert batch_texts == [texts[i] for i in sids.tolist()]
        seen += sids.tolist()
    assert sorted(seen) == list(range(48))


def test_fine_tuning_changes_the_ocr_and_lowers_the_ctc_loss(run, tiny_dataset):
    _, stage0 = run
    torch.manual_seed(0)
    ocr = load_exported_ocr(stage0)
    before = {k: v.clone() for k, v in ocr.state_dict().items()}
    losses = fine_tune(ocr, train_batches(tiny_dataset, 16, seed=0), steps=30, lr=2e-3)
    assert len(losses) == 30
    changed = [k for k, v in ocr.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert any(k.startswith("classifier") for k in changed) and any(k.startswith("rnn") for k in changed)
    trend = loss_trend(losses, window=5)
    assert trend["last"] < 0.8 * trend["first"], trend


def test_the_control_reads_the_test_splits_bicubic_lr(run, tiny_dataset):
    _, stage0 = run
    ocr = load_exported_ocr(stage0)
    # The tiny stage-0 OCR hardly depends on its input yet; a few CTC steps make one that does, so
    # that reading other images (HR, nearest-upscaled LR, another split) changes what is checked.
    torch.manual_seed(0)
    fine_tune(ocr, train_batches(tiny_dataset, 16, seed=0), steps=60, lr=3e-3)
    result = read_split_lr(ocr, tiny_dataset, "test", batch_size=5)
    lr, hr, texts = split_images(tiny_dataset, "test")
    nearest = F.interpolate(lr, size=(32, 96), mode="nearest")
    with torch.no_grad():
        logits = {name: ocr(image) for name, image in (("lr", bicubic(lr)), ("hr", hr), ("nearest", nearest))}
    losses = {name: [float(ctc_loss(x[i:i + 1], [t])) for i, t in enumerate(texts)] for name, x in logits.items()}
    assert result["count"] == 16 and [s["text"] for s in result["samples"]] == texts
    assert [s["reading"] for s in result["samples"]] == greedy_decode(logits["lr"])[0]
    found = [s["ctc_loss"] for s in result["samples"]]
    assert found == pytest.approx(losses["lr"], rel=1e-5, abs=1e-5)
    for other in ("hr", "nearest"):  # what reading the wrong images would give
        assert max(abs(a - b) for a, b in zip(found, losses[other])) > 1e-2, other
    assert result["ctc_loss"] == pytest.approx(sum(losses["lr"]) / 16, rel=1e-5)


def test_default_steps_are_stages_1_to_4_together(run):
    config, _ = run
    # tiny config: warmup 1 + lcofl 1 + finetune 1 + hard_mining 2 epochs, 48 train plates in batches of 16
    assert generator_stage_steps(load_config(config, [])) == 5 * 3


def test_command_writes_word_and_char_accuracy(run, tmp_path, capsys):
    config, stage0 = run
    out = tmp_path / "control.json"
    assert lpasrn_main(["control", "lr-ocr", "--config", config, "--steps", "4", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["steps"] == 4 and result["ocr_export"] == str(stage0)
    for section in ("lr_bicubic", "before_fine_tuning"):
        assert result[section]["count"] == 16
        assert 0.0 <= result[section]["word_acc"] <= 1.0 and 0.0 <= result[section]["char_acc"] <= 1.0
    assert result["lr_bicubic"]["ctc_loss"] != result["before_fine_tuning"]["ctc_loss"]
    assert "no-SR control" in capsys.readouterr().out


def test_missing_stage0_export_is_one_clear_error(run, tmp_path, capsys):
    config, _ = run
    status = lpasrn_main(["control", "lr-ocr", "--config", config, "--set", f"run_dir={tmp_path / 'none'}"])
    assert status == 2
    assert str(tmp_path / "none" / "stage0_pretrain" / "best") in capsys.readouterr().err
