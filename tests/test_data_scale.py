"""Data at scale: the binary index (opened once per process, no offsets in the JSON), a bounded number
of open shard files, running out of descriptors is not a corrupt shard, and format-1 manifests."""
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from lpasrn.bench.data_bench import write_random_dataset
from lpasrn.data import shard_index
from lpasrn.data.coverage import epoch_coverage
from lpasrn.data.readers import IndexedPlateDataset, StreamReader
from lpasrn.data.shards import MANIFEST_NAME, load_manifest
from lpasrn.errors import LpasrnError


@pytest.fixture(scope="module")
def many_shards(tmp_path_factory):
    """400 shards of one plate each: more shards than a 256-descriptor process may hold open."""
    out = tmp_path_factory.mktemp("many") / "ds"
    write_random_dataset(out, 400, seed=2, shard_size=1, split="train")
    return out


def test_manifest_keeps_no_per_plate_offsets_and_stays_small(tmp_path):
    write_random_dataset(tmp_path / "ds", 200, seed=1, shard_size=50, split="train")
    text = (tmp_path / "ds" / MANIFEST_NAME).read_text()
    split = json.loads(text)["splits"]["train"]
    assert "members" not in split and split["index"]["records"] == 200
    # Per-shard entries only: the JSON does not grow with the number of plates in a shard.
    assert len(text) < 2000, len(text)
    records = np.load(tmp_path / "ds" / split["index"]["file"], mmap_mode="r")
    assert isinstance(records, np.memmap) and records.shape == (200,)
    assert records["shard"].tolist() == [sid // 50 for sid in range(200)]


def test_index_is_opened_once_per_process_and_reopened_when_rewritten(tmp_path):
    data = tmp_path / "ds"
    write_random_dataset(data, 12, seed=1, shard_size=4, split="val")
    before = shard_index.LOADS["count"]
    readers = [IndexedPlateDataset(data, "val") for _ in range(5)]  # e.g. one per epoch or stage
    assert shard_index.LOADS["count"] == before + 1
    assert all(r._records is readers[0]._records for r in readers)
    first = readers[0][3]
    write_random_dataset(data, 12, seed=9, shard_size=4, split="val")  # rewritten in place
    fresh = IndexedPlateDataset(data, "val")
    assert shard_index.LOADS["count"] == before + 2
    assert not torch.equal(fresh[3]["hr"], first["hr"])


def test_format1_manifest_with_json_offsets_still_reads(tmp_path):
    data = tmp_path / "ds"
    write_random_dataset(data, 9, seed=4, shard_size=4, split="train")
    expected = [IndexedPlateDataset(data, "train")[sid] for sid in range(9)]
    manifest = json.loads((data / MANIFEST_NAME).read_text())
    records = np.load(data / "train.index.npy")
    split = manifest["splits"]["train"]
    del split["index"]
    split["members"] = {"shard": records["shard"].tolist()}
    for column, field in enumerate(("hr", "lr", "json")):
        split["members"][f"{field}_offset"] = records["offset"][:, column].tolist()
        split["members"][f"{field}_size"] = records["size"][:, column].tolist()
    manifest["format"] = "lpasrn-shards/1"
    (data / "train.index.npy").unlink()
    (data / MANIFEST_NAME).write_text(json.dumps(manifest))
    load_manifest(data)
    old = IndexedPlateDataset(data, "train")
    assert all(torch.equal(old[sid]["hr"], expected[sid]["hr"]) for sid in range(9))


def test_truncated_index_is_a_clear_error(tmp_path):
    data = tmp_path / "ds"
    write_random_dataset(data, 6, seed=4, shard_size=4, split="train")
    path = data / "train.index.npy"
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(LpasrnError, match="train.index.npy.*truncated or replaced"):
        IndexedPlateDataset(data, "train")


def _run_limited(script: str, nofile: int) -> subprocess.CompletedProcess:
    """Run `script` in a fresh interpreter whose descriptor limit is `nofile` (as `ulimit -n`)."""
    prelude = textwrap.dedent(f"""
        import os, resource
        resource.setrlimit(resource.RLIMIT_NOFILE, ({nofile}, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
        def open_fds():
            return len(os.listdir("/proc/self/fd"))
    """)
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(script)],
                          capture_output=True, text=True, timeout=300)


