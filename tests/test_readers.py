"""Stream and indexed readers: same samples, exact-once epochs, resampled batch counts, corrupt data."""
import json
import logging
import tarfile

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lpasrn.bench.data_bench import random_plate_records, write_random_dataset
from lpasrn.data.read_stream import iter_tar_members
from lpasrn.data.readers import CorruptSampleError, IndexedPlateDataset, StreamReader, collate, decode_sample
from lpasrn.data.shard_index import split_index
from lpasrn.errors import LpasrnError

NUM_SAMPLES = 23  # not a multiple of shard size or batch size: partial shards and batches are exercised


@pytest.fixture
def dataset_dir(tmp_path):
    write_random_dataset(tmp_path / "ds", NUM_SAMPLES, seed=5, shard_size=4)
    return tmp_path / "ds"


def _epoch_sids(reader, epoch):
    reader.set_epoch(epoch)
    batches = list(reader)
    return [sid for b in batches for sid in b["sid"].tolist()], batches


def test_indexed_equals_stream_and_records_for_every_sid(dataset_dir):
    records = list(random_plate_records(NUM_SAMPLES, seed=5))
    indexed = IndexedPlateDataset(dataset_dir, "train")
    assert len(indexed) == NUM_SAMPLES
    seen = 0
    for batch in StreamReader(dataset_dir, "train", batch_size=5):
        for i, sid in enumerate(batch["sid"].tolist()):
            sample = indexed[sid]
            assert torch.equal(sample["hr"], batch["hr"][i]) and torch.equal(sample["lr"], batch["lr"][i])
            for name in ("key", "text", "layout", "source", "track"):
                assert sample[name] == batch[name][i]
            expected_hr = torch.from_numpy(np.array(records[sid].hr)).permute(2, 0, 1).float() / 255
            assert torch.equal(sample["hr"], expected_hr) and sample["text"] == records[sid].text
            seen += 1
    assert seen == NUM_SAMPLES
    assert indexed[0]["hr"].shape == (3, 32, 96) and indexed[0]["lr"].shape == (3, 16, 48)
    assert indexed[0]["hr"].dtype == torch.float32


def test_exact_mode_two_workers_every_sid_once_per_epoch_orders_differ(dataset_dir):
    reader = StreamReader(dataset_dir, "train", batch_size=4, seed=3, num_workers=2)
    order0, batches0 = _epoch_sids(reader, 0)
    order1, _ = _epoch_sids(reader, 1)
    assert sorted(order0) == list(range(NUM_SAMPLES)) and sorted(order1) == list(range(NUM_SAMPLES))
    assert order0 != order1
    reader.set_epoch(0)
    assert len(batches0) == reader.num_batches()
    assert any(len(b["sid"]) < 4 for b in batches0)  # partial batches are kept, not dropped
    assert _epoch_sids(reader, 0)[0] == order0  # same seed and epoch: same order
    assert reader.read_errors.count == 0


def test_resampled_mode_yields_exactly_batches_per_epoch(dataset_dir):
    for workers, per_epoch in ((0, 7), (2, 5)):
        reader = StreamReader(dataset_dir, "train", batch_size=4, num_workers=workers,
                              mode="resampled", batches_per_epoch=per_epoch)
        batches = list(reader)
        assert len(batches) == per_epoch == len(reader)
        assert all(len(b["sid"]) == 4 for b in batches)
    default = StreamReader(dataset_dir, "train", batch_size=4, world_size=2, rank=1, mode="resampled")
    assert len(list(default)) == default.batches_per_epoch == 3  # ceil(23 / (4 * 2))


def _corrupt_png_in_place(dataset_dir, sid):
    """Overwrite the HR png of `sid` with garbage of the same size, at its indexed offset."""
    index = split_index(dataset_dir, "train")
    shard_index, offsets, sizes = index.location(sid)
    shard, offset, size = index.shard_names[shard_index], int(offsets[0]), int(sizes[0])
    with open(dataset_dir / shard, "r+b") as f:
        f.seek(offset)
        f.write(b"\x89PNG garbage" + b"\x00" * (size - 12))
    return shard


