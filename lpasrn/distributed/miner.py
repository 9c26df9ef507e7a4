"""Hard-example miner: per-sample recognition counters, summed over ranks, and curriculum weights.

Counters are indexed by the dense sample id (`sid`, 0..N-1) of the split. Between syncs each rank
adds to its own integer deltas; `sync` sums them over ranks in one all-reduce and folds them into
the global counters and into an exponential moving word accuracy.

Memory: 40 bytes per plate (int32 counters and deltas, 4 each, plus the float64 EMA), not 72:
at 10^7 plates 400 MB per rank. int32 holds 2^31 observations of one plate, far beyond any run.

# NOTE: distributed invariant. The EMA is updated once per sync, from the integer deltas of that
# interval only (accuracy = delta words_correct / delta seen, float64, elementwise). Integer sums
# do not depend on how samples were split across ranks or in what order they came, so after `sync`
# every rank holds bitwise-identical state, equal to one process that saw the same samples between
# the same syncs. `difficulty` and `sampling_weights` are deterministic float64 functions of that
# state: their sums are integer sums of fixed-point values (`fixed_point_sum`), which no reduction
# order, thread count or vector width can change.
# A checkpoint taken between syncs (preemption) must NOT sync: that would fold an extra interval
# into the EMA. It stores the deltas summed over ranks without folding them (`checkpoint_state`), and
# on resume only one rank loads them, so the next sync counts them exactly once.
"""
from __future__ import annotations

from typing import Sequence

import torch

from lpasrn.distributed.sync import all_reduce_sum_
from lpasrn.metrics import correct_chars

COUNTER_NAMES = ("seen", "words_correct", "chars_correct", "chars_total")
COUNTER_DTYPE = torch.int32
UNSEEN_DIFFICULTY = 0.5  # difficulty of every sample before any sample has been seen
_MAX_EXPONENT = 60.0  # weights span at most e^60, so none underflows to zero
_OVERFLOW_GUARD = 2**31 - 2**24  # refuse a sync that could overflow the int32 counters


def fixed_point_sum(values: torch.Tensor) -> float:
    """Sum of float64 `values` in [0, 1], the same bits on every machine: each value is rounded to a
    fixed point with as many fraction bits as int64 allows for this count, and the integers are
    summed exactly (integer addition is associative). Resolution 2^-(62 - log2 N): ~4e-12 at 10^7."""
    count = values.numel()
    if count == 0:
        return 0.0
    bits = 62 - count.bit_length()
    scaled = torch.round(values.to(torch.float64) * float(2**bits)).to(torch.int64)
    return int(scaled.sum()) / 2**bits  # Python int / int: correctly rounded


def _as_counter(values, name: str, length: int) -> torch.Tensor:
    tensor = torch.as_tensor(values).detach().to("cpu").reshape(-1)
    if tensor.numel() != length:
        raise ValueError(f"{name} has {tensor.numel()} entries, expected {length} (one per sid)")
    return tensor.to(COUNTER_DTYPE)


