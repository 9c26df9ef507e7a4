"""Curriculum weighted sampler: one global weighted draw per epoch, sliced between ranks.

Every rank computes the same draw from the same weights with a generator seeded from
(seed, epoch), then keeps its own contiguous slice. Ranks never communicate here, never disagree
on which sample goes where, and all run the same number of steps, so none waits at epoch end.

# NOTE: distributed invariant. The weights returned by `weights_fn(epoch)` must already be
# bitwise identical on all ranks: sync the miner (HardExampleMiner.sync, on all ranks) before
# `set_epoch`. The sampler itself makes no collective call.
"""
from __future__ import annotations

import hashlib
from typing import Callable, Iterator

import torch
from torch.utils.data import Sampler

WeightsFn = Callable[[int], torch.Tensor]


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit generator seed from (seed, epoch); hashed so nearby pairs give unrelated streams."""
    digest = hashlib.sha256(f"lpasrn-curriculum:{int(seed)}:{int(epoch)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class CurriculumSampler(Sampler[int]):
    """Yields the sids of this rank's share of the epoch's global draw (with replacement).

    `weights_fn(epoch)` returns float [num_samples] non-negative weights (e.g.
    `lambda e: miner.sampling_weights(e / max(1, epochs - 1))`). The epoch draw has
    `num_samples` rounded to a multiple of batch_size * world_size: down with drop_last (the
    default), up otherwise (drawing with replacement, so a few extra draws cost nothing).
    """

    def __init__(self, weights_fn: WeightsFn, num_samples: int, batch_size: int, rank: int, world_size: int,
                 seed: int, drop_last: bool = True):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in a world of size {world_size}")
        if batch_size < 1 or num_samples < 1:
            raise ValueError(f"batch_size and num_samples must be >= 1, got {batch_size}, {num_samples}")
        global_batch = batch_size * world_size
        if drop_last:
            total = (num_samples // global_batch) * global_batch
        else:
            total = -(-num_samples // global_batch) * global_batch
        if total == 0:
            raise ValueError(f"{num_samples} samples make no full global batch of {batch_size} x "
                             f"{world_size} ranks; lower the batch size or pass drop_last=False")
        self.weights_fn = weights_fn
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.total_size = total
        self.per_rank = total // world_size
        self.epoch = 0
        self._draw: torch.Tensor | None = None  # global draw of self.epoch, computed once

    def _weights(self, epoch: int) -> torch.Tensor:
        weights = torch.as_tensor(self.weights_fn(epoch)).detach().to("cpu", torch.float64).reshape(-1)
        if weights.numel() != self.num_samples:
            raise ValueError(f"weights_fn({epoch}) gave {weights.numel()} weights for "
                             f"{self.num_samples} samples")
        if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()) or float(weights.sum()) <= 0:
            raise ValueError(f"weights_fn({epoch}) gave weights that are negative, not finite, or all zero")
        return weights

    def global_draw(self, epoch: int) -> torch.Tensor:
        """LongTensor [total_size]: the sids every rank draws for `epoch` (rank r takes slice r)."""
        generator = torch.Generator(device="cpu")
        generator.manual_seed(epoch_seed(self.seed, epoch))
        return torch.multinomial(self._weights(epoch), self.total_size, replacement=True, generator=generator)

    def set_epoch(self, epoch: int) -> None:
        """Fix the epoch and draw its samples now (weights are read once, at this call)."""
        self.epoch = int(epoch)
        self._draw = self.global_draw(self.epoch)

    def rank_slice(self) -> torch.Tensor:
        if self._draw is None:
            self.set_epoch(self.epoch)
        start = self.rank * self.per_rank
        return self._draw[start:start + self.per_rank]

    def __iter__(self) -> Iterator[int]:
        return iter(self.rank_slice().tolist())

    def __len__(self) -> int:
        return self.per_rank

    def state_dict(self) -> dict:
        """The epoch and its global draw, so a run resumed mid-epoch replays the same samples even
        though the miner (and so the weights) moved on after the draw."""
        return {"epoch": self.epoch, "draw": None if self._draw is None else self._draw.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        draw = state["draw"]
        if draw is not None and draw.numel() != self.total_size:
            raise ValueError(f"saved draw has {draw.numel()} sids, this sampler draws {self.total_size} per "
                             "epoch (batch size or number of ranks changed)")
        self._draw = None if draw is None else draw.detach().to("cpu", torch.int64).clone()
