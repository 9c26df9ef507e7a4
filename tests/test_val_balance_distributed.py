"""Validation over 2 gloo ranks x 2 DataLoader workers: every sid exactly once, the same number of
batches on each rank, and work balanced by sids, not shards (the split has one big and one small
shard, so a shard-wise split would give one rank 30 plates and the other 7)."""
import json

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from lpasrn.bench.data_bench import write_random_dataset
from lpasrn.data.readers import IndexedPlateDataset
from lpasrn.train.lockstep import lockstep_loader
from launching import spawn_gloo

NUM_SAMPLES, SHARD_SIZE, BATCH, WORLD_SIZE = 37, 30, 4, 2


def _rank_main(rank: int, data_dir: str, out_dir: str) -> None:
    mp.set_start_method("fork", force=True)  # for the DataLoader workers of lockstep_loader
    assert dist.get_world_size() == WORLD_SIZE and dist.get_rank() == rank
    dataset = IndexedPlateDataset(data_dir, "val")
    epochs = []
    for _ in range(2):  # the same dataset object every epoch (one index per process)
        real, batches = [], 0
        for batch in lockstep_loader(dataset, BATCH, rank, WORLD_SIZE, num_workers=2):
            batches += 1
            real += [s for s, w in zip(batch["sid"].tolist(), batch["weight"].tolist()) if w > 0]
        epochs.append({"real": real, "batches": batches})
    gathered = [None] * WORLD_SIZE
    dist.all_gather_object(gathered, epochs)
    if rank == 0:
        with open(f"{out_dir}/views.json", "w") as out:
            json.dump(gathered, out)


@pytest.mark.distributed
@pytest.mark.timeout(240)
def test_validation_split_is_exact_once_balanced_and_lockstep(tmp_path):
    write_random_dataset(tmp_path / "ds", NUM_SAMPLES, seed=6, shard_size=SHARD_SIZE, split="val")
    spawn_gloo(_rank_main, tmp_path, str(tmp_path / "ds"), str(tmp_path), world_size=WORLD_SIZE)
    views = json.loads((tmp_path / "views.json").read_text())
    for epoch in range(2):
        per_rank = [views[r][epoch] for r in range(WORLD_SIZE)]
        everything = sorted(s for view in per_rank for s in view["real"])
        assert everything == list(range(NUM_SAMPLES))  # exact-once
        assert per_rank[0]["batches"] == per_rank[1]["batches"] == 5  # ceil(ceil(37/2) / 4)
        counts = [len(view["real"]) for view in per_rank]
        assert max(counts) - min(counts) <= 1, counts  # by sid, not by shard (30 vs 7)
