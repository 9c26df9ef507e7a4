"""Each public dataset imported as downloaded: fixture trees shaped like the PUBLISHED releases (sources
cited in fixtures_formats.py), pointed at by their root, with their own split files."""
from __future__ import annotations

import csv
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from fixtures_formats import (PLATE, RODOSOL_PLATES, UFPR_TRACKS, write_lrlpr_source, write_rodosol_source,
                              write_split_scales, write_ufpr_source, write_ufpr_track)
from lpasrn.cli import main
from lpasrn.data.degrade import degrade
from lpasrn.data.importers import iter_records
from lpasrn.data.importers.common import make_lr, stable_seed
from lpasrn.data.importers.lrlpr import LR_ONLY_SKIP
from lpasrn.data.importers.rodosol import MOTORCYCLE_SKIP
from lpasrn.data.records import PlateRecord, RejectedRecord
from lpasrn.data.shards import load_manifest
from lpasrn.eval.sr_cli import list_inputs
from test_importers import round_trip, texts_by


def kept(items) -> list[tuple[str, PlateRecord]]:
    return [(split, r) for split, r in items if isinstance(r, PlateRecord)]


def splits_by_track(items) -> dict[str, set[str]]:
    found = defaultdict(set)
    for split, record in kept(items):
        found[record.track].add(split)
    return dict(found)


def shows_plate(image: Image.Image, rows: slice, cols: slice, atol: float = 20) -> bool:
    centre = np.asarray(image)[rows, cols].reshape(-1, 3).mean(axis=0)
    return bool(np.allclose(centre, PLATE, atol=atol))


def first_frames(items) -> list[PlateRecord]:
    return [r for _, r in kept(items) if r.source.endswith("lr-001.png") or r.source.endswith("lr-001.jpg")]


# ---------------------------------------------------------------- UFPR-SR-Plates

def test_ufpr_release_from_root_with_its_split_file(tmp_path):
    texts = write_ufpr_source(tmp_path / "src")
    items = list(iter_records("ufpr", tmp_path / "src"))
    records, rejected = round_trip(items, tmp_path / "out")
    assert rejected == []
    # Track ids are qualified paths: both folders are plate-001348 but are two tracks.
    assert texts_by(records, lambda r: r.track) == texts
    assert sum(len(r) for r in records.values()) == 4
    phase = {"testing": "test", "training": "train"}
    assert splits_by_track(items) == {track: {phase[p]} for track, _, _, p in UFPR_TRACKS}
    for record in first_frames(items):  # rectified from each frame's own LabelMe corners
        assert shows_plate(record.hr, slice(8, 24), slice(30, 66)), record.source
        assert shows_plate(record.lr, slice(5, 11), slice(15, 33)), record.source


def test_ufpr_split_file_option_overrides_the_root_file(tmp_path):
    src = tmp_path / "src"
    write_ufpr_source(src)
    other = tmp_path / "mine.txt"  # the official line form, phases swapped, one track unlisted
    other.write_text(f"TAN0F36;./{UFPR_TRACKS[0][0]};validation\n")
    items = list(iter_records("ufpr", src, split_file=other))
    assert splits_by_track(items) == {UFPR_TRACKS[0][0]: {"val"}}
    rejected = [r for _, r in items if isinstance(r, RejectedRecord)]
    assert [(Path(r.path).relative_to(src).as_posix(), r.reason) for r in rejected] == \
        [(UFPR_TRACKS[1][0], f"not listed in split file {other}")]


def test_ufpr_one_resolution_folder_with_the_release_split_file(tmp_path):
    src = tmp_path / "src"
    write_ufpr_source(src)
    items = list(iter_records("ufpr", src / "dataset_intelbras_1280X960", split_file=src / "split_all.txt"))
    assert [r for _, r in items if isinstance(r, RejectedRecord)] == []  # the other folder's lines: not ours
    assert splits_by_track(items) == {"mercosur/plate-001348": {"test"}}


def test_ufpr_default_split_never_puts_one_plate_in_two_splits(tmp_path):
    src = tmp_path / "src"
    # The authors' sample split lists AAA9357 in three tracks; here six, plus two other plates.
    tracks = [(f"dataset_intelbras_1920x1080/brazilian/plate-00{2490 + i}", "AAA9357", f"00{4900 + i}", "")
              for i in range(6)] + [("dataset_intelbras_1280X960/mercosur/plate-000001", "TAN0F36", "000009", ""),
                                    ("dataset_intelbras_1280X960/mercosur/plate-000002", "TCH6I40", "000010", "")]
    write_ufpr_source(src, tracks, split_name=None)
    for seed in range(3):
        items = list(iter_records("ufpr", src, seed=seed))
        assert len(kept(items)) == 16
        by_plate = defaultdict(set)
        for split, record in kept(items):
            by_plate[record.text].add(split)
        assert all(len(splits) == 1 for splits in by_plate.values()), (seed, dict(by_plate))


