"""Recognition metrics (edit distance, alignment, word/character accuracy) and PSNR.

Everything here is a pure function of strings or tensors. `RecognitionStats` keeps integer SUMS,
never means, so ranks can all-reduce them exactly and the summary equals what one process would
have computed over the same plates.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch

from lpasrn.distributed.sync import all_reduce_sum_

# Backtrace preference when several optimal alignments exist (see align_strings).
_DIAGONAL, _DELETE, _INSERT = 0, 1, 2


def _edit_table(truth: str, pred: str) -> list[list[int]]:
    """Levenshtein DP table: table[i][j] = distance between truth[:i] and pred[:j] (unit costs)."""
    rows, cols = len(truth) + 1, len(pred) + 1
    table = [[0] * cols for _ in range(rows)]
    for i in range(rows):
        table[i][0] = i
    for j in range(cols):
        table[0][j] = j
    for i in range(1, rows):
        for j in range(1, cols):
            substitution = table[i - 1][j - 1] + (truth[i - 1] != pred[j - 1])
            table[i][j] = min(substitution, table[i - 1][j] + 1, table[i][j - 1] + 1)
    return table


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (unit cost substitution, insertion, deletion)."""
    return _edit_table(a, b)[len(a)][len(b)]


def align_strings(truth: str, pred: str) -> list[tuple[str | None, str | None]]:
    """An optimal (minimum edit) alignment of `truth` with `pred`, left to right.

    Pairs are (t, p) for a match or substitution, (t, None) for a deleted truth character and
    (None, p) for an inserted predicted character.

    Tie-break (deterministic): the backtrace starts at the END of both strings and, among the moves
    that keep the alignment optimal, prefers diagonal (match/substitution), then deletion, then
    insertion. So 'AB' vs 'B' aligns ('A', None), ('B', 'B'), and 'AB' vs 'XY' substitutes both
    characters instead of deleting and inserting.
    """
    table = _edit_table(truth, pred)
    i, j = len(truth), len(pred)
    pairs: list[tuple[str | None, str | None]] = []
    while i > 0 or j > 0:
        move = _best_move(table, truth, pred, i, j)
        if move == _DIAGONAL:
            pairs.append((truth[i - 1], pred[j - 1]))
            i, j = i - 1, j - 1
        elif move == _DELETE:
            pairs.append((truth[i - 1], None))
            i -= 1
        else:
            pairs.append((None, pred[j - 1]))
            j -= 1
    pairs.reverse()
    return pairs


def _best_move(table: list[list[int]], truth: str, pred: str, i: int, j: int) -> int:
    here = table[i][j]
    if i > 0 and j > 0 and table[i - 1][j - 1] + (truth[i - 1] != pred[j - 1]) == here:
        return _DIAGONAL
    if i > 0 and table[i - 1][j] + 1 == here:
        return _DELETE
    return _INSERT


def char_accuracy(truth: str, pred: str) -> float:
    """max(0, 1 - edit_distance / len(truth)); 1.0 for an empty truth read as empty."""
    if not truth:
        return 1.0 if not pred else 0.0
    return max(0.0, 1.0 - edit_distance(truth, pred) / len(truth))


def correct_chars(truth: str, pred: str) -> int:
    """Number of correctly read characters of `truth`.

    Same lengths: positions where the characters are equal (the usual plate-level count, so
    'ABC1234' read as 'A8C1234' has 6). Different lengths: positions are meaningless after an
    insertion or deletion, so it is len(truth) - edit_distance, floored at 0.
    """
    if len(truth) == len(pred):
        return sum(t == p for t, p in zip(truth, pred))
    return max(0, len(truth) - edit_distance(truth, pred))


# Layout of the RecognitionStats tensor: every entry is an integer sum.
_STAT_FIELDS = ("count", "words_correct", "ge6", "ge5", "chars_matched", "chars_total", "edits")


class RecognitionStats:
    """Accumulates recognition counts over plates; `summary()` turns them into rates.

    `char_acc` in the summary is micro-averaged: sum over plates of max(0, len - edit_distance)
    divided by the total number of truth characters (equal to the mean of `char_accuracy` when all
    plates have the same length, and exactly all-reducible because it is a ratio of integer sums).
    """

    def __init__(self):
        self.totals = torch.zeros(len(_STAT_FIELDS), dtype=torch.int64)

    def update(self, truths: Sequence[str], preds: Sequence[str]) -> None:
        if len(truths) != len(preds):
            raise ValueError(f"{len(truths)} truths but {len(preds)} predictions")
        delta = [0] * len(_STAT_FIELDS)
        for truth, pred in zip(truths, preds):
            distance = edit_distance(truth, pred)
            correct = correct_chars(truth, pred)
            delta[0] += 1
            delta[1] += int(truth == pred)
            delta[2] += int(correct >= 6)
            delta[3] += int(correct >= 5)
            delta[4] += max(0, len(truth) - distance)
            delta[5] += len(truth)
            delta[6] += distance
        self.totals += torch.tensor(delta, dtype=torch.int64)

    def merge_(self, other: "RecognitionStats") -> "RecognitionStats":
        self.totals += other.totals
        return self

    def all_reduce_(self) -> "RecognitionStats":
        """Sum the counts over ranks in place (no-op without torch.distributed).

        # NOTE: call on all ranks, once per evaluation, after every rank has finished its share.
        """
        all_reduce_sum_(self.totals)
        return self

    def as_tensor(self) -> torch.Tensor:
        return self.totals.clone()

    @classmethod
    def from_tensor(cls, totals: torch.Tensor) -> "RecognitionStats":
        if totals.shape != (len(_STAT_FIELDS),):
            raise ValueError(f"expected a tensor of shape ({len(_STAT_FIELDS)},), got {tuple(totals.shape)}")
        stats = cls()
        stats.totals = totals.detach().to("cpu", torch.int64).clone()
        return stats

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"totals": self.as_tensor()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.totals = RecognitionStats.from_tensor(state["totals"]).totals

    def summary(self) -> dict[str, float]:
        """Rates over all plates seen; 0.0 everywhere when no plate was seen."""
        values = dict(zip(_STAT_FIELDS, (int(v) for v in self.totals.tolist())))
        count = values["count"]

        def ratio(numerator: int, denominator: int) -> float:
            return numerator / denominator if denominator else 0.0

        word_acc = ratio(values["words_correct"], count)
        return {
            "word_acc": word_acc,
            "recognition_rate": word_acc,
            "ge6": ratio(values["ge6"], count),
            "ge5": ratio(values["ge5"], count),
            "char_acc": ratio(values["chars_matched"], values["chars_total"]),
            "count": count,
        }


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image PSNR in dB for [B, C, H, W] images, returned as float [B].

    The MSE is floored at 1e-10 so identical images give a finite value (100 dB at range 1)
    instead of inf, which would poison epoch means.
    """
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"psnr expects two [B, C, H, W] tensors of the same shape, got {tuple(x.shape)} "
                         f"and {tuple(y.shape)}")
    diff = x.detach().double() - y.detach().double()
    mse = diff.pow(2).flatten(1).mean(dim=1).clamp_min(1e-10)
    return (10.0 * torch.log10(data_range ** 2 / mse)).to(x.dtype if x.is_floating_point() else torch.float32)


def recognition_summary(truths: Iterable[str], preds: Iterable[str]) -> dict[str, float]:
    """One-shot summary of a list of plates (single process)."""
    stats = RecognitionStats()
    stats.update(list(truths), list(preds))
    return stats.summary()
