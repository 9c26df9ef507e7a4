import math

import pytest
import torch

from lpasrn.distributed.sync import all_reduce_sum_, is_distributed, rank, state_hash, world_size
from lpasrn.metrics import (
    RecognitionStats, align_strings, char_accuracy, correct_chars, edit_distance, psnr, recognition_summary,
)


@pytest.mark.parametrize("a, b, expected", [
    ("", "", 0), ("ABC", "", 3), ("", "AB", 2), ("ABC1234", "ABC1234", 0), ("ABC1234", "A8C1234", 1),
    ("ABC1234", "ABC123", 1), ("ABC1234", "ABCC1234", 1), ("KITTEN", "SITTING", 3), ("AB", "BA", 2),
])
def test_edit_distance_hand_values(a, b, expected):
    assert edit_distance(a, b) == expected
    assert edit_distance(b, a) == expected


def test_align_strings_substitution_deletion_insertion():
    assert align_strings("ABC", "A8C") == [("A", "A"), ("B", "8"), ("C", "C")]
    assert align_strings("ABC1234", "ABC234") == [("A", "A"), ("B", "B"), ("C", "C"), ("1", None),
                                                  ("2", "2"), ("3", "3"), ("4", "4")]
    assert align_strings("AB", "AXB") == [("A", "A"), (None, "X"), ("B", "B")]
    assert align_strings("AB", "") == [("A", None), ("B", None)]
    assert align_strings("", "XY") == [(None, "X"), (None, "Y")]


def test_align_strings_tie_break_rule():
    # 'AB' -> 'B': deleting A is the only optimal way; backtrace from the end matches B with B
    assert align_strings("AB", "B") == [("A", None), ("B", "B")]
    # two substitutions tie with delete+insert at cost 2: diagonal moves are preferred
    assert align_strings("AB", "XY") == [("A", "X"), ("B", "Y")]
    # 'AA' -> 'A': either A may be deleted; from the end the diagonal wins, so the FIRST A is deleted
    assert align_strings("AA", "A") == [("A", None), ("A", "A")]
    # 'A' -> 'AA': likewise the first predicted A is the insertion
    assert align_strings("A", "AA") == [(None, "A"), ("A", "A")]
    # 'AB' -> 'BA' costs 2: two substitutions, not delete/insert around the shared character
    assert align_strings("AB", "BA") == [("A", "B"), ("B", "A")]


@pytest.mark.parametrize("truth, pred", [("KITTEN", "SITTING"), ("ABC1234", "XABC12"), ("", "Q"), ("A", "")])
def test_alignment_cost_equals_edit_distance(truth, pred):
    pairs = align_strings(truth, pred)
    assert "".join(t for t, _ in pairs if t) == truth
    assert "".join(p for _, p in pairs if p) == pred
    assert sum(t != p for t, p in pairs) == edit_distance(truth, pred)


def test_char_accuracy_and_correct_chars():
    assert char_accuracy("ABC1234", "ABC1234") == 1.0
    assert char_accuracy("ABC1234", "A8C1234") == pytest.approx(6 / 7)
    assert char_accuracy("ABC1234", "") == 0.0
    assert char_accuracy("AB", "XYZWVU") == 0.0  # floored at 0, never negative
    assert correct_chars("ABC1234", "A8C1234") == 6
    assert correct_chars("ABC1234", "4BC1233") == 5  # same length: position-wise
    # same length counts positions, even when a shift makes every position wrong (edit distance 2)
    assert correct_chars("ABC1234", "BC12345") == 0
    assert correct_chars("ABC1234", "ABC12345") == 6  # longer: len - edit distance
    assert correct_chars("ABC1234", "") == 0
    assert correct_chars("AB", "XYZWVU") == 0  # floored at 0


