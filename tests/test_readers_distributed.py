"""Stream reader across 2 gloo processes x 2 DataLoader workers: exact-once epochs, equal resampled counts."""
import socket

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from lpasrn.bench.data_bench import write_random_dataset
from lpasrn.data.readers import StreamReader

NUM_SAMPLES = 37  # 8 shards of 5 (last one 2): uneven on purpose
WORLD_SIZE = 2


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _gather(obj):
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def _rank_main(rank: int, port: int, data_dir: str) -> None:
    # Ranks started by accelerate/torchrun are fresh interpreters whose DataLoader workers fork;
    # mp.spawn children would inherit "spawn" and re-import torch in every worker (seconds each).
    mp.set_start_method("fork", force=True)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE)
    try:
        world_size = dist.get_world_size()
        assert world_size == 2 and dist.get_rank() == rank  # no silent fallback to one process
        # Exact mode: the union over ranks is every sid exactly once, in each epoch.
        reader = StreamReader(data_dir, "train", batch_size=3, seed=11, rank=rank, world_size=world_size,
                              num_workers=2)
        epoch_orders = []
        for epoch in (0, 1):
            reader.set_epoch(epoch)
            mine = [sid for batch in reader for sid in batch["sid"].tolist()]
            per_rank = _gather(mine)
            everything = [sid for sids in per_rank for sid in sids]
            assert sorted(everything) == list(range(NUM_SAMPLES)), (epoch, per_rank)
            epoch_orders.append(per_rank)
        assert epoch_orders[0] != epoch_orders[1]
        assert reader.read_errors.count == 0
        # Resampled mode: every rank yields the same number of batches, default and explicit.
        for batches_per_epoch in (None, 5):
            resampled = StreamReader(data_dir, "train", batch_size=3, seed=11, rank=rank,
                                     world_size=world_size, num_workers=2, mode="resampled",
                                     batches_per_epoch=batches_per_epoch)
            counts = _gather(sum(1 for _ in resampled))
            expected = 7 if batches_per_epoch is None else 5  # ceil(37 / (3 * 2)) = 7
            assert counts == [expected] * world_size, counts
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_stream_reader_two_ranks_two_workers(tmp_path):
    write_random_dataset(tmp_path / "ds", NUM_SAMPLES, seed=9, shard_size=5)
    mp.spawn(_rank_main, args=(_free_port(), str(tmp_path / "ds")), nprocs=WORLD_SIZE, join=True)
