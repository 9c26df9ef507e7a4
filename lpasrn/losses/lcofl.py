"""LCOFL: layout- and character-oriented focal loss, built so that every term trains the generator.

LCOFL = lambda_cls * L_cls + lambda_layout * L_layout + lambda_ssim * (1 - SSIM(sr, hr)) / 2.

Constants as the official code defines them (Valfride/lpsr-lacd, losses/lossPack.py,
OCR_perceptual_loss): the layout penalty adds 0.4 per digit read on a letter position and 0.5 per
letter read on a digit position, SUMMED over a plate's positions and averaged over the plates of the
batch (`layout_penalty` + `forward`: `penalty/len(pred1_layout)`); the SSIM term is kornia's
`SSIMLoss`, which returns (1 - SSIM) / 2 (window 5 in configs/cgnetV2_deformable.yaml). The older
reductions (mean per layout position, 1 - SSIM) stay available through `layout_reduction` and
`ssim_loss_scale` (config keys `loss.layout_reduction`, `loss.ssim_loss_scale`).

The published code computes its character and layout terms from decoded strings of a detached SR
image, so only its SSIM term reaches the generator. Here both OCR terms are functions of the OCR's
probabilities on G(LR): the ground truth is forced-aligned to the OCR's frames (no gradient, the
frames are integers) and the probabilities at those frames are gathered from the logits WITH
gradient, so the loss flows through the OCR (frozen or not) into the generator. No decoded string
ever enters the loss.

Indexing of the confusion matrix and the class weights: CHARACTER index 0..35 = class - 1 (class 0
is the CTC blank, which has no weight). A confusion matrix may carry one extra row (index 36:
insertions, a character read where the ground truth has none) and/or one extra column (index 36:
deletions, a ground-truth character the OCR did not read).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lpasrn.models.alignment import aligned_frames, gather_frames
from lpasrn.plates import (CHARSET, DIGIT_CLASSES, LETTER_CLASSES, MAX_TEXT_LEN, detect_layout, encode,
                           layout_pattern)
from lpasrn.losses.ssim import ssim

NUM_CHARS = len(CHARSET)  # 36


def class_weights_from_confusion(confusion: torch.Tensor, threshold: float = 0.25,
                                 step: float = 0.5) -> torch.Tensor:
    """Weights [36] (character index) from confusion counts [C_true, C_pred], rows = ground truth.

    w[c] = 1 + step * #{c' != c among the 36 characters : confusion[c, c'] / rowsum(c) > threshold}.
    The row sum includes the deletion column when present (it is part of how often c was seen);
    deletions and insertions are not characters, so they never count as a confused class. Rows
    with no counts get weight 1. float64: a deterministic function of the counts, so ranks holding
    the same synced counts hold bitwise the same weights.
    """
    rows, cols = confusion.shape
    if rows not in (NUM_CHARS, NUM_CHARS + 1) or cols not in (NUM_CHARS, NUM_CHARS + 1):
        raise ValueError(f"confusion matrix must be [36|37, 36|37], got {tuple(confusion.shape)}")
    counts = confusion.detach().to(torch.float64)[:NUM_CHARS]
    row_sums = counts.sum(dim=1, keepdim=True)
    rates = torch.where(row_sums > 0, counts / row_sums.clamp_min(1.0), torch.zeros_like(counts))
    confused = rates[:, :NUM_CHARS] > threshold
    confused.fill_diagonal_(False)
    return 1.0 + step * confused.sum(dim=1).to(torch.float64)


def _position_kinds(texts: list[str], layouts: list[str], max_len: int,
                    device) -> tuple[torch.Tensor, torch.Tensor]:
    """(is_letter, is_digit) BoolTensors [B, K] from each text's layout pattern. Texts whose layout
    is 'other', or whose length differs from their layout's pattern, have no layout positions."""
    is_letter = torch.zeros((len(texts), max_len), dtype=torch.bool)
    is_digit = torch.zeros_like(is_letter)
    for b, (text, layout) in enumerate(zip(texts, layouts)):
        pattern = layout_pattern(layout)
        if pattern is None or len(pattern) != len(text):
            continue
        for j, kind in enumerate(pattern[:max_len]):
            (is_letter if kind == "L" else is_digit)[b, j] = True
    return is_letter.to(device), is_digit.to(device)


LAYOUT_REDUCTIONS = ("plate_sum", "position_mean")


