"""Curriculum weighted sampler: one global weighted draw per epoch, sliced between ranks.

Rank 0 draws the epoch's sample ids from its weights with a generator seeded from (seed, epoch)
and broadcasts them; every rank keeps its own contiguous slice. Ranks therefore never disagree on
which sample goes where, even if their float weights differed in the last bit (vectorised `exp`
on mixed CPU generations), and all run the same number of steps, so none waits at epoch end.

The draw is an inverse CDF on the float64 cumulative weights (`searchsorted` of float64 uniforms),
so it works for any number of samples: `torch.multinomial` refuses more than 2^24 categories.

# NOTE: distributed invariant. `set_epoch` is a collective (one broadcast) when a process group of
# `world_size` ranks is running: call it on all ranks, at the same epochs.
"""
from __future__ import annotations

import hashlib
from typing import Callable, Iterator

import torch
from torch.utils.data import Sampler

from lpasrn.distributed.sync import broadcast_from_main_, is_distributed
from lpasrn.distributed.sync import rank as group_rank
from lpasrn.distributed.sync import world_size as group_size

WeightsFn = Callable[[int], torch.Tensor]


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit generator seed from (seed, epoch); hashed so nearby pairs give unrelated streams."""
    digest = hashlib.sha256(f"lpasrn-curriculum:{int(seed)}:{int(epoch)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def curriculum_progress(epoch: int, epochs: int, span: int = 1, start: float = 0.5,
                        end: float = 1.0) -> float:
    """Curriculum position of the draw made for `epoch` (0-based) of a stage of `epochs`, whose
    weights then serve `span` epochs (the re-weighting interval): 0 favours easy samples, 0.5 is
    uniform, 1 favours hard ones (HardExampleMiner.sampling_weights).

    The schedule moves linearly from `start` at the beginning of the stage to `end` at its end, and
    a draw takes the schedule's value at the middle of the epochs it serves, [epoch, epoch + span)
    cut at the stage's end. Why the middle: the weights are held over that window, so this is the
    best single stand-in for the schedule there, and it is defined for any stage length. A 1-epoch
    stage draws once at the midpoint (0.75 with the defaults: halfway from uniform to fully
    hard-favouring), where taking the start (the old rule, progress epoch / (epochs - 1)) drew the
    whole stage at its easiest point.
    """
    epochs = max(1, epochs)
    served = min(max(1, span), max(0, epochs - epoch))
    fraction = min(1.0, max(0.0, (epoch + served / 2) / epochs))
    return start + (end - start) * fraction


def weighted_draw(weights: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """LongTensor [count]: ids drawn with replacement, P(i) = weights[i] / sum(weights), any length.

    Inverse CDF: uniforms u in [0, total) in float64, id = first i with cumsum[i] > u. A zero
    weight adds nothing to the cumulative sum, so it is never drawn. The uniforms are made already
    sorted (normalised partial sums of exponentials are the order statistics of uniforms), so the
    binary searches walk the CDF in order, cache-friendly (random queries took 3x longer at 10^7),
    and a random permutation then gives the draws their i.i.d. order.
    """
    cdf = torch.cumsum(weights.to(torch.float64), 0)
    spacings = torch.empty(count + 1, dtype=torch.float64).exponential_(generator=generator)
    partial = torch.cumsum(spacings, 0)
    uniforms = partial[:-1].mul_(cdf[-1] / partial[-1])
    ids = torch.searchsorted(cdf, uniforms, right=True)
    # u may round up to the total: such a draw takes the last id that has weight
    ids.clamp_max_(int(torch.nonzero(weights > 0)[-1]))
    return ids[torch.randperm(count, generator=generator)]


class CurriculumSampler(Sampler[int]):
    """Yields the sids of this rank's share of the epoch's global draw (with replacement).

    `weights_fn(epoch)` returns float [num_samples] non-negative weights (the runner passes the
    miner's weights at `curriculum_progress`). The epoch draw has `num_samples` rounded to a
    multiple of batch_size * world_size: down with drop_last (the default), up otherwise (drawing
    with replacement, so a few extra draws cost nothing).
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
        self._slice: torch.Tensor | None = None  # this rank's slice of self.epoch's draw

    def _weights(self, epoch: int) -> torch.Tensor:
        weights = torch.as_tensor(self.weights_fn(epoch)).detach().to("cpu", torch.float64).reshape(-1)
        if weights.numel() != self.num_samples:
            raise ValueError(f"weights_fn({epoch}) gave {weights.numel()} weights for "
                             f"{self.num_samples} samples")
        if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()) or not bool((weights > 0).any()):
            raise ValueError(f"weights_fn({epoch}) gave weights that are negative, not finite, or all zero")
        return weights

    def global_draw(self, epoch: int) -> torch.Tensor:
        """LongTensor [total_size]: the sids drawn for `epoch` from this process's weights (rank r
        takes slice r). Local: no communication."""
        generator = torch.Generator(device="cpu")
        generator.manual_seed(epoch_seed(self.seed, epoch))
        return weighted_draw(self._weights(epoch), self.total_size, generator)

    def _shared(self) -> bool:
        return is_distributed() and group_size() == self.world_size > 1

    def set_epoch(self, epoch: int) -> None:
        """Fix the epoch and draw its samples now (weights are read once, at this call).

        # NOTE: call on all ranks: rank 0 draws, the others receive its draw (one broadcast).
        """
        self.epoch = int(epoch)
        if self._shared():
            draw = self.global_draw(self.epoch) if group_rank() == 0 else torch.empty(self.total_size, dtype=torch.int64)
            broadcast_from_main_(draw)
        else:
            draw = self.global_draw(self.epoch)
        start = self.rank * self.per_rank
        self._slice = draw[start:start + self.per_rank].clone()

    def rank_slice(self) -> torch.Tensor:
        if self._slice is None:
            self.set_epoch(self.epoch)
        return self._slice

    def __iter__(self) -> Iterator[int]:
        return iter(self.rank_slice().tolist())

    def __len__(self) -> int:
        return self.per_rank
