"""Importers: every format round-trips through the shard writer and the indexed reader pixel-exactly,
and every kind of bad input is reported with its path and reason (or stops a --strict import)."""
from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from fixtures_formats import (noise_image, scene_with_plate, truncate_file,
                              write_folder_source, write_lrlpr_source, write_rodosol_source,
                              write_split_source)
from lpasrn.cli import main
from lpasrn.data.importers import iter_records
from lpasrn.data.importers.common import perspective_coefficients, order_corners, rectify
from lpasrn.data.readers import IndexedPlateDataset
from lpasrn.data.records import PlateRecord, RejectedRecord
from lpasrn.data.shards import DatasetWriter, load_manifest
from lpasrn.errors import LpasrnError


def as_uint8(tensor) -> np.ndarray:
    return (tensor * 255).round().byte().permute(1, 2, 0).numpy()


def round_trip(items, out: Path):
    """Write importer items to shards, read them back, assert texts and pixels are unchanged."""
    records, rejected = defaultdict(list), []
    with DatasetWriter(out, {"test": "round trip"}, shard_size=2) as writer:
        for split, record in items:
            if isinstance(record, RejectedRecord):
                rejected.append(record)
                continue
            writer.write(split, record)
            records[split].append(record)
    for split, expected in records.items():
        dataset = IndexedPlateDataset(out, split)
        assert len(dataset) == len(expected)
        for sid, record in enumerate(expected):
            sample = dataset[sid]
            assert (sample["text"], sample["layout"], sample["source"], sample["track"]) == \
                (record.text, record.layout, record.source, record.track)
            assert np.array_equal(as_uint8(sample["hr"]), np.asarray(record.hr))
            assert np.array_equal(as_uint8(sample["lr"]), np.asarray(record.lr))
        dataset.close()
    return dict(records), rejected


def texts_by(records: dict, key) -> dict:
    return {key(r): r.text for split_records in records.values() for r in split_records}


def test_split_format_round_trip(tmp_path):
    texts = write_split_source(tmp_path / "src")
    records, rejected = round_trip(iter_records("split", tmp_path / "src" / "split.txt"), tmp_path / "out")
    assert rejected == []
    assert texts_by(records, lambda r: r.source.split("/")[-1].split("_")[0]) == texts
    assert {split: len(r) for split, r in records.items()} == {"train": 2, "val": 1, "test": 1}
    assert records["train"][1].layout == "mercosur"  # BRA2E19
    # A folder holding split.txt is accepted as well.
    assert len(list(iter_records("split", tmp_path / "src"))) == 4


def test_rodosol_round_trip_rectified_and_deterministic(tmp_path):
    texts = write_rodosol_source(tmp_path / "src")
    records, rejected = round_trip(iter_records("rodosol", tmp_path / "src", seed=3), tmp_path / "out")
    assert rejected == []
    assert texts_by(records, lambda r: r.source.removeprefix("rodosol:")) == texts
    for record in (r for split in records.values() for r in split):
        centre = np.asarray(record.hr)[8:24, 30:66].reshape(-1, 3).mean(axis=0)
        assert np.allclose(centre, (250, 200, 20), atol=12), "HR is not the rectified plate"
    again = [r for _, r in iter_records("rodosol", tmp_path / "src", seed=3)]
    first = {r.source: r for split in records.values() for r in split}
    assert all(np.array_equal(np.asarray(r.lr), np.asarray(first[r.source].lr)) for r in again)


def test_rodosol_split_file_rejects_missing_and_unlisted(tmp_path):
    write_rodosol_source(tmp_path / "src", split_file=False)
    split_file = tmp_path / "mine.txt"
    split_file.write_text("./src/images/cars-br/img_000001.jpg;training\nsrc/images/cars-me/img_010001.jpg;testing\n"
                          "src/images/cars-br/img_000099.jpg;validation\n")
    items = list(iter_records("rodosol", tmp_path / "src", split_file=split_file))
    kept = {r.source: split for split, r in items if isinstance(r, PlateRecord)}
    assert kept == {"rodosol:images/cars-br/img_000001.jpg": "train", "rodosol:images/cars-me/img_010001.jpg": "test"}
    rejected = {Path(r.path).name: r.reason for _, r in items if isinstance(r, RejectedRecord)}
    assert rejected["img_000099.jpg"] == "file named in split file mine.txt does not exist"
    assert rejected["img_010002.jpg"].startswith("not listed in split file")


