"""Fusing the OCR readings of several frames of one vehicle track into one reading.

Each rule is a pure function of the frames' readings and reading confidences, given in FRAME ORDER
(the order the frames were captured; evaluation uses sample-id order). Ties are broken the same way
everywhere so a fused reading never depends on dict or set order:

1. more votes wins;
2. then the larger SUM of the confidences of the readings behind the votes;
3. then the candidate seen first (earliest frame).

Per-character confidences are not available (greedy_decode gives one confidence per reading), so a
reading's confidence stands for each of its characters.
"""
from __future__ import annotations

from typing import Hashable, Sequence

RULES = ("majority_vote", "highest_confidence", "most_frequent")
FRAME_COUNTS = (1, 3, 5)


def _check(readings: Sequence[str], confidences: Sequence[float]) -> None:
    if not readings:
        raise ValueError("cannot fuse an empty list of readings")
    if len(readings) != len(confidences):
        raise ValueError(f"{len(readings)} readings but {len(confidences)} confidences")


def _pick(candidates: Sequence[Hashable], weights: Sequence[float]) -> Hashable:
    """The candidate with the most occurrences; ties by summed weight, then first occurrence."""
    votes: dict[Hashable, list] = {}
    for frame, (candidate, weight) in enumerate(zip(candidates, weights)):
        entry = votes.setdefault(candidate, [0, 0.0, frame])
        entry[0] += 1
        entry[1] += float(weight)
    # max over (votes, weight sum, -first frame): the earliest frame wins the last tie.
    return max(votes, key=lambda c: (votes[c][0], votes[c][1], -votes[c][2]))


def majority_vote(readings: Sequence[str], confidences: Sequence[float]) -> str:
    """Per-position majority vote over the readings of the most common length.

    The length is chosen first (by `_pick` over reading lengths), because position i means nothing
    across readings of different lengths; only readings of that length then vote, position by
    position, each character decided by `_pick` (votes, summed confidence, earliest frame).
    """
    _check(readings, confidences)
    length = _pick([len(r) for r in readings], confidences)
    voters = [(r, c) for r, c in zip(readings, confidences) if len(r) == length]
    fused = []
    for position in range(length):
        fused.append(_pick([r[position] for r, _ in voters], [c for _, c in voters]))
    return "".join(fused)


def highest_confidence(readings: Sequence[str], confidences: Sequence[float]) -> str:
    """The reading with the highest confidence; equal confidences: the earliest frame."""
    _check(readings, confidences)
    best = max(range(len(readings)), key=lambda i: (float(confidences[i]), -i))
    return readings[best]


def most_frequent(readings: Sequence[str], confidences: Sequence[float]) -> str:
    """The whole string read most often; ties by summed confidence, then the earliest frame."""
    _check(readings, confidences)
    return _pick(list(readings), confidences)


FUSION_RULES = {"majority_vote": majority_vote, "highest_confidence": highest_confidence,
                "most_frequent": most_frequent}


def fuse(rule: str, readings: Sequence[str], confidences: Sequence[float], frames: int) -> str:
    """Apply `rule` to the first `frames` frames (all of them when the track is shorter)."""
    if rule not in FUSION_RULES:
        raise ValueError(f"unknown fusion rule {rule!r}; rules: {', '.join(RULES)}")
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    return FUSION_RULES[rule](list(readings)[:frames], list(confidences)[:frames])
