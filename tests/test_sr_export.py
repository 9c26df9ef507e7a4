"""`lpasrn sr` on folders with bad files, overwrite protection, and ONNX / TorchScript round trips."""
import csv

import numpy as np
import onnxruntime
import pytest
import torch
from PIL import Image

from eval_fixtures import tiny_export
from lpasrn.cli import main as lpasrn_main
from lpasrn.eval.export_cli import example_input
from lpasrn.eval.loading import load_exported_model
from lpasrn.eval.sr_cli import load_lr
from lpasrn.plates import HR_SIZE


@pytest.fixture(scope="module")
def export(tiny_dataset, tmp_path_factory):
    return tiny_export(tiny_dataset, tmp_path_factory)


def make_inputs(folder):
    """Two plate-like crops, a too-wide 200x40 crop, a corrupt .png and a text file."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    sizes = {"plate_a.png": (96, 32), "plate_b.jpg": (150, 52), "wide.png": (200, 40)}
    for name, (width, height) in sizes.items():
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(folder / name)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_sr_folder_processes_good_files_and_reports_the_bad_one(export, tmp_path, capsys):
    inputs, out = make_inputs(tmp_path / "in"), tmp_path / "out"
    status = lpasrn_main(["sr", "--checkpoint", str(export), "--input", str(inputs), "--output", str(out),
                          "--read"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert str(inputs / "broken.png") in captured.err
    assert sorted(p.name for p in out.glob("*.png")) == ["plate_a.png", "plate_b.png", "wide.png"]
    for path in out.glob("*.png"):
        with Image.open(path) as img:
            assert img.size == (HR_SIZE[1], HR_SIZE[0]) and img.mode == "RGB"
    with (out / "readings.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["file"] for r in rows] == ["plate_a.png", "plate_b.png", "wide.png"]
    assert all(0.0 <= float(r["confidence"]) <= 1.0 for r in rows)


def test_sr_output_is_the_generator_on_the_padded_resized_crop(export, tmp_path):
    inputs, out = make_inputs(tmp_path / "in"), tmp_path / "out"
    assert lpasrn_main(["sr", "--checkpoint", str(export), "--input", str(inputs / "wide.png"),
                        "--output", str(out)]) == 0
    lr = load_lr(inputs / "wide.png")
    assert lr.shape == (3, 16, 48)
    # 200x40 has aspect 5: padded with gray rows to 200x67, so the top LR row is plain gray (127).
    assert torch.allclose(lr[:, 0, :], torch.full_like(lr[:, 0, :], 127 / 255), atol=1 / 255)
    model, _ = load_exported_model(export)
    with torch.no_grad():
        expected = (model.generator(lr[None]).clamp(0, 1)[0].permute(1, 2, 0).numpy() * 255).round()
    written = np.asarray(Image.open(out / "wide.png"), dtype=np.float64)
    assert np.abs(written - expected).max() <= 1.0


def test_sr_refuses_to_overwrite_without_force(export, tmp_path, capsys):
    inputs, out = make_inputs(tmp_path / "in"), tmp_path / "out"
    out.mkdir()
    (out / "plate_b.png").write_bytes(b"keep me")
    args = ["sr", "--checkpoint", str(export), "--input", str(inputs), "--output", str(out)]
    assert lpasrn_main(args) == 2
    assert f"{out / 'plate_b.png'} exists" in capsys.readouterr().err
    assert (out / "plate_b.png").read_bytes() == b"keep me" and not (out / "plate_a.png").exists()
    assert lpasrn_main(args + ["--force"]) == 0
    with Image.open(out / "plate_b.png") as img:
        assert img.size == (96, 32)


def test_sr_with_nothing_readable_fails(export, tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "broken.png").write_bytes(b"garbage")
    status = lpasrn_main(["sr", "--checkpoint", str(export), "--input", str(inputs),
                          "--output", str(tmp_path / "o")])
    assert status == 2
    err = capsys.readouterr().err
    assert "no image could be processed" in err and str(inputs / "broken.png") in err


@pytest.mark.parametrize("part", ["generator", "ocr"])
def test_onnx_round_trip_matches_pytorch(export, tmp_path, part):
    out = tmp_path / f"{part}.onnx"
    assert lpasrn_main(["export", "--checkpoint", str(export), "--format", "onnx", "--out", str(out),
                        "--part", part]) == 0
    module = getattr(load_exported_model(export)[0], part)
    inputs = example_input(part, batch=5, seed=3)  # another batch size than the traced one
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    found = session.run(None, {session.get_inputs()[0].name: inputs.numpy()})[0]
    with torch.no_grad():
        expected = module(inputs).numpy()
    assert found.shape == expected.shape
    assert np.abs(found - expected).max() <= 1e-4


@pytest.mark.parametrize("part", ["generator", "ocr"])
def test_torchscript_round_trip_matches_pytorch(export, tmp_path, part):
    out = tmp_path / f"{part}.pt"
    assert lpasrn_main(["export", "--checkpoint", str(export), "--format", "torchscript", "--out", str(out),
                        "--part", part]) == 0
    module = getattr(load_exported_model(export)[0], part)
    traced = torch.jit.load(str(out))
    inputs = example_input(part, batch=4, seed=5)
    with torch.no_grad():
        assert torch.allclose(traced(inputs), module(inputs), atol=1e-5)


def test_export_refuses_to_overwrite_and_checks_opset(export, tmp_path, capsys):
    out = tmp_path / "g.onnx"
    out.write_bytes(b"old")
    base = ["export", "--checkpoint", str(export), "--format", "onnx", "--out", str(out)]
    assert lpasrn_main(base) == 2
    assert f"{out} exists" in capsys.readouterr().err and out.read_bytes() == b"old"
    assert lpasrn_main(base + ["--force", "--opset", "13"]) == 2
    assert "opset >= 16" in capsys.readouterr().err and out.read_bytes() == b"old"