def test_folder_round_trip(tmp_path):
    texts = write_folder_source(tmp_path / "src")
    records, rejected = round_trip(iter_records("folder", tmp_path / "src"), tmp_path / "out")
    assert rejected == []
    assert texts_by(records, lambda r: r.source.removeprefix("folder:")) == texts
    assert [r.text for r in records["val"]][:1] == ["BCD2345"]


def test_rectify_maps_corners_and_straightens_a_plate():
    corners = [(30, 12), (150, 30), (146, 80), (26, 60)]
    coefficients = perspective_coefficients(order_corners(corners), 120, 50)
    a, b, c, d, e, f, g, h = coefficients
    for (x, y), (u, v) in zip([(0, 0), (120, 0), (120, 50), (0, 50)], corners):
        w = g * x + h * y + 1
        assert np.allclose(((a * x + b * y + c) / w, (d * x + e * y + f) / w), (u, v))
    scene = scene_with_plate(180, 100, corners, seed=0, colour=(0, 0, 255))
    plate = np.asarray(rectify(scene, [corners[3], corners[1], corners[0], corners[2]]))
    inner = plate[3:-3, 3:-3].reshape(-1, 3)
    assert (np.abs(inner.astype(int) - (0, 0, 255)).max(axis=1) < 40).mean() > 0.97


# ---------------------------------------------------------------- bad input

def rejections(items) -> dict[str, str]:
    return {Path(r.path).name: r.reason for _, r in items if isinstance(r, RejectedRecord)}


def test_bad_records_are_rejected_with_path_and_reason(tmp_path):
    src = tmp_path / "src"
    write_split_source(src)
    images = src / "images"
    truncate_file(images / "p0_lr.png")
    (images / "p1_hr.txt").write_text("type: car\n")
    (images / "p2_hr.txt").write_text("plate: AB#12\n")
    (images / "p3_hr.txt").unlink()
    with (src / "split.txt").open("a") as handle:
        handle.write("images/gone_hr.png;images/gone_lr.png;training\nimages/p0_hr.png;images/p0_lr.png;later\n")
    items = list(iter_records("split", src / "split.txt"))
    assert not any(isinstance(r, PlateRecord) for _, r in items)
    reasons = rejections(items)
    assert reasons["p0_hr.png"].startswith("unreadable or truncated image p0_lr.png")
    assert reasons["p1_hr.png"] == f"missing plate text ({images / 'p1_hr.txt'} line 'plate:')"
    assert "characters outside 0-9A-Z: '#'" in reasons["p2_hr.png"]
    assert reasons["p3_hr.png"] == f"annotation file not found: {images / 'p3_hr.txt'}"
    assert reasons["gone_hr.png"] == (f"file named in split file split.txt does not exist: images/gone_hr.png "
                                      f"(looked in the working directory {Path.cwd()} and in {src})")
    assert reasons["split.txt:6"] == "unknown phase 'later' (expected training, validation or testing)"


def test_folder_empty_text_size_and_aspect_mismatch(tmp_path):
    src = tmp_path / "src"
    write_folder_source(src, [("a.png", "", "train"), ("b.png", "BCD2345", "val"), ("c.png", "CDE3F45", "test")])
    noise_image(120, 40, 5).save(src / "lr" / "b.png")    # LR as large as HR: not a x2 pair
    noise_image(30, 30, 6).save(src / "lr" / "c.png")     # square LR for a 3:1 HR
    noise_image(120, 40, 7).save(src / "hr" / "extra.png")  # no CSV row
    reasons = rejections(iter_records("folder", src))
    assert reasons["a.png"].endswith("empty plate text")
    assert reasons["b.png"] == "LR/HR size mismatch: HR 120x40 is 1.00x LR 120x40, expected 1.5..2.5x"
    assert reasons["c.png"].startswith("LR/HR aspect mismatch: HR 120x40 (aspect 3.00) vs LR 30x30")
    assert reasons["extra.png"] == "no row in labels.csv"


