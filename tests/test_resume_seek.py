"""Mid-epoch resume jumps to its batch: the same remaining batches as the uninterrupted epoch, and the
skipped ones are never decoded (stream reader and weighted sampler)."""
import pytest
import torch

import lpasrn.data.read_stream as read_stream
from lpasrn.bench.data_bench import write_random_dataset
from lpasrn.data.readers import IndexedPlateDataset, StreamReader, collate
from lpasrn.data.read_stream import worker_skip
from lpasrn.errors import LpasrnError
from lpasrn.train.data_sources import SkipSampler
from torch.utils.data import DataLoader, RandomSampler

BATCH = 4


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("seek") / "ds"
    write_random_dataset(out, 60, seed=3, shard_size=8, split="train")
    return out


def _sids(batches):
    return [b["sid"].tolist() for b in batches]


def _resampled(data_dir, workers):
    return StreamReader(data_dir, "train", BATCH, seed=4, rank=1, world_size=2, num_workers=workers,
                        mode="resampled", batches_per_epoch=9, shuffle_buffer=10)


@pytest.mark.parametrize("workers", [0, 2])
def test_stream_resume_yields_the_rest_of_the_uninterrupted_epoch(data_dir, workers):
    full = _resampled(data_dir, workers)
    full.set_epoch(3)
    expected = _sids(full)
    assert len(expected) == 9
    for skip in (1, 4, 9):
        resumed = _resampled(data_dir, workers)
        resumed.set_epoch(3, skip_batches=skip)
        assert len(resumed) == 9 - skip
        assert _sids(resumed) == expected[skip:], skip


def test_stream_resume_decodes_none_of_the_skipped_batches(data_dir, monkeypatch):
    decoded = []
    real = read_stream.decode_sample

    def counting(members, shard, key):  # the real decoder, counted
        decoded.append(key)
        return real(members, shard, key)

    monkeypatch.setattr(read_stream, "decode_sample", counting)
    reader = _resampled(data_dir, 0)
    reader.set_epoch(0, skip_batches=7)
    assert len(list(reader)) == 2
    # 2 batches yielded (+1 batch held back by the batcher): nothing of the 7 skipped ones.
    assert len(decoded) <= 3 * BATCH, len(decoded)


def test_worker_skip_follows_the_dataloader_turns():
    assert [worker_skip(5, w, 2) for w in (0, 1)] == [3, 2]
    assert [worker_skip(1, w, 3) for w in (0, 1, 2)] == [1, 0, 0]
    assert worker_skip(4, 0, 1) == 4


def test_exact_mode_refuses_a_skip(data_dir):
    reader = StreamReader(data_dir, "train", BATCH)
    with pytest.raises(LpasrnError, match="resampled"):
        reader.set_epoch(0, skip_batches=2)


def test_weighted_resume_skips_positions_without_reading_them(data_dir):
    dataset = IndexedPlateDataset(data_dir, "train")
    draw = lambda: RandomSampler(range(60), generator=torch.Generator().manual_seed(8))  # noqa: E731
    full = _sids(DataLoader(dataset, BATCH, sampler=draw(), collate_fn=collate, drop_last=True))
    read = []

    class Counting(torch.utils.data.Dataset):
        def __len__(self):
            return len(dataset)

        def __getitem__(self, sid):
            read.append(sid)
            return dataset[sid]

    resumed = DataLoader(Counting(), BATCH, sampler=SkipSampler(draw(), 5 * BATCH), collate_fn=collate,
                         drop_last=True)
    assert len(resumed) == len(full) - 5
    assert _sids(resumed) == full[5:]
    assert sorted(read) == sorted(s for batch in full[5:] for s in batch)
