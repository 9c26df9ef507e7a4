"""Shard writer and manifest: round trip, deterministic bytes, offsets, dense sids, clear errors."""
import hashlib
import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from lpasrn.bench.data_bench import random_plate_records
from lpasrn.data.shard_index import INDEX_DTYPE
from lpasrn.data.shards import DatasetWriter, load_manifest, verify_shards
from lpasrn.errors import LpasrnError


def _write(out_dir, records_by_split, shard_size=3):
    with DatasetWriter(out_dir, {"seed": 7, "note": "test"}, shard_size=shard_size) as writer:
        sids = {split: [writer.write(split, r) for r in records]
                for split, records in records_by_split.items()}
    return sids, load_manifest(out_dir)


def _tar_members(path):
    with tarfile.open(path) as tar:
        return {info.name: (info, tar.extractfile(info).read()) for info in tar.getmembers()}


def test_round_trip_is_pixel_exact_with_texts_and_dense_sids(tmp_path):
    records = list(random_plate_records(7, seed=1))
    sids, manifest = _write(tmp_path, {"train": records, "val": records[:2]})
    assert sids == {"train": list(range(7)), "val": [0, 1]}
    split = manifest["splits"]["train"]
    assert split["num_samples"] == 7 and [s["num_samples"] for s in split["shards"]] == [3, 3, 1]
    members = {}
    for shard in split["shards"]:
        members.update(_tar_members(tmp_path / shard["name"]))
    for sid, record in enumerate(records):
        key = f"train-{sid:08d}"
        meta = json.loads(members[f"{key}.json"][1])
        assert meta == {"sid": sid, "text": record.text, "layout": record.layout,
                        "source": record.source, "track": record.track}
        for name, image in (("hr", record.hr), ("lr", record.lr)):
            decoded = np.asarray(Image.open(io.BytesIO(members[f"{key}.{name}.png"][1])))
            assert np.array_equal(decoded, np.asarray(image))


def test_same_records_give_identical_bytes_and_manifest_hashes_match(tmp_path):
    records = list(random_plate_records(5, seed=2))
    _, first = _write(tmp_path / "a", {"train": records})
    _, second = _write(tmp_path / "b", {"train": records})
    assert first == second
    assert (tmp_path / "a" / "manifest.json").read_bytes() == (tmp_path / "b" / "manifest.json").read_bytes()
    for shard in first["splits"]["train"]["shards"]:
        data_a = (tmp_path / "a" / shard["name"]).read_bytes()
        assert data_a == (tmp_path / "b" / shard["name"]).read_bytes()
        assert hashlib.sha256(data_a).hexdigest() == shard["sha256"] and len(data_a) == shard["size"]
    assert verify_shards(tmp_path / "a") == []
    # Headers carry nothing from the machine or the clock.
    for info, _ in _tar_members(tmp_path / "a" / "train-000000.tar").values():
        assert (info.mtime, info.uid, info.gid, info.uname, info.gname, info.mode) == (0, 0, 0, "", "", 0o644)


def test_index_offsets_read_each_member_directly(tmp_path):
    records = list(random_plate_records(4, seed=3))
    _, manifest = _write(tmp_path, {"train": records})
    split = manifest["splits"]["train"]
    assert "members" not in split and split["index"]["file"] == "train.index.npy"
    index = np.load(tmp_path / "train.index.npy", mmap_mode="r")
    assert index.dtype == INDEX_DTYPE and index.shape == (4,)
    for sid in range(4):
        shard = split["shards"][int(index["shard"][sid])]["name"]
        tar_members = _tar_members(tmp_path / shard)
        raw = (tmp_path / shard).read_bytes()
        for column, suffix in enumerate(("hr.png", "lr.png", "json")):
            offset, size = int(index["offset"][sid, column]), int(index["size"][sid, column])
            info, data = tar_members[f"train-{sid:08d}.{suffix}"]
            assert (offset, size) == (info.offset_data, info.size)
            assert raw[offset:offset + size] == data


def test_killed_writer_leaves_no_complete_looking_shard(tmp_path):
    records = list(random_plate_records(2, seed=4))
    writer = DatasetWriter(tmp_path, {}, shard_size=10)
    writer.write("train", records[0])
    # Mid-run (as if killed now): only a .partial file, no shard name, no manifest.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train-000000.tar.partial",
                                                           "train.index.npy.raw.partial"]
    with pytest.raises(LpasrnError, match="no manifest.json"):
        load_manifest(tmp_path)
    writer.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json", "train-000000.tar", "train.index.npy"]


def test_missing_dir_or_manifest_names_path_and_synth_command(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(LpasrnError) as err:
        load_manifest(missing)
    assert str(missing) in str(err.value) and "lpasrn data synth --out" in str(err.value)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(LpasrnError, match="malformed manifest.*lpasrn data synth"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "lpasrn-shards/1", "splits": {
        "train": {"num_samples": 2, "shards": [], "members": {}}}}))
    with pytest.raises(LpasrnError, match="malformed manifest.*lacks field"):
        load_manifest(tmp_path)


def test_bad_split_name_is_refused(tmp_path):
    record = next(random_plate_records(1))
    with pytest.raises(LpasrnError, match="split name"):
        DatasetWriter(tmp_path, {}).write("train.v2", record)