def test_lrlpr_rejects_bad_corners_and_missing_text(tmp_path):
    lrlpr = tmp_path / "lrlpr"
    write_lrlpr_source(lrlpr)
    a, b = lrlpr / "train/Scenario-A/Brazilian/track_00001", lrlpr / "train/Scenario-B/Mercosur/track_00001"
    notes = json.loads((a / "annotations.json").read_text())
    del notes["corners"]["hr-001.png"]["top-right"]
    (a / "annotations.json").write_text(json.dumps(notes))
    (b / "annotations.json").write_text(json.dumps({"corners": {}}))
    (a / "hr-002.png").unlink()
    bad = {r.path: r.reason for _, r in iter_records("lrlpr", lrlpr) if isinstance(r, RejectedRecord)}
    assert bad[str(a / "lr-001.png")] == "corners of hr-001.png lack top-right"
    assert bad[str(a / "lr-002.png")] == "no matching hr-002 image for lr-002.png"
    assert bad[str(b / "annotations.json")].startswith("missing plate text")


@pytest.mark.parametrize("fmt", ["split", "rodosol", "ufpr", "lrlpr"])
def test_empty_source_is_an_error(tmp_path, fmt):
    (tmp_path / "split.txt").write_text("\n")
    with pytest.raises(LpasrnError, match="no records found"):
        list(iter_records(fmt, tmp_path))


# ---------------------------------------------------------------- CLI

def cli(args, capsys) -> tuple[int, str, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_wrong_path_and_unknown_format_are_one_line(tmp_path, capsys):
    code, _, err = cli(["data", "import", "rodosol", str(tmp_path / "nope"), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and err.strip().splitlines() == [f"lpasrn: error: {tmp_path / 'nope'}: no such file or directory"]
    code, _, err = cli(["data", "import", "pascal", str(tmp_path), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "unknown import format 'pascal'" in err
    code, _, err = cli(["data", "import", "split", str(tmp_path), "--out", str(tmp_path / "o"),
                        "--split-file", str(tmp_path / "s.txt")], capsys)
    assert code == 2 and "--split-file does not apply to format 'split'" in err
    assert not (tmp_path / "o").exists()


def write_two_bad_split_source(src: Path) -> None:
    write_split_source(src)
    truncate_file(src / "images" / "p1_hr.png")
    (src / "images" / "p3_hr.txt").write_text("plate: \n")


def test_cli_default_mode_skips_lists_and_writes_rejected_csv(tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "data"
    write_two_bad_split_source(src)
    code, stdout, _ = cli(["data", "import", "split", str(src / "split.txt"), "--out", str(out)], capsys)
    assert code == 0
    with (out / "rejected.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [Path(r["path"]).name for r in rows] == ["p1_hr.png", "p3_hr.png"]
    assert rows[0]["reason"].startswith("unreadable or truncated image p1_hr.png")
    assert rows[1]["reason"].endswith("empty plate text")
    for row in rows:
        assert f"{row['path']}: {row['reason']}" in stdout
    settings = load_manifest(out)["settings"]
    assert settings["format"] == "split" and settings["rejected"] == 2
    assert settings["counts"] == {"train": 1, "val": 1}


def test_cli_strict_stops_at_first_bad_record_and_leaves_no_dataset(tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "data"
    write_two_bad_split_source(src)
    code, _, err = cli(["data", "import", "split", str(src), "--out", str(out), "--strict"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1
    assert lines[0].startswith(f"lpasrn: error: {src / 'images' / 'p1_hr.png'}: unreadable or truncated image")
    assert "p3_hr" not in lines[0]
    assert not out.exists() and list(tmp_path.glob(".data*")) == []
