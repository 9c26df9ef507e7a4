"""Forced alignment against brute force over every CTC path, and gradient-carrying gathering."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from lpasrn.models.alignment import (best_ctc_path, char_probabilities, forced_align,
                                     forced_align_batch)
from lpasrn.plates import BLANK, CHAR_TO_CLASS, MAX_TEXT_LEN, NUM_CLASSES


def collapse(path):
    out, previous = [], None
    for c in path:
        if c != previous and c != BLANK:
            out.append(c)
        previous = c
    return out


def brute_force_best_path(log_probs, target):
    """Max-log-prob path of length T over C classes collapsing to target, or (None, -inf)."""
    frames, classes = log_probs.shape
    best_path, best_score = None, -math.inf
    for path in itertools.product(range(classes), repeat=frames):
        if collapse(path) != list(target):
            continue
        score = sum(float(log_probs[t, c]) for t, c in enumerate(path))
        if score > best_score:
            best_path, best_score = path, score
    return best_path, best_score


def frames_by_rule(log_probs, path, target_len):
    """The documented rule on a given path: each character's run (consecutive equal non-blank
    frames; a new run starts after a blank or on a different class) -> its best-scoring frame."""
    runs, previous = [], BLANK
    for t, c in enumerate(path):
        if c != BLANK and c != previous:
            runs.append([t])
        elif c != BLANK:
            runs[-1].append(t)
        previous = c
    assert len(runs) == target_len
    return [max(run, key=lambda t: (float(log_probs[t, path[t]]), -t)) for run in runs]


CASES = [  # (T, C, target)
    (4, 3, [1, 2]), (5, 3, [1, 1]), (5, 4, [1, 2, 3]), (6, 3, [2, 2, 1]),
    (6, 4, [3, 1, 3]), (6, 3, [1]), (5, 4, [2, 2]), (6, 4, [1, 2, 1, 2]), (3, 3, []),
]


@pytest.mark.parametrize("frames,classes,target", CASES)
def test_forced_alignment_equals_brute_force(frames, classes, target):
    generator = torch.Generator().manual_seed(frames * 100 + classes * 10 + len(target))
    for _ in range(3):
        log_probs = F.log_softmax(torch.randn(frames, classes, generator=generator) * 2.0, dim=-1)
        expected_path, expected_score = brute_force_best_path(log_probs, target)
        path, score = best_ctc_path(log_probs, target)
        assert score == pytest.approx(expected_score, abs=1e-5)
        assert path.tolist() == list(expected_path)
        aligned = forced_align(log_probs, target)
        assert aligned.tolist() == frames_by_rule(log_probs, expected_path, len(target))


def test_batched_alignment_matches_single_sample_alignment():
    torch.manual_seed(1)
    targets = [[1, 2, 3], [4], [5, 5, 6, 2], [7, 8]]
    log_probs = F.log_softmax(torch.randn(len(targets), 10, 9), dim=-1)
    frames, mask, alignable = forced_align_batch(log_probs, targets, max_len=5)
    assert frames.shape == (4, 5) and alignable.all()
    for b, target in enumerate(targets):
        assert mask[b].tolist() == [j < len(target) for j in range(5)]
        assert frames[b, :len(target)].tolist() == forced_align(log_probs[b], target).tolist()
        assert (frames[b, len(target):] == 0).all()
        assert frames[b, :len(target)].diff().gt(0).all()  # characters in order, one frame each


def test_unalignable_target_falls_back_to_even_spacing():
    # "AA B" needs 4 frames (a blank between the two A's); with T = 3 it cannot be aligned.
    log_probs = F.log_softmax(torch.randn(3, NUM_CLASSES), dim=-1)
    target = [CHAR_TO_CLASS["A"], CHAR_TO_CLASS["A"], CHAR_TO_CLASS["B"]]
    frames, _, alignable = forced_align_batch(log_probs[None], [target])
    assert not alignable[0]
    assert frames[0].tolist() == [0, 1, 2]  # floor((j + 0.5) * 3 / 3)


def test_char_probabilities_carry_gradient_only_through_gathering():
    torch.manual_seed(2)
    logits = torch.randn(2, 24, NUM_CLASSES, requires_grad=True)
    texts = ["ABC1234", "XY9"]
    probs, mask = char_probabilities(logits, texts)
    assert probs.shape == (2, MAX_TEXT_LEN, NUM_CLASSES)
    assert mask.sum(dim=1).tolist() == [7, 3]
    assert torch.allclose(probs.sum(dim=-1), torch.ones(2, MAX_TEXT_LEN))
    # The probabilities are exactly the softmax at the aligned frames.
    frames, _, _ = forced_align_batch(F.log_softmax(logits.detach(), -1),
                                      [[CHAR_TO_CLASS[c] for c in t] for t in texts], MAX_TEXT_LEN)
    expected = F.softmax(logits.detach(), -1)[torch.arange(2)[:, None], frames]
    assert torch.allclose(probs.detach(), expected)
    target_prob = probs[0, 0, CHAR_TO_CLASS["A"]]
    target_prob.backward()
    grad_frames = logits.grad[0].abs().sum(dim=-1).nonzero().flatten().tolist()
    assert grad_frames == [int(frames[0, 0])]  # gradient reaches exactly the aligned frame


def test_alignment_follows_a_confident_reading():
    # Logits that clearly read "AB" on frames 2 and 5: the alignment must pick those frames.
    logits = torch.full((1, 8, NUM_CLASSES), -5.0)
    logits[0, :, BLANK] = 5.0
    logits[0, 2, CHAR_TO_CLASS["A"]] = 10.0
    logits[0, 5, CHAR_TO_CLASS["B"]] = 10.0
    target = [CHAR_TO_CLASS["A"], CHAR_TO_CLASS["B"]]
    assert forced_align(F.log_softmax(logits[0], -1), target).tolist() == [2, 5]