def test_corrupt_png_is_reported_by_both_readers_never_dropped_silently(dataset_dir, caplog):
    shard = _corrupt_png_in_place(dataset_dir, sid=6)
    with pytest.raises(CorruptSampleError) as err:
        IndexedPlateDataset(dataset_dir, "train")[6]
    assert (err.value.shard, err.value.key) == (shard, "train-00000006") and shard in str(err.value)
    reader = StreamReader(dataset_dir, "train", batch_size=4, num_workers=2)
    with caplog.at_level(logging.WARNING):
        order, batches = _epoch_sids(reader, 0)
    assert sorted(order) == [s for s in range(NUM_SAMPLES) if s != 6]
    reported = [entry for b in batches for entry in b["corrupt"]]
    assert len(reported) == 1 and reported[0].startswith(f"{shard}:train-00000006:")
    assert reader.read_errors.count == 1 and reader.read_errors.items == reported
    assert "train-00000006" in caplog.text and shard in caplog.text


def test_truncated_shard_is_reported_by_both_readers(dataset_dir):
    path = dataset_dir / "train-000001.tar"  # sids 4..7
    path.write_bytes(path.read_bytes()[:2000])  # cuts inside the first sample's HR png
    reader = StreamReader(dataset_dir, "train", batch_size=8)
    order, batches = _epoch_sids(reader, 0)
    assert sorted(order) == [s for s in range(NUM_SAMPLES) if not 4 <= s <= 7]
    assert reader.read_errors.count == 1
    assert "train-000001.tar:*: shard unreadable" in reader.read_errors.items[0]
    with pytest.raises(CorruptSampleError, match="train-00000005.*train-000001.tar"):
        IndexedPlateDataset(dataset_dir, "train")[5]


def test_decoder_refuses_missing_bad_and_unsafe_members(dataset_dir):
    members = IndexedPlateDataset(dataset_dir, "train").read_members(0)[2]
    assert decode_sample(members, "s.tar", "train-00000000")["sid"] == 0
    cases = [({k: v for k, v in members.items() if k != "lr.png"}, "missing member lr"),
             ({**members, "json": b"{bad"}, "JSONDecodeError"),
             ({**members, "json": json.dumps({"text": "A"}).encode()}, "integer 'sid'"),
             ({**members, "hr.png": members["hr.png"][:100]}, "train-00000000 in shard s.tar"),
             ({**members, "pickle": b"\x80\x04K\x01."}, "unsupported type"),
             ({**members, "pth": b"PK"}, "unsupported type")]
    for bad_members, message in cases:
        with pytest.raises(CorruptSampleError, match=message):
            decode_sample(bad_members, "s.tar", "train-00000000")


def test_indexed_dataset_works_in_dataloader_workers(dataset_dir):
    indexed = IndexedPlateDataset(dataset_dir, "train")
    indexed[0]  # opens a descriptor in this process; workers must open their own
    loader = DataLoader(indexed, batch_size=5, num_workers=2, collate_fn=collate, shuffle=False)
    sids = [sid for batch in loader for sid in batch["sid"].tolist()]
    assert sids == list(range(NUM_SAMPLES))


def test_fast_tar_parser_agrees_with_tarfile(dataset_dir):
    path = dataset_dir / "train-000000.tar"
    with tarfile.open(path) as tar:
        expected = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    assert list(iter_tar_members(path, path.name)) == expected
    raw = bytearray(path.read_bytes())
    raw[10] ^= 0xFF  # a flipped byte in the first header
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="checksum"):
        list(iter_tar_members(path, path.name))


def test_unknown_split_and_missing_dir_are_clear_errors(dataset_dir, tmp_path):
    with pytest.raises(LpasrnError, match="no split 'test'; it has: train"):
        StreamReader(dataset_dir, "test", batch_size=2)
    missing = tmp_path / "absent"
    for make in (lambda: StreamReader(missing, "train", 2), lambda: IndexedPlateDataset(missing, "train")):
        with pytest.raises(LpasrnError) as err:
            make()
        assert str(missing) in str(err.value) and "lpasrn data synth --out" in str(err.value)


def test_data_bench_reports_every_reader(tmp_path, capsys):
    import argparse

    from lpasrn.bench import data_bench
    parser = argparse.ArgumentParser()
    data_bench.register(parser.add_subparsers())
    out = tmp_path / "bench.json"
    args = parser.parse_args(["data", "--samples", "24", "--batch-size", "8", "--json", str(out)])
    assert args.func(args) == 0
    results = json.loads(out.read_text())
    for name in ("stream_workers0", "stream_workers1", "indexed"):
        assert results[name]["samples"] == 24 and results[name]["cpu_samples_per_s"] > 0
    assert "samples/s per CPU-second" in capsys.readouterr().out