def test_ufpr_bad_tracks_are_named(tmp_path):
    src = tmp_path / "src"
    write_ufpr_source(src, split_name=None)
    first, second = (src / t[0] for t in UFPR_TRACKS)
    next(first.glob("*.txt")).unlink()
    (second / "hr-002.png").unlink()
    (second / "hr-001.json").write_text("{not json")
    reasons = {Path(r.path).relative_to(src).as_posix(): r.reason
               for _, r in iter_records("ufpr", src) if isinstance(r, RejectedRecord)}
    assert reasons[UFPR_TRACKS[0][0]].startswith("expected one plate text file (plate-NNNNNN_TEXT.txt)")
    assert reasons[f"{UFPR_TRACKS[1][0]}/lr-002.png"] == "no matching hr-002 image for lr-002.png"
    assert reasons[f"{UFPR_TRACKS[1][0]}/lr-001.png"].startswith(f"invalid LabelMe corner file {second / 'hr-001.json'}")


# ---------------------------------------------------------------- LRLPR-26

def test_lrlpr_release_from_root(tmp_path):
    texts = write_lrlpr_source(tmp_path / "src")
    skipped = Counter()
    items = list(iter_records("lrlpr", tmp_path / "src", skipped=skipped))
    records, rejected = round_trip(items, tmp_path / "out")
    assert rejected == []
    assert texts_by(records, lambda r: r.track) == texts  # both track_00001, two scenarios: two tracks
    assert sum(len(r) for r in records.values()) == 4
    assert skipped == {LR_ONLY_SKIP: 1}  # test-public: LR only, reported, not rejected
    for record in first_frames(items):
        # The LR plate sits bottom-right of its crop: only the LR's OWN corners bring it to the centre.
        assert shows_plate(record.lr, slice(5, 11), slice(15, 33), atol=30), record.source
        assert shows_plate(record.hr, slice(8, 24), slice(30, 66), atol=30), record.source


def test_lrlpr_split_precedence_file_then_json_then_plate_hash(tmp_path):
    src = tmp_path / "src"
    write_lrlpr_source(src)
    a, b = "train/Scenario-A/Brazilian/track_00001", "train/Scenario-B/Mercosur/track_00001"
    notes = json.loads((src / b / "annotations.json").read_text())
    (src / b / "annotations.json").write_text(json.dumps({**notes, "split": "validation",
                                                          "plate_text": "AVL5215"}))
    by_default = splits_by_track(list(iter_records("lrlpr", src, seed=0)))
    assert by_default[b] == {"val"}
    split_file = tmp_path / "split.txt"
    split_file.write_text(f"./{a};testing\n{b};training\n")
    assert splits_by_track(list(iter_records("lrlpr", src, split_file=split_file))) == {a: {"test"}, b: {"train"}}
    (src / b / "annotations.json").write_text(json.dumps({**notes, "plate_text": "AVL5215"}))
    for seed in range(4):  # same plate in two tracks: one split, whatever the seed
        assert len(set.union(*splits_by_track(list(iter_records("lrlpr", src, seed=seed))).values())) == 1