def test_400_shards_read_under_ulimit_256_with_bounded_descriptors(many_shards):
    proc = _run_limited(f"""
        import random
        from lpasrn.data.readers import IndexedPlateDataset
        ds = IndexedPlateDataset({str(many_shards)!r}, "train", max_open_files=64)
        sids = list(range(len(ds))) * 2
        random.Random(0).shuffle(sids)
        peak = 0
        for sid in sids:
            assert ds[sid]["sid"] == sid
            peak = max(peak, ds.open_files)
        print("PEAK", peak, "FDS", open_fds())
    """, nofile=256)
    assert proc.returncode == 0, proc.stderr[-2000:]
    peak = int(proc.stdout.split()[1])
    assert peak == 64, proc.stdout


def test_running_out_of_descriptors_is_not_reported_as_a_corrupt_shard(many_shards):
    proc = _run_limited(f"""
        from lpasrn.data.readers import CorruptSampleError, IndexedPlateDataset
        from lpasrn.errors import LpasrnError
        ds = IndexedPlateDataset({str(many_shards)!r}, "train")
        hog = []
        try:
            while True:
                hog.append(os.open("/dev/null", os.O_RDONLY))
        except OSError:
            pass
        try:
            ds[7]
        except CorruptSampleError as err:
            print("CORRUPT", err)
        except LpasrnError as err:
            print("LIMIT", err)
    """, nofile=128)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("LIMIT") and "not a corrupt shard" in proc.stdout, proc.stdout


def test_stream_reader_reads_the_same_manifest_without_offsets(many_shards):
    reader = StreamReader(many_shards, "train", batch_size=50)
    assert sorted(s for b in reader for s in b["sid"].tolist()) == list(range(400))


@pytest.fixture(scope="module")
def eight_shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("cover") / "ds"
    write_random_dataset(out, 80, seed=1, shard_size=10, split="train")
    return out


@pytest.mark.parametrize("buffer", [4, 10])
def test_resampled_epoch_reads_every_shard_before_any_twice(eight_shards, buffer):
    seen = []
    for rank in range(2):
        reader = StreamReader(eight_shards, "train", 5, seed=0, rank=rank, world_size=2, num_workers=2,
                              mode="resampled", shuffle_buffer=buffer)
        seen += [s for b in reader for s in b["sid"].tolist()]
    coverage = len(set(seen)) / 80
    # The replay without bytes agrees with the readers exactly.
    assert coverage == epoch_coverage(eight_shards, "train", 5, 2, 2, shuffle_buffer=buffer)
    # Shards drawn with replacement covered 0.62 (buffer 4) and 0.69 (buffer 10) here.
    assert coverage >= {4: 0.9, 10: 0.85}[buffer], coverage


def test_paper_defaults_cover_most_of_an_epoch(tmp_path):
    from lpasrn.bench.scale_bench import write_simulated_split
    from lpasrn.config import DataConfig

    shard_size = DataConfig().synth_shard_size
    write_simulated_split(tmp_path / "paper", 20_000, shard_size)
    # configs/lpasrn.yaml: 20,000 plates, batch 64, 8 ranks x 4 workers, the reader's default buffer.
    coverage = epoch_coverage(tmp_path / "paper", "train", 64, 8, 4)
    assert coverage >= 0.88, coverage  # 0.70 with shards of 1,000 and a 1,000-plate buffer


def test_verify_reports_a_changed_index(tmp_path):
    from lpasrn.data.shards import verify_shards

    data = tmp_path / "ds"
    write_random_dataset(data, 6, seed=4, shard_size=4, split="train")
    assert verify_shards(data) == []
    path = data / "train.index.npy"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 1  # same size, one size field off by one
    path.write_bytes(bytes(raw))
    assert verify_shards(data) == [f"{path}: size or sha256 differs from the manifest"]
