"""Synthetic plates: reproducible from (seed, split, index), valid texts and layouts, plate colours, CLI."""
import argparse
import json
import re

import numpy as np
import pytest

from lpasrn.data import synth_cli
from lpasrn.data.shards import encode_png
from lpasrn.data.synth import render_plate, sample_rng, synth_records
from lpasrn.data.synth_plate import render_plate_face
from lpasrn.plates import ASPECT, ASPECT_TOLERANCE, HR_SIZE, LAYOUTS, LR_SIZE, detect_layout, validate_text


def _png_pairs(records):
    return [(encode_png(r.hr), encode_png(r.lr), r.text, r.layout) for r in records]


def test_same_seed_same_bytes_other_seed_other_bytes():
    first = _png_pairs(synth_records(4, seed=3, split="train"))
    assert _png_pairs(synth_records(4, seed=3, split="train")) == first
    other_seed = _png_pairs(synth_records(4, seed=4, split="train"))
    other_split = _png_pairs(synth_records(4, seed=3, split="val"))
    for pair, seed_pair, split_pair in zip(first, other_seed, other_split):
        assert pair[:2] != seed_pair[:2] and pair[:2] != split_pair[:2]


def test_a_record_depends_only_on_seed_split_and_index():
    whole = _png_pairs(synth_records(5, seed=9, split="test", degradation="realistic"))
    tail = _png_pairs(synth_records(2, seed=9, split="test", degradation="realistic", start=3))
    assert tail == whole[3:]


def test_records_have_the_contracted_shape_text_and_layout():
    records = list(synth_records(12, seed=1, split="train"))
    assert {r.layout for r in records} == {"brazilian", "mercosur"}
    for r in records:
        assert r.hr.size == (HR_SIZE[1], HR_SIZE[0]) and r.lr.size == (LR_SIZE[1], LR_SIZE[0])
        assert r.source == "synthetic" and r.track is None
        assert validate_text(r.text) == r.text and detect_layout(r.text) == r.layout
        pattern = LAYOUTS[r.layout].replace("L", "[A-Z]").replace("N", "[0-9]")
        assert re.fullmatch(pattern, r.text)


@pytest.mark.parametrize("fraction, layout", [(0.0, "brazilian"), (1.0, "mercosur")])
def test_mercosur_fraction_picks_the_layout(fraction, layout):
    assert {r.layout for r in synth_records(6, seed=2, split="x", mercosur_fraction=fraction)} == {layout}


def test_mercosur_face_has_a_blue_top_band_and_brazilian_a_grey_plate():
    rng = np.random.default_rng(0)
    mercosur = np.asarray(render_plate_face("BRA2E19", "mercosur", rng), dtype=float)
    band = mercosur[3:12, 60:80].reshape(-1, 3).mean(axis=0)  # inside the band, left of BRASIL
    assert band[2] > band[0] + 80 and band[2] > band[1] + 60
    below = mercosur[-8:-4, 60:80].reshape(-1, 3).mean(axis=0)  # white plate under the characters
    assert below.min() > 180
    grey = np.asarray(render_plate_face("ABC1234", "brazilian", rng), dtype=float)
    top = grey[3:12, 60:80].reshape(-1, 3).mean(axis=0)
    assert np.ptp(top) < 20 and 100 < top.mean() < 230


def test_render_plate_crop_needs_no_padding():
    rng = sample_rng(0, "train", 0)
    for layout in LAYOUTS:
        crop = render_plate("ABC1D23" if layout == "mercosur" else "ABC1234", layout, rng, size=None)
        assert abs(crop.width / crop.height - ASPECT) <= ASPECT_TOLERANCE
        assert 100 <= crop.width <= 230


def _run_synth(out_dir, seed):
    parser = argparse.ArgumentParser()
    synth_cli.register(parser.add_subparsers())
    args = parser.parse_args(["synth", "--out", str(out_dir), "--train", "7", "--val", "3", "--test", "2",
                              "--seed", str(seed), "--shard-size", "4", "--degradation", "realistic"])
    assert args.func(args) == 0


def test_synth_command_twice_gives_identical_shards(tmp_path, capsys):
    _run_synth(tmp_path / "a", seed=5)
    _run_synth(tmp_path / "b", seed=5)
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "b").iterdir())
    assert "train-000001.tar" in names and "manifest.json" in names
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    settings = manifest["settings"]
    assert settings["generator"] == "synthetic" and settings["seed"] == 5
    assert settings["counts"] == {"train": 7, "val": 3, "test": 2}
    assert settings["degradation"]["name"] == "realistic" and "jpeg_quality" in settings["degradation"]["params"]
    assert {name: split["num_samples"] for name, split in manifest["splits"].items()} == \
        {"train": 7, "val": 3, "test": 2}
    assert "train:       7 plates" in capsys.readouterr().out
    _run_synth(tmp_path / "c", seed=6)
    assert (tmp_path / "c" / "train-000000.tar").read_bytes() != (tmp_path / "a" / "train-000000.tar").read_bytes()
