"""CTC forced alignment: on which frame does the OCR emit each ground-truth character?

LCOFL needs a probability distribution per character position, but a CTC OCR gives one per frame.
The Viterbi path through the CTC lattice of the ground truth (the extended target
`blank c1 blank c2 ... cL blank`) says which frames belong to which character; the probabilities at
those frames are then gathered WITH gradient from the logits, so the loss trains whatever produced
the logits (the generator through a frozen OCR). Only the frame indices come from the no-grad
alignment: they are integers, there is nothing to differentiate.

Frame rule: each character of the target owns the run of frames that the best path spends in its
state; the character's frame is the frame of that run with the highest log-probability of the
character (ties: the earliest).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lpasrn.plates import BLANK, MAX_TEXT_LEN, encode

_NEG_INF = float("-inf")


def _shift_right(x: torch.Tensor, steps: int, fill) -> torch.Tensor:
    """x [B, S] moved `steps` states to the right along dim 1, `fill` entering on the left."""
    return F.pad(x, (steps, 0), value=fill)[:, :x.shape[1]]


def _extended_targets(targets: list[list[int]], device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Padded extended targets [B, S] (blank, c1, blank, ..., cL, blank), the mask of real states
    [B, S] and which states may be entered from two states back (skipping a blank) [B, S]."""
    max_len = max((len(t) for t in targets), default=0)
    num_states = 2 * max_len + 1
    ext = torch.full((len(targets), num_states), BLANK, dtype=torch.long)
    valid = torch.zeros((len(targets), num_states), dtype=torch.bool)
    for b, target in enumerate(targets):
        if target:
            ext[b, 1:2 * len(target):2] = torch.as_tensor(target, dtype=torch.long)
        valid[b, :2 * len(target) + 1] = True
    two_back = _shift_right(ext, 2, BLANK)
    # A blank can be skipped only between two different characters.
    can_skip = valid & (ext != BLANK) & (ext != two_back)
    can_skip[:, :2] = False
    return ext.to(device), valid.to(device), can_skip.to(device)