def test_lrlpr_test_set_exports_lr_crops_for_sr(tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "crops"
    write_lrlpr_source(src, test_tracks=2)
    assert main(["data", "import", "lrlpr", str(src / "test-public"), "--out", str(tmp_path / "x")]) == 2
    assert "--lr-only" in capsys.readouterr().err
    assert main(["data", "import", "lrlpr", str(src), "--out", str(out), "--lr-only"]) == 0
    with (out / "tracks.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["file"], r["track"]) for r in rows] == [
        (f"test-public_track_{t}_lr-00{k}.png", f"test-public/track_{t}") for t in (10001, 10002) for k in (1, 2)]
    assert [p.name for p in list_inputs(out)] == [r["file"] for r in rows]  # `lpasrn sr --input` takes them
    original = np.asarray(Image.open(src / "test-public" / "track_10002" / "lr-001.png"))
    assert np.array_equal(np.asarray(Image.open(out / rows[2]["file"])), original)


# ---------------------------------------------------------------- RodoSol-ALPR

def test_rodosol_release_uses_its_split_and_keeps_cars(tmp_path):
    texts = write_rodosol_source(tmp_path / "src")
    skipped = Counter()
    items = list(iter_records("rodosol", tmp_path / "src", skipped=skipped))
    assert not [r for _, r in items if isinstance(r, RejectedRecord)]
    assert {r.source.removeprefix("rodosol:"): (split, r.text) for split, r in kept(items)} == {
        "images/cars-br/img_000001.jpg": ("train", "ABC1234"), "images/cars-me/img_010001.jpg": ("test", "DEF4G67"),
        "images/cars-me/img_010002.jpg": ("val", "GHI8J90")}
    assert skipped == {MOTORCYCLE_SKIP: 1} and len(texts) == 3
    with_motorcycles = kept(iter_records("rodosol", tmp_path / "src", motorcycles=True))
    assert ("train", "MOT1234") in {(s, r.text) for s, r in with_motorcycles}


def test_rodosol_lr_is_the_paper_degradation_with_a_seed_per_record(tmp_path):
    write_rodosol_source(tmp_path / "src")
    records = [r for _, r in kept(iter_records("rodosol", tmp_path / "src", seed=3))]
    for record in records:
        key = record.source.removeprefix("rodosol:")
        assert shows_plate(record.hr, slice(8, 24), slice(30, 66)), "HR is not the rectified plate"
        assert np.array_equal(np.asarray(record.lr), np.asarray(degrade(record.hr, "paper", seed=stable_seed(key, 3))))
        plain = record.hr.resize(record.lr.size, Image.Resampling.BICUBIC)
        assert np.abs(np.asarray(record.lr, float) - np.asarray(plain, float)).mean() > 3


def test_rodosol_cli_reports_skipped_motorcycles(tmp_path, capsys):
    write_rodosol_source(tmp_path / "src")
    assert main(["data", "import", "rodosol", str(tmp_path / "src"), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert f"using the dataset's split file {tmp_path / 'src' / 'split.txt'}" in out
    assert f"skipped by choice, not errors: 1 {MOTORCYCLE_SKIP}" in out
    settings = load_manifest(tmp_path / "out")["settings"]
    assert settings["skipped"] == {MOTORCYCLE_SKIP: 1} and settings["counts"] == {"test": 1, "train": 1, "val": 1}
    assert len(RODOSOL_PLATES) == 4


# ---------------------------------------------------------------- HR;LR;phase split files

def test_split_file_any_lr_size_paths_from_the_working_directory(tmp_path, monkeypatch):
    texts = write_split_scales(tmp_path)
    split_file = tmp_path / "splits" / "split.txt"
    monkeypatch.chdir(tmp_path)
    items = list(iter_records("split", split_file))
    assert {r.text: s for s, r in kept(items)} == {texts["x1"]: "train", texts["x3"]: "test"}
    for _, record in kept(items):  # the LR of any size is padded and resized like the reference loader
        name = record.source.removeprefix("split:").replace("_hr", "_lr")
        assert np.array_equal(np.asarray(record.lr), np.asarray(make_lr(Image.open(tmp_path / name).convert("RGB"))))
    bounded = {Path(r.path).name: r.reason for _, r in iter_records("split", split_file, min_scale=2.5, max_scale=3.5)
               if isinstance(r, RejectedRecord)}
    assert list(bounded) == ["x1_hr.png"] and bounded["x1_hr.png"].startswith("LR/HR size mismatch")


def test_split_file_missing_path_names_both_places(tmp_path, monkeypatch):
    write_split_scales(tmp_path)
    monkeypatch.chdir(tmp_path / "splits")  # neither the working directory nor the file's folder holds data/
    reasons = [r.reason for _, r in iter_records("split", tmp_path / "splits" / "split.txt")]
    assert reasons[0] == (f"file named in split file split.txt does not exist: data/x1_hr.png (looked in the "
                          f"working directory {tmp_path / 'splits'} and in {tmp_path / 'splits'})")


def test_split_cli_scale_options(tmp_path, monkeypatch, capsys):
    write_split_scales(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["data", "import", "split", "splits/split.txt", "--out", "out", "--max-scale", "2"]) == 0
    settings = load_manifest(tmp_path / "out")["settings"]
    assert settings["counts"] == {"train": 1} and settings["rejected"] == 1
    assert "LR/HR size mismatch: HR 120x40 is 3.0" in capsys.readouterr().out


def test_ufpr_track_folder_itself_is_accepted(tmp_path):
    write_ufpr_track(tmp_path / "plate-000007", "ABC1D23", "000008", seed=1)
    items = list(iter_records("ufpr", tmp_path / "plate-000007"))
    assert [r.track for _, r in kept(items)] == ["plate-000007", "plate-000007"]