# (truth, prediction, correct characters, edit distance), counted by hand
HAND_CASES = [
    ("ABC1234", "ABC1234", 7, 0),
    ("ABC1234", "A8C1234", 6, 1),  # ge6 boundary: exactly 6
    ("ABC1234", "A8C1284", 5, 2),  # ge5 boundary: exactly 5
    ("ABC1234", "A8C1B84", 4, 3),
    ("ABC1234", "", 0, 7),  # empty prediction
    ("ABC1234", "ABC12345", 6, 1),  # longer prediction
    ("ABC1D23", "ABC1D2", 6, 1),  # shorter prediction
]


def test_recognition_stats_hand_computed():
    truths = [case[0] for case in HAND_CASES]
    preds = [case[1] for case in HAND_CASES]
    for truth, pred, correct, distance in HAND_CASES:
        assert correct_chars(truth, pred) == correct
        assert edit_distance(truth, pred) == distance
    stats = RecognitionStats()
    stats.update(truths, preds)
    summary = stats.summary()
    assert summary["count"] == 7
    assert summary["word_acc"] == summary["recognition_rate"] == 1 / 7
    assert summary["ge6"] == 4 / 7  # 7, 6, 6, 6 correct
    assert summary["ge5"] == 5 / 7  # plus the one with exactly 5
    assert summary["char_acc"] == 34 / 49  # (7 + 6 + 5 + 4 + 0 + 6 + 6) / (7 * 7)


def test_recognition_stats_sums_merge_and_round_trip():
    truths = [case[0] for case in HAND_CASES]
    preds = [case[1] for case in HAND_CASES]
    first, second = RecognitionStats(), RecognitionStats()
    first.update(truths[:3], preds[:3])
    second.update(truths[3:], preds[3:])
    merged = RecognitionStats.from_tensor(first.as_tensor() + second.as_tensor())
    assert merged.summary() == recognition_summary(truths, preds)
    first.merge_(second)
    restored = RecognitionStats()
    restored.load_state_dict(first.state_dict())
    assert torch.equal(restored.as_tensor(), merged.as_tensor())
    assert first.all_reduce_().summary() == merged.summary()  # no process group: unchanged
    assert RecognitionStats().summary()["word_acc"] == 0.0
    with pytest.raises(ValueError):
        first.update(["ABC"], [])


def test_psnr_per_image():
    x = torch.zeros(3, 3, 4, 6)
    y = x.clone()
    y[0] = 0.1  # mse 0.01 -> 20 dB
    y[1, :, :2] = 0.5  # half the pixels off by 0.5: mse 0.125 -> 10 log10(8) dB
    values = psnr(y, x)
    assert values.shape == (3,)
    assert values[0].item() == pytest.approx(20.0, abs=1e-4)
    assert values[1].item() == pytest.approx(10 * math.log10(8), abs=1e-4)
    assert values[2].item() == pytest.approx(100.0)  # identical: capped, not inf
    assert psnr(y * 255, x * 255, data_range=255.0)[0].item() == pytest.approx(20.0, abs=1e-3)
    with pytest.raises(ValueError):
        psnr(x[0], y[0])


def test_sync_helpers_single_process():
    assert not is_distributed() and rank() == 0 and world_size() == 1
    tensor = torch.arange(4, dtype=torch.int32)
    assert all_reduce_sum_(tensor) is tensor and tensor.tolist() == [0, 1, 2, 3]
    assert state_hash({"a": torch.zeros(2), "b": 1}) == state_hash({"b": 1, "a": torch.zeros(2)})
    assert state_hash(torch.zeros(2)) != state_hash(torch.tensor([0.0, -0.0]))  # bitwise, not by value
    assert state_hash(torch.zeros(2)) != state_hash(torch.zeros(2, dtype=torch.float64))
    assert state_hash(torch.zeros(2)) != state_hash(torch.zeros(1, 2))
    nearby = 0.1 + 2e-17  # differs from 0.1 in the last bit only
    assert nearby != 0.1
    assert state_hash([0.1, None, "x"]) == state_hash([0.1, None, "x"]) != state_hash([nearby, None, "x"])
