"""`lpasrn data merge`: several imported datasets become one shard set, sids dense over the union."""
from __future__ import annotations

import numpy as np
import pytest

from fixtures_formats import write_rodosol_source, write_ufpr_source
from lpasrn.cli import main
from lpasrn.data.read_indexed import IndexedPlateDataset
from lpasrn.data.shards import load_manifest, verify_shards
from lpasrn.errors import LpasrnError
from lpasrn.data.merge_cli import merge


def samples(data_dir, split) -> list[dict]:
    dataset = IndexedPlateDataset(data_dir, split)
    try:
        return [dataset[sid] for sid in range(len(dataset))]
    finally:
        dataset.close()


def test_merge_two_datasets_keeps_every_sample_source_and_track(tmp_path, capsys):
    write_ufpr_source(tmp_path / "ufpr-src")
    write_rodosol_source(tmp_path / "rodosol-src")
    for fmt in ("ufpr", "rodosol"):
        assert main(["data", "import", fmt, str(tmp_path / f"{fmt}-src"), "--out", str(tmp_path / fmt)]) == 0
    assert main(["data", "merge", str(tmp_path / "ufpr"), str(tmp_path / "rodosol"), "--out",
                 str(tmp_path / "both"), "--shard-size", "2"]) == 0
    assert "merged 2 dataset(s), 7 sample(s) (test 3, train 3, val 1)" in capsys.readouterr().out
    assert verify_shards(tmp_path / "both") == []
    settings = load_manifest(tmp_path / "both")["settings"]
    assert [(i["name"], i["format"]) for i in settings["inputs"]] == [("ufpr", "ufpr"), ("rodosol", "rodosol")]
    for split in ("train", "val", "test"):
        parts = samples(tmp_path / "ufpr", split) if split != "val" else []
        parts += samples(tmp_path / "rodosol", split)
        merged = samples(tmp_path / "both", split)
        assert [s["sid"] for s in merged] == list(range(len(parts)))  # dense over the union
        for original, copy in zip(parts, merged):
            assert (copy["text"], copy["source"], copy["layout"]) == \
                (original["text"], original["source"], original["layout"])
            assert copy["track"] == (f"ufpr/{original['track']}" if original["track"] else None)
            assert np.array_equal(copy["hr"].numpy(), original["hr"].numpy())
            assert np.array_equal(copy["lr"].numpy(), original["lr"].numpy())


def test_merge_refuses_inputs_with_the_same_name_and_non_datasets(tmp_path):
    write_rodosol_source(tmp_path / "src")
    assert main(["data", "import", "rodosol", str(tmp_path / "src"), "--out", str(tmp_path / "a" / "data")]) == 0
    (tmp_path / "b").mkdir()
    with pytest.raises(LpasrnError, match="two inputs are named 'data'"):
        merge([tmp_path / "a" / "data", tmp_path / "a" / "data"], tmp_path / "out")
    with pytest.raises(LpasrnError, match=str(tmp_path / "b")):
        merge([tmp_path / "a" / "data", tmp_path / "b"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_verify_shards_finds_flipped_truncated_and_missing_shards_and_merge_refuses(tmp_path):
    write_rodosol_source(tmp_path / "src")
    data = tmp_path / "data"
    assert main(["data", "import", "rodosol", str(tmp_path / "src"), "--out", str(data)]) == 0
    assert verify_shards(data) == []
    flipped, truncated, missing = (data / f"{split}-000000.tar" for split in ("train", "val", "test"))
    raw = bytearray(flipped.read_bytes())
    raw[700] ^= 0x01  # one bit inside the first member: same size, other sha256
    flipped.write_bytes(bytes(raw))
    truncated.write_bytes(truncated.read_bytes()[:-512])
    missing.unlink()
    assert sorted(verify_shards(data)) == sorted([f"{flipped}: size or sha256 differs from the manifest",
                                                  f"{truncated}: size or sha256 differs from the manifest",
                                                  f"{missing}: missing"])
    with pytest.raises(LpasrnError, match=f"input {data} is damaged, nothing merged: .*{flipped.name}"):
        merge([data], tmp_path / "out")
    assert not (tmp_path / "out").exists()
