"""`lpasrn evaluate` end to end on a tiny trained export: the report agrees with the metric functions
applied to its own per-sample predictions, and 2 processes give what 1 process gives."""
import json
import os
import socket
import statistics
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from eval_fixtures import FRAMES_PER_TRACK, SINGLES, TRACKS, tiny_export, tracked_dataset
from lpasrn.cli import main as lpasrn_main
from lpasrn.data.readers import IndexedPlateDataset
from lpasrn.eval.fusion import FRAME_COUNTS, RULES, fuse
from lpasrn.eval.loading import load_exported_model
from lpasrn.metrics import psnr, recognition_summary
from lpasrn.losses.ssim import ssim

VARIANTS = ("lr_bicubic", "sr", "hr")
NUM_PLATES = TRACKS * FRAMES_PER_TRACK + SINGLES


@pytest.fixture(scope="module")
def export_and_data(tiny_dataset, tmp_path_factory):
    return tiny_export(tiny_dataset, tmp_path_factory), tracked_dataset(tmp_path_factory)


@pytest.fixture(scope="module")
def one_process(export_and_data, tmp_path_factory):
    export, data = export_and_data
    out = tmp_path_factory.mktemp("evaluate")
    status = lpasrn_main(["evaluate", "--checkpoint", str(export), "--data", str(data), "--split", "test",
                          "--json", str(out / "eval.json"), "--report", str(out / "report"),
                          "--batch-size", "5"])
    assert status == 0
    return json.loads((out / "eval.json").read_text()), out / "report"


def expected_recognition(samples, variant):
    summary = recognition_summary([s["text"] for s in samples], [s["readings"][variant] for s in samples])
    return {k: summary[k] for k in ("recognition_rate", "ge6", "ge5", "char_acc", "count")}


def check_variants(section, samples):
    for variant in VARIANTS:
        got = section[variant]
        assert {k: got[k] for k in ("recognition_rate", "ge6", "ge5", "char_acc", "count")} == \
            expected_recognition(samples, variant), variant
        assert all(0.0 <= got[k] <= 1.0 for k in ("recognition_rate", "ge6", "ge5", "char_acc"))
        if variant != "hr":
            for metric in ("psnr", "ssim"):
                mean = statistics.fmean(s[metric][variant] for s in samples)
                assert got[metric] == pytest.approx(mean, abs=1e-9)


def test_report_numbers_follow_from_its_own_samples(one_process):
    result, _ = one_process
    samples = result["samples"]
    assert [s["sid"] for s in samples] == list(range(NUM_PLATES))
    assert result["run"]["distributed_type"] == "NO" and result["run"]["num_processes"] == 1
    assert result["read_errors"] == []
    check_variants(result, samples)
    for layout, section in result["by_layout"].items():
        check_variants(section, [s for s in samples if s["layout"] == layout])
    assert set(result["by_source"]) == {"tracks", "synthetic"}
    for source, section in result["by_source"].items():
        check_variants(section, [s for s in samples if s["source"].split(":")[0] == source])
    tracks = {}
    for s in samples:
        if s["track"] is not None:
            tracks.setdefault(s["track"], []).append(s)
    assert result["tracks"]["count"] == TRACKS == len(tracks)
    for count in FRAME_COUNTS:
        for variant in VARIANTS:
            for rule in RULES:
                fused = [fuse(rule, [f["readings"][variant] for f in frames],
                              [f["confidences"][variant] for f in frames], count)
                         for frames in tracks.values()]
                expected = recognition_summary([frames[0]["text"] for frames in tracks.values()], fused)
                got = result["tracks"]["frames"][str(count)][variant][rule]
                assert got["recognition_rate"] == expected["recognition_rate"]
                assert got["char_acc"] == expected["char_acc"]


