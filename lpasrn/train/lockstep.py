"""Batches that every rank runs in lock-step: validation, the scoring pass, and stand-ins for empty
batches.

Why: under ZeRO-3 every forward all-gathers the parameters, i.e. it is a collective. A rank that runs
one forward fewer than the others leaves them waiting forever. Whole-shard splits give ranks
different batch counts (the paper config's 2 validation shards leave 6 of 8 ranks idle), so here
each rank takes an even, contiguous block of sids, padded with weight-0 repeats to the same length
on every rank: equal batch counts, balanced work, and every sample counted exactly once.

# NOTE: distributed invariant: every rank gets ceil(N / world) positions, hence the same number of
# batches. Padding samples carry weight 0 and must not enter any statistic.
"""
from __future__ import annotations

import math

import torch
from torch.utils.data import DataLoader, Dataset

from lpasrn.data.readers import CorruptSampleError, IndexedPlateDataset, collate
from lpasrn.distributed.preemption import worker_ignores_stop_signals


def rank_share(num_samples: int, rank: int, world_size: int) -> tuple[list[int], int]:
    """(sids of this rank, how many of them are real): a contiguous block (pread-friendly), padded
    to ceil(num_samples / world_size) with repeats of a real sid."""
    per_rank = math.ceil(num_samples / world_size) if num_samples else 0
    start = min(rank * per_rank, num_samples)
    real = list(range(start, min(start + per_rank, num_samples)))
    filler = real[0] if real else 0
    return real + [filler] * (per_rank - len(real)), len(real)


class RankShare(Dataset):
    """This rank's padded share of a split; items carry `weight` 1 (real) or 0 (padding). A corrupt
    sample becomes a record of the error (the collate drops it from the batch and reports it)."""

    def __init__(self, dataset: IndexedPlateDataset, sids: list[int], real: int):
        self.dataset, self.sids, self.real = dataset, sids, real

    def __len__(self) -> int:
        return len(self.sids)

    def __getitem__(self, position: int) -> dict:
        weight = 1.0 if position < self.real else 0.0
        try:
            sample = self.dataset[self.sids[position]]
        except CorruptSampleError as err:
            return {"corrupt": str(err), "weight": weight}
        sample["weight"] = weight
        return sample


def collate_weighted(items: list[dict]) -> dict:
    """`collate` plus a `weight` tensor; corrupt real samples are listed in `corrupt` (padding
    repeats of a corrupt sample are not reported twice)."""
    samples = [item for item in items if "corrupt" not in item]
    corrupt = [item["corrupt"] for item in items if "corrupt" in item and item["weight"] > 0]
    batch = collate(samples, corrupt)
    batch["weight"] = torch.tensor([s["weight"] for s in samples], dtype=torch.float32)
    return batch


def lockstep_loader(dataset: IndexedPlateDataset, batch_size: int, rank: int, world_size: int,
                    num_workers: int = 0, limit: int = 0) -> DataLoader:
    """Batches of this rank's share of `dataset` (the first `limit` sids when limit > 0)."""
    total = min(len(dataset), limit) if limit else len(dataset)
    sids, real = rank_share(total, rank, world_size)
    return DataLoader(RankShare(dataset, sids, real), batch_size=batch_size, shuffle=False,
                      num_workers=num_workers, collate_fn=collate_weighted,
                      persistent_workers=False, worker_init_fn=worker_ignores_stop_signals)


def select_rows(values: dict, rows: torch.Tensor) -> dict:
    """The entries of a batch (or of model outputs) at `rows` (a LongTensor of positions)."""
    index = rows.tolist()
    out = {}
    for key, value in values.items():
        if torch.is_tensor(value) and value.dim() > 0:
            out[key] = value.index_select(0, rows.to(value.device))
        elif isinstance(value, list) and key != "corrupt":
            out[key] = [value[i] for i in index]
        else:
            out[key] = value
    return out


def with_stand_in(batch: dict, stand_in: dict) -> dict:
    """`batch`, or when it holds no sample (all corrupt) the weight-0 stand-in, so that this rank
    still runs the forward (and backward) that the other ranks run."""
    if batch["hr"].shape[0] > 0:
        if "weight" not in batch:
            batch["weight"] = torch.ones(batch["hr"].shape[0])
        return batch
    return {**stand_in, "weight": torch.zeros(stand_in["hr"].shape[0]), "corrupt": batch.get("corrupt", [])}