def layout_penalty(char_probs: torch.Tensor, texts: list[str], layouts: list[str],
                   letter_on_digit: float = 0.5, digit_on_letter: float = 0.4,
                   reduction: str = "plate_sum") -> torch.Tensor:
    """Layout term on per-position probabilities char_probs [B, K, 37].

    On each letter position: digit_on_letter x (probability mass on the 10 digit classes); on each
    digit position: letter_on_digit x (mass on the 26 letter classes). reduction "plate_sum" (the
    official definition): summed over each plate's positions, then the mean over the B plates
    ('other' plates add 0); "position_mean": the mean over all layout positions of the batch (about
    7x weaker on 7-character plates). 0, still attached to the graph, when nothing has a layout.
    """
    if reduction not in LAYOUT_REDUCTIONS:
        raise ValueError(f"layout reduction {reduction!r} is not one of {list(LAYOUT_REDUCTIONS)}")
    if len(texts) != char_probs.shape[0] or len(layouts) != char_probs.shape[0]:
        raise ValueError(f"{len(texts)} texts / {len(layouts)} layouts for a batch of {char_probs.shape[0]}")
    is_letter, is_digit = _position_kinds(texts, layouts, char_probs.shape[1], char_probs.device)
    digit_mass = char_probs[..., list(DIGIT_CLASSES)].sum(dim=-1)
    letter_mass = char_probs[..., list(LETTER_CLASSES)].sum(dim=-1)
    penalty = digit_on_letter * digit_mass * is_letter + letter_on_digit * letter_mass * is_digit
    if reduction == "plate_sum":
        return penalty.sum() / max(1, char_probs.shape[0])
    positions = (is_letter | is_digit).sum()
    # no `if positions == 0` (a host sync): with no layout position the penalty sums to 0 (still
    # attached to the graph) and the clamped divisor keeps it 0
    return penalty.sum() / positions.clamp_min(1)


def weighted_char_cross_entropy(char_log_probs: torch.Tensor, texts: list[str], mask: torch.Tensor,
                                class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """sum_{b,k} w[c_bk] * -log p_bk(c_bk) / sum_{b,k} w[c_bk] over real positions (mask), with
    char_log_probs [B, K, 37], class weights [36] by character index (None: all 1)."""
    batch, max_len, _ = char_log_probs.shape
    targets = torch.zeros((batch, max_len), dtype=torch.long)
    for b, text in enumerate(texts):
        targets[b, :len(text)] = torch.tensor(encode(text), dtype=torch.long)
    targets = targets.to(char_log_probs.device)
    nll = -char_log_probs.gather(2, targets[..., None])[..., 0]
    if class_weights is None:
        weights = mask.to(nll.dtype)
    else:
        if class_weights.shape != (NUM_CHARS,):
            raise ValueError("class_weights must have shape (36,) by character index, "
                             f"got {tuple(class_weights.shape)}")
        weights = class_weights.to(nll.device, nll.dtype)[(targets - 1).clamp_min(0)] * mask
    return (weights * nll).sum() / weights.sum().clamp_min(1e-12)


class LCOFL(nn.Module):
    """The LCOFL loss; see the module docstring. forward returns (total, terms) where terms holds
    detached values of 'cls', 'layout' and 'ssim_loss' (= ssim_loss_scale * (1 - SSIM)) for logging."""

    def __init__(self, lambda_cls: float = 1.0, lambda_layout: float = 1.0, lambda_ssim: float = 1.0,
                 ssim_window: int = 5, letter_on_digit: float = 0.5, digit_on_letter: float = 0.4,
                 max_len: int = MAX_TEXT_LEN, layout_reduction: str = "plate_sum",
                 ssim_loss_scale: float = 0.5):
        super().__init__()
        if layout_reduction not in LAYOUT_REDUCTIONS:
            raise ValueError(f"layout reduction {layout_reduction!r} is not one of {list(LAYOUT_REDUCTIONS)}")
        self.layout_reduction, self.ssim_loss_scale = layout_reduction, ssim_loss_scale
        self.lambda_cls, self.lambda_layout, self.lambda_ssim = lambda_cls, lambda_layout, lambda_ssim
        self.ssim_window = ssim_window
        self.letter_on_digit, self.digit_on_letter = letter_on_digit, digit_on_letter
        self.max_len = max_len

    def forward(self, sr: torch.Tensor, hr: torch.Tensor, ocr_logits_on_sr: torch.Tensor,
                texts: list[str], layouts: list[str] | None = None,
                class_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """sr, hr [B, 3, 32, 96]; ocr_logits_on_sr [B, T, 37] = ocr(sr); layouts None: detected from
        the texts; class_weights [36] by character index or None (uniform)."""
        if layouts is None:
            layouts = [detect_layout(t) for t in texts]
        frames, mask = aligned_frames(ocr_logits_on_sr, texts, self.max_len)
        char_log_probs = gather_frames(F.log_softmax(ocr_logits_on_sr.float(), dim=-1), frames)
        l_cls = weighted_char_cross_entropy(char_log_probs, texts, mask, class_weights)
        l_layout = layout_penalty(char_log_probs.exp(), texts, layouts,
                                  self.letter_on_digit, self.digit_on_letter, self.layout_reduction)
        l_ssim = self.ssim_loss_scale * (1.0 - ssim(sr, hr, window=self.ssim_window))
        total = self.lambda_cls * l_cls + self.lambda_layout * l_layout + self.lambda_ssim * l_ssim
        terms = {"cls": l_cls.detach(), "layout": l_layout.detach(), "ssim_loss": l_ssim.detach()}
        return total, terms