class HardExampleMiner:
    def __init__(self, num_samples: int, ema_momentum: float = 0.9, difficulty_alpha: float = 2.0):
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if not 0.0 <= ema_momentum < 1.0:
            raise ValueError(f"ema_momentum must be in [0, 1), got {ema_momentum}")
        self.num_samples = num_samples
        self.ema_momentum = float(ema_momentum)
        self.difficulty_alpha = float(difficulty_alpha)
        # rows follow COUNTER_NAMES; one tensor so `sync` is a single all-reduce
        self.counters = torch.zeros(len(COUNTER_NAMES), num_samples, dtype=COUNTER_DTYPE)
        self.deltas = torch.zeros_like(self.counters)
        self.ema_accuracy = torch.zeros(num_samples, dtype=torch.float64)  # valid where seen > 0

    def counter(self, name: str) -> torch.Tensor:
        """Synced counter `name` (one of COUNTER_NAMES), int32 [N]."""
        return self.counters[COUNTER_NAMES.index(name)]

    @property
    def seen(self) -> torch.Tensor:
        return self.counter("seen")

    def update(self, sids, word_correct, chars_correct, chars_total) -> None:
        """Add one observation per sid (a sid may repeat) to this rank's local deltas."""
        sid_tensor = torch.as_tensor(sids).detach().to("cpu", torch.int64).reshape(-1)
        count = sid_tensor.numel()
        if count and (int(sid_tensor.min()) < 0 or int(sid_tensor.max()) >= self.num_samples):
            raise ValueError(f"sids must be in [0, {self.num_samples}), got {sid_tensor.tolist()}")
        columns = torch.stack([
            torch.ones(count, dtype=COUNTER_DTYPE),
            _as_counter(word_correct, "word_correct", count),
            _as_counter(chars_correct, "chars_correct", count),
            _as_counter(chars_total, "chars_total", count),
        ])
        self.deltas.index_add_(1, sid_tensor, columns)

    def update_from_strings(self, sids, truths: Sequence[str], preds: Sequence[str]) -> None:
        """`update` from plate texts and OCR readings (characters counted by metrics.correct_chars)."""
        if not len(truths) == len(preds) == len(sids):
            raise ValueError(f"{len(sids)} sids, {len(truths)} truths, {len(preds)} predictions")
        self.update(sids, [t == p for t, p in zip(truths, preds)],
                    [correct_chars(t, p) for t, p in zip(truths, preds)], [len(t) for t in truths])

    def sync(self) -> None:
        """Sum the deltas over ranks, fold them into the counters and the EMA, zero the deltas.

        # NOTE: call on all ranks at the fixed points (epoch end, and before scoring's first draw):
        # one all-reduce of all four counters packed in one tensor. A checkpoint between those
        # points uses `checkpoint_state` instead, which does not fold.
        """
        all_reduce_sum_(self.deltas, widen=False)  # int32 in place: one interval's counts fit
        self._fold(self.deltas)
        self.deltas.zero_()

    def _fold(self, deltas: torch.Tensor) -> None:
        """Add one interval's summed deltas to the counters and blend its accuracy into the EMA."""
        if int(self.counters.max()) + int(deltas.max()) > _OVERFLOW_GUARD:
            raise OverflowError("a mining counter would pass 2^31; no run observes a plate that often")
        seen_now = deltas[0]
        observed = seen_now > 0
        accuracy = deltas[1].to(torch.float64) / seen_now.clamp_min(1).to(torch.float64)
        first_time = observed & (self.counters[0] == 0)
        again = observed & (self.counters[0] > 0)
        m = self.ema_momentum
        blended = m * self.ema_accuracy + (1.0 - m) * accuracy
        self.ema_accuracy = torch.where(first_time, accuracy, torch.where(again, blended, self.ema_accuracy))
        self.counters += deltas

    def difficulty(self) -> torch.Tensor:
        """float64 [N]: 1 - EMA word accuracy.

        Unseen samples get the mean difficulty of the seen ones (they are assumed typical, neither
        favoured nor avoided), or 0.5 when nothing has been seen yet.
        """
        seen_mask = self.seen > 0
        difficulty = 1.0 - self.ema_accuracy
        seen_values = difficulty[seen_mask]
        fill = fixed_point_sum(seen_values) / seen_values.numel() if seen_values.numel() else UNSEEN_DIFFICULTY
        return torch.where(seen_mask, difficulty, torch.full_like(difficulty, fill))

    def sampling_weights(self, progress: float) -> torch.Tensor:
        """float64 [N], strictly positive, summing to 1: the curriculum at `progress` in [0, 1].

        w ~ exp(alpha * (2 * progress - 1) * (difficulty - mean difficulty)): progress 0 favours
        easy samples, 0.5 is uniform, 1 favours hard ones; alpha = difficulty_alpha.
        """
        if not 0.0 <= progress <= 1.0:
            raise ValueError(f"progress must be in [0, 1], got {progress}")
        difficulty = self.difficulty()
        mean = fixed_point_sum(difficulty) / self.num_samples
        exponent = self.difficulty_alpha * (2.0 * progress - 1.0) * (difficulty - mean)
        # shift by the max (the weights are normalised anyway) and bound the span so exp never
        # overflows nor underflows to zero
        exponent = (exponent - exponent.max()).clamp_min(-_MAX_EXPONENT)
        weights = torch.exp(exponent)
        return weights / fixed_point_sum(weights)  # in (0, 1] after the shift

    def hardest(self, k: int = 10) -> list[dict]:
        """The k seen samples with the highest difficulty (ties by sid), as table rows."""
        seen_sids = torch.nonzero(self.seen > 0).reshape(-1)
        difficulty = self.difficulty()[seen_sids]
        order = torch.sort(-difficulty, stable=True).indices[:k]
        rows = []
        for sid in seen_sids[order].tolist():
            chars_total = int(self.counter("chars_total")[sid])
            rows.append({
                "sid": sid,
                "difficulty": float(1.0 - self.ema_accuracy[sid]),
                "seen": int(self.seen[sid]),
                "word_acc": int(self.counter("words_correct")[sid]) / int(self.seen[sid]),
                "char_acc": int(self.counter("chars_correct")[sid]) / chars_total if chars_total else 0.0,
            })
        return rows

    def checkpoint_state(self) -> dict:
        """`state_dict` for a checkpoint taken at any point: `deltas` are this interval's deltas summed
        over ranks but NOT folded into counters and EMA (folding would add an EMA step the
        uninterrupted run never takes). Load it with `load_state_dict(state, holds_deltas=...)`
        true on exactly one rank.

        # NOTE: call on all ranks: one all-reduce (on a copy; this rank's deltas are unchanged).
        """
        state = self.state_dict()
        state["deltas"] = all_reduce_sum_(state["deltas"], widen=False)
        return state

    def state_dict(self) -> dict:
        """Counters, EMA and this rank's unsynced deltas."""
        return {
            "num_samples": self.num_samples,
            "ema_momentum": self.ema_momentum,
            "difficulty_alpha": self.difficulty_alpha,
            "counters": self.counters.clone(),
            "deltas": self.deltas.clone(),
            "ema_accuracy": self.ema_accuracy.clone(),
        }

    def load_state_dict(self, state: dict, holds_deltas: bool = True) -> None:
        """Restore counters and EMA; the saved deltas only where `holds_deltas`, zeros elsewhere.

        # NOTE: after a distributed `checkpoint_state` exactly one rank must hold the deltas: the next
        # sync sums them over ranks, so deltas loaded on every rank would count world_size times.
        """
        if int(state["num_samples"]) != self.num_samples:
            raise ValueError(f"mining state is for {int(state['num_samples'])} samples, "
                             f"this split has {self.num_samples}")
        # momentum and alpha stay as configured: they are settings, the state is the counts
        self.counters = state["counters"].detach().to("cpu", COUNTER_DTYPE).clone()
        deltas = state["deltas"].detach().to("cpu", COUNTER_DTYPE)
        self.deltas = deltas.clone() if holds_deltas else torch.zeros_like(deltas)
        self.ema_accuracy = state["ema_accuracy"].detach().to("cpu", torch.float64).clone()
