"""Reading SR with another OCR than the one trained with it: `lpasrn evaluate --ocr EXPORT` and the
quickstart table's `hr_only_ocr` (the stage-0 OCR, trained on HR only)."""
import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from eval_fixtures import tiny_export
from lpasrn.cli import main as lpasrn_main
from lpasrn.config import load_config
from lpasrn.data.readers import IndexedPlateDataset
from lpasrn.eval.evaluate import make_eval_accelerator
from lpasrn.eval.loading import load_exported_model
from lpasrn.metrics import recognition_summary
from lpasrn.models.ocr_arch import greedy_decode
from lpasrn.train.pipeline import build_lpasrn
from lpasrn.train.train_cli import evaluate_after_training

VARIANTS = ("lr_bicubic", "sr", "hr")


@pytest.fixture(scope="module")
def export(tiny_dataset, tmp_path_factory):
    return tiny_export(tiny_dataset, tmp_path_factory)


@pytest.fixture(scope="module")
def other_export(export, tmp_path_factory):
    """The stage-0 export with its OCR weights moved by seeded noise (3 std: at 0.5 the tiny OCR still
    read every plate as before, and the two tables could not differ): an OCR that reads otherwise."""
    out = tmp_path_factory.mktemp("other") / "best"
    shutil.copytree(export.parent.parent / "stage0_pretrain" / "best", out)
    weights = load_file(str(out / "model.safetensors"))
    generator = torch.Generator().manual_seed(3)
    for key, value in weights.items():
        if key.startswith("ocr.") and value.is_floating_point() and "running" not in key:
            noise = torch.randn(value.shape, generator=generator)
            weights[key] = value + 3.0 * (float(value.std()) if value.numel() > 1 else 1.0) * noise
    save_file(weights, str(out / "model.safetensors"))
    return out


def ocr_of(export_dir):
    """The export's OCR, loaded here without lpasrn.eval's loader."""
    cfg = load_config(str(export_dir / "config.yaml"), [])
    ocr = build_lpasrn(cfg).ocr
    weights = load_file(str(export_dir / "model.safetensors"))
    ocr.load_state_dict({k[4:]: v for k, v in weights.items() if k.startswith("ocr.")})
    return ocr.eval()


@torch.no_grad()
def expected_readings(generator_export, ocr_export, data_dir):
    """{variant: readings in sid order} with the generator of one export and the OCR of another."""
    generator = load_exported_model(generator_export)[0].generator
    ocr = ocr_of(ocr_export)
    dataset = IndexedPlateDataset(data_dir, "test")
    samples = [dataset[sid] for sid in range(len(dataset))]
    dataset.close()
    lr, hr = torch.stack([s["lr"] for s in samples]), torch.stack([s["hr"] for s in samples])
    images = {"lr_bicubic": F.interpolate(lr, size=hr.shape[-2:], mode="bicubic", align_corners=False).clamp(0, 1),
              "sr": generator(lr).clamp(0, 1), "hr": hr}
    return {v: greedy_decode(ocr(image))[0] for v, image in images.items()}, [s["text"] for s in samples]


def test_ocr_flag_reads_with_the_other_exports_ocr(export, other_export, tiny_dataset, tmp_path):
    status = lpasrn_main(["evaluate", "--checkpoint", str(export), "--ocr", str(other_export),
                          "--data", str(tiny_dataset), "--json", str(tmp_path / "e.json")])
    assert status == 0
    result = json.loads((tmp_path / "e.json").read_text())
    other, texts = expected_readings(export, other_export, tiny_dataset)
    own, _ = expected_readings(export, export, tiny_dataset)
    assert result["run"]["ocr"] == str(other_export)
    for variant in VARIANTS:
        assert [s["readings"][variant] for s in result["samples"]] == other[variant], variant
        assert result[variant]["recognition_rate"] == recognition_summary(texts, other[variant])["word_acc"]
    assert any(other[v] != own[v] for v in VARIANTS)  # the two OCRs read differently: the check bites


def test_ocr_export_without_ocr_weights_is_one_clear_error(export, tiny_dataset, tmp_path, capsys):
    bare = tmp_path / "bare"
    shutil.copytree(export, bare)
    weights = load_file(str(bare / "model.safetensors"))
    save_file({k: v for k, v in weights.items() if not k.startswith("ocr.")}, str(bare / "model.safetensors"))
    status = lpasrn_main(["evaluate", "--checkpoint", str(export), "--ocr", str(bare),
                          "--data", str(tiny_dataset)])
    assert status == 2
    err = capsys.readouterr().err
    assert str(bare / "model.safetensors") in err and "no OCR weights" in err


def test_quickstart_table_adds_the_hr_only_ocr_reading(export, other_export, tiny_dataset, tmp_path):
    """eval.json keeps the final OCR's table and adds `hr_only_ocr`, read by run_dir's stage-0 export
    (here an OCR unlike the final one, so that reading with the wrong one cannot pass)."""
    run_dir = tmp_path / "run"
    shutil.copytree(other_export, run_dir / "stage0_pretrain" / "best")
    cfg = load_config(str(export / "config.yaml"), [f"run_dir={run_dir}", f"data.dir={tiny_dataset}"])
    evaluate_after_training(cfg, export, make_eval_accelerator())
    table = json.loads((run_dir / "eval.json").read_text())
    assert set(table) == {"lr_bicubic", "sr", "hr", "hr_only_ocr"}
    assert set(table["hr_only_ocr"]) == set(VARIANTS)
    own, texts = expected_readings(export, export, tiny_dataset)
    stage0, _ = expected_readings(export, other_export, tiny_dataset)
    for variant in VARIANTS:
        for section, readings in ((table[variant], own[variant]), (table["hr_only_ocr"][variant], stage0[variant])):
            summary = recognition_summary(texts, readings)
            assert section["word_acc"] == summary["word_acc"] and section["char_acc"] == summary["char_acc"]
            assert section["count"] == len(texts)
    assert any(table[v] != table["hr_only_ocr"][v] for v in VARIANTS)
