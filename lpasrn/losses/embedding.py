"""Embedding-consistency loss for hard mining: G(LR) should embed like its own HR and unlike other
plates' HR images."""
from __future__ import annotations

import torch

# The embedder L2-normalises its output (SiameseEmbedder.forward): two embeddings are at most 2
# apart, so a hinge margin must be below 2 to be reachable (config.py validates embed_margin).
MAX_UNIT_DISTANCE = 2.0


def same_plate_matrix(texts: list[str], device=None) -> torch.Tensor:
    """BoolTensor [B, B]: entry (i, j) is True when sample i and sample j show the same text."""
    return torch.tensor([[a == b for b in texts] for a in texts], dtype=torch.bool, device=device)


def contrastive_embedding_loss(emb_sr: torch.Tensor, emb_hr: torch.Tensor,
                               same_plate: torch.Tensor | list[str], margin: float = 1.0) -> torch.Tensor:
    """Contrastive loss over the B x B pairs (SR embedding i, HR embedding j), emb_* [B, D].

    d_ij = ||emb_sr[i] - emb_hr[j]||_2; a same-plate pair costs d_ij^2 (pull together), a
    different-plate pair max(0, margin - d_ij)^2 (push apart up to the margin). The loss is
    mean(pull over positive pairs) + mean(push over negative pairs): each kind is averaged over its
    own pairs, so the B positives weigh as much as the ~B^2 negatives (one mean over all pairs would
    make the loss ~97% push at B = 32). A batch without negatives has a push term of 0 (still part
    of the graph). The loss is exactly 0 when every plate's SR embedding equals its HR embedding
    and different plates are at least `margin` apart: with unit-norm embeddings that needs
    margin < 2 (MAX_UNIT_DISTANCE). `same_plate` is a BoolTensor [B, B] or the list of B texts.
    No host synchronisation: the pair counts stay on the device.
    """
    if emb_sr.shape != emb_hr.shape or emb_sr.dim() != 2:
        raise ValueError(f"embeddings must both be [B, D], got {tuple(emb_sr.shape)} "
                         f"and {tuple(emb_hr.shape)}")
    if not torch.is_tensor(same_plate):
        same_plate = same_plate_matrix(list(same_plate), device=emb_sr.device)
    batch = emb_sr.shape[0]
    if same_plate.shape != (batch, batch):
        raise ValueError(f"same_plate must be [{batch}, {batch}], got {tuple(same_plate.shape)}")
    diff = emb_sr[:, None, :] - emb_hr[None, :, :]
    # The squared distance is computed directly: sqrt has an infinite gradient at 0, and identical
    # same-plate pairs (distance 0) are the common case late in training.
    dist_sq = (diff * diff).sum(dim=-1)
    dist = (dist_sq + 1e-12).sqrt()
    positive = same_plate.to(emb_sr.device, emb_sr.dtype)
    negative = 1.0 - positive
    pull = (dist_sq * positive).sum() / positive.sum().clamp_min(1.0)
    push = (torch.clamp(margin - dist, min=0.0) ** 2 * negative).sum() / negative.sum().clamp_min(1.0)
    return pull + push


def stage_position(epoch: int, step: int, steps_per_epoch: int) -> float:
    """Epochs of the stage done at the END of step `step` (0-based) of `epoch` (0-based):
    epoch + (step + 1) / steps_per_epoch. Always > 0, so a warm-up driven by it is never at 0."""
    return max(0, epoch) + (max(0, step) + 1) / max(1, steps_per_epoch)


def lambda_embed_at(position: float, warmup_epochs: int, target: float = 0.3) -> float:
    """Weight of the embedding loss at `position` (epochs done in the stage, fractional; see
    `stage_position`): rises linearly from 0 at position 0 to `target` at `warmup_epochs`, then
    stays at `target`. The ramp is per step, so a 1-epoch warm-up in a 1-epoch stage climbs to
    the target within the stage instead of being 0 throughout. warmup_epochs <= 0: target."""
    if warmup_epochs <= 0:
        return float(target)
    return float(target) * min(1.0, max(0.0, position) / warmup_epochs)