@torch.no_grad()
def _viterbi(log_probs: torch.Tensor, targets: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Best CTC path for each sample: (states [B, T] indices into the extended target,
    scores [B] = log-probability of that path, -inf when the target cannot fit in T frames)."""
    log_probs = log_probs.detach().float()
    batch, frames, _ = log_probs.shape
    ext, valid, can_skip = _extended_targets(targets, log_probs.device)
    num_states = ext.shape[1]
    emit = log_probs.gather(2, ext[:, None, :].expand(batch, frames, num_states))  # [B, T, S]
    neg_inf = torch.full_like(emit[:, 0], _NEG_INF)

    alpha = neg_inf.clone()
    alpha[:, :2] = emit[:, 0, :2]
    alpha = torch.where(valid, alpha, neg_inf)
    backpointers = []  # per frame t >= 1: how many states back the best predecessor is (0, 1, 2)
    for t in range(1, frames):
        from_prev = _shift_right(alpha, 1, _NEG_INF)
        from_two_back = torch.where(can_skip, _shift_right(alpha, 2, _NEG_INF), neg_inf)
        best, step_back = torch.stack([alpha, from_prev, from_two_back]).max(dim=0)
        alpha = torch.where(valid, best + emit[:, t], neg_inf)
        backpointers.append(step_back)

    lengths = torch.tensor([2 * len(t) + 1 for t in targets], device=log_probs.device)
    last = (lengths - 1)[:, None]
    before_last = (lengths - 2).clamp_min(0)[:, None]  # == last for an empty target
    end_scores = torch.cat([alpha.gather(1, last), alpha.gather(1, before_last)], dim=1)
    scores, which_end = end_scores.max(dim=1)
    state = torch.where(which_end == 0, last[:, 0], before_last[:, 0])

    states = torch.empty((batch, frames), dtype=torch.long, device=log_probs.device)
    states[:, frames - 1] = state
    for t in range(frames - 1, 0, -1):
        # clamp: on an unalignable sample every score is -inf and the pointers are arbitrary.
        state = (state - backpointers[t - 1].gather(1, state[:, None])[:, 0]).clamp_min(0)
        states[:, t - 1] = state
    return states, scores


def best_ctc_path(log_probs: torch.Tensor, target: list[int]) -> tuple[torch.Tensor, float]:
    """The most probable CTC path of log_probs [T, C] that collapses to `target`:
    (class per frame LongTensor[T], its log-probability; -inf and a meaningless path when the
    target does not fit in T frames)."""
    states, scores = _viterbi(log_probs[None], [list(target)])
    ext, _, _ = _extended_targets([list(target)], log_probs.device)
    return ext[0, states[0]], float(scores[0])


def _evenly_spaced_frames(length: int, frames: int) -> list[int]:
    return [min(frames - 1, int((j + 0.5) * frames / length)) for j in range(length)]


@torch.no_grad()
def forced_align_batch(log_probs: torch.Tensor, targets: list[list[int]],
                       max_len: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Frame of each target character for a batch of log_probs [B, T, C].

    Returns (frames LongTensor[B, K], mask BoolTensor[B, K], alignable BoolTensor[B]) with
    K = max_len (default: the longest target); frames past a target's length are 0 and masked.
    A target that cannot be aligned (it needs more frames than T: its length plus one blank per
    pair of equal neighbours) falls back to evenly spaced frames, frame of character j =
    floor((j + 0.5) * T / L), and is reported as not alignable.
    """
    batch, frames, _ = log_probs.shape
    if len(targets) != batch:
        raise ValueError(f"{len(targets)} targets for a batch of {batch}")
    longest = max((len(t) for t in targets), default=0)
    max_len = longest if max_len is None else max_len
    if longest > max_len:
        raise ValueError(f"a target of length {longest} is longer than max_len={max_len}")
    device = log_probs.device
    states, scores = _viterbi(log_probs, targets)
    ext, _, _ = _extended_targets(targets, device)
    path_scores = log_probs.detach().float().gather(2, ext.gather(1, states)[:, :, None])[:, :, 0]

    # Character j lives in extended state 2j + 1; pick its best-scoring frame within its run.
    char_states = 2 * torch.arange(max_len, device=device) + 1  # [K]
    in_run = states[:, None, :] == char_states[None, :, None]  # [B, K, T]
    scores_per_char = path_scores[:, None, :].expand_as(in_run)
    run_scores = torch.where(in_run, scores_per_char, torch.full_like(scores_per_char, _NEG_INF))
    aligned = run_scores.argmax(dim=2)  # first maximum: the earliest frame on ties

    lengths = torch.tensor([len(t) for t in targets], device=device)
    mask = torch.arange(max_len, device=device)[None, :] < lengths[:, None]
    alignable = torch.isfinite(scores)
    # The fallback of every sample is built on the host from the targets alone and chosen on the
    # device: asking which samples failed (`nonzero(...).tolist()`) would be a host sync per step.
    fallback = torch.zeros((batch, max_len), dtype=torch.long)
    for b, target in enumerate(targets):
        fallback[b, :len(target)] = torch.as_tensor(_evenly_spaced_frames(len(target), frames), dtype=torch.long)
    aligned = torch.where(alignable[:, None], aligned, fallback.to(device, non_blocking=True))
    return torch.where(mask, aligned, torch.zeros_like(aligned)), mask, alignable


def forced_align(log_probs: torch.Tensor, target: list[int]) -> torch.Tensor:
    """Frame (LongTensor[L]) on which each character of `target` is emitted, for log_probs [T, C]
    of one sample. See the module docstring for the frame rule and forced_align_batch for the
    fallback when the target does not fit."""
    frames, _, _ = forced_align_batch(log_probs[None], [list(target)])
    return frames[0, :len(target)]


def aligned_frames(logits: torch.Tensor, texts: list[str],
                   max_len: int = MAX_TEXT_LEN) -> tuple[torch.Tensor, torch.Tensor]:
    """(frames LongTensor[B, K], mask BoolTensor[B, K]) for OCR logits [B, T, C] and plate texts."""
    log_probs = F.log_softmax(logits.detach().float(), dim=-1)
    frames, mask, _ = forced_align_batch(log_probs, [encode(t) for t in texts], max_len=max_len)
    return frames, mask


def gather_frames(per_frame: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """per_frame [B, T, C] at frames [B, K] -> [B, K, C], differentiable w.r.t. per_frame."""
    index = frames[:, :, None].expand(-1, -1, per_frame.shape[2])
    return per_frame.gather(1, index)


def char_probabilities(logits: torch.Tensor, texts: list[str],
                       max_len: int = MAX_TEXT_LEN) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax probabilities [B, K, C] at the aligned frame of each character position, with
    gradient to the logits, and the mask [B, K] of real positions (K = max_len). Texts that cannot
    be aligned use evenly spaced frames (see forced_align_batch)."""
    frames, mask = aligned_frames(logits, texts, max_len)
    return gather_frames(F.softmax(logits, dim=-1), frames), mask