def test_samples_match_the_model_on_the_stored_images(one_process, export_and_data):
    """Per-sample PSNR/SSIM are the metric functions on the images of that sid (no sid mix-up)."""
    result, _ = one_process
    export, data = export_and_data
    model, _ = load_exported_model(export)
    dataset = IndexedPlateDataset(data, "test")
    sids = [0, 7, 21, NUM_PLATES - 1]
    lr = torch.stack([dataset[i]["lr"] for i in sids])
    hr = torch.stack([dataset[i]["hr"] for i in sids])
    dataset.close()
    with torch.no_grad():
        bicubic = F.interpolate(lr, size=hr.shape[-2:], mode="bicubic", align_corners=False)
        images = {"lr_bicubic": bicubic.clamp(0, 1),
                  "sr": model.generator(lr).clamp(0, 1)}
    for variant, image in images.items():
        for row, sid in enumerate(sids):
            sample = result["samples"][sid]
            assert sample["psnr"][variant] == pytest.approx(float(psnr(image, hr)[row]), abs=1e-4)
            expected_ssim = float(ssim(image, hr, reduction="none")[row])
            assert sample["ssim"][variant] == pytest.approx(expected_ssim, abs=1e-5)


def test_report_folder_has_summary_grids_and_heatmap(one_process):
    result, report = one_process
    summary = (report / "summary.md").read_text()
    assert "lr_bicubic" in summary and "## Tracks" in summary and "majority_vote" in summary
    assert json.loads((report / "metrics.json").read_text())["sr"] == result["sr"]
    for name in ("plates_best.png", "plates_worst.png", "confusion_sr.png"):
        with Image.open(report / name) as img:
            assert img.width > 100 and img.height > 100, name


def test_missing_export_is_one_clear_error(tmp_path, export_and_data, capsys):
    _, data = export_and_data
    status = lpasrn_main(["evaluate", "--checkpoint", str(tmp_path / "nope"), "--data", str(data)])
    assert status == 2
    assert str(tmp_path / "nope") in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.distributed
@pytest.mark.timeout(300)
def test_two_processes_equal_one_process(one_process, export_and_data, tmp_path):
    export, data = export_and_data
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), "-m", "lpasrn.cli", "evaluate",
           "--checkpoint", str(export), "--data", str(data), "--split", "test",
           "--json", str(tmp_path / "eval2.json"), "--batch-size", "5"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "distributed_type=MULTI_CPU num_processes=2" in proc.stdout, proc.stdout[-2000:]
    two = json.loads((tmp_path / "eval2.json").read_text())
    one, _ = one_process
    assert two["run"]["distributed_type"] == "MULTI_CPU" and two["run"]["num_processes"] == 2
    assert [s["sid"] for s in two["samples"]] == list(range(NUM_PLATES))
    for a, b in zip(one["samples"], two["samples"]):
        assert {k: a[k] for k in ("text", "layout", "source", "track", "readings")} == \
            {k: b[k] for k in ("text", "layout", "source", "track", "readings")}
        for field in ("psnr", "ssim", "confidences"):
            assert b[field] == pytest.approx(a[field], abs=1e-5), (a["sid"], field)
    for key in ("lr_bicubic", "sr", "hr", "by_layout", "by_source", "tracks", "read_errors"):
        assert_close(two[key], one[key], key)


def assert_close(found, expected, where: str, tol: float = 1e-6) -> None:
    """Nested dicts/lists equal, floats within `tol` (pytest.approx does not nest)."""
    if isinstance(expected, dict):
        assert isinstance(found, dict) and set(found) == set(expected), where
        for key in expected:
            assert_close(found[key], expected[key], f"{where}.{key}", tol)
    elif isinstance(expected, list):
        assert isinstance(found, list) and len(found) == len(expected), where
        for index, (a, b) in enumerate(zip(found, expected)):
            assert_close(a, b, f"{where}[{index}]", tol)
    elif isinstance(expected, float):
        assert found == pytest.approx(expected, abs=tol), where
    else:
        assert found == expected, where
