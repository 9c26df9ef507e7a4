"""Embedding-consistency loss for hard mining: G(LR) should embed like its own HR and unlike other
plates' HR images."""
from __future__ import annotations

import torch


def same_plate_matrix(texts: list[str], device=None) -> torch.Tensor:
    """BoolTensor [B, B]: entry (i, j) is True when sample i and sample j show the same text."""
    return torch.tensor([[a == b for b in texts] for a in texts], dtype=torch.bool, device=device)


def contrastive_embedding_loss(emb_sr: torch.Tensor, emb_hr: torch.Tensor,
                               same_plate: torch.Tensor | list[str], margin: float = 2.0) -> torch.Tensor:
    """Contrastive loss over all B x B pairs (SR embedding i, HR embedding j), emb_* [B, D].

    d_ij = ||emb_sr[i] - emb_hr[j]||_2; pair loss = d_ij^2 for the same plate (pull together),
    max(0, margin - d_ij)^2 for different plates (push apart up to the margin). The result is the
    mean over the B^2 pairs. `same_plate` is a BoolTensor [B, B] or the list of B plate texts.
    Note: unit-norm embeddings are at most 2 apart, so margin 2.0 asks different plates to be
    opposite; the hinge then never reaches zero but its gradient is what matters.
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
    pull = dist_sq
    push = torch.clamp(margin - dist, min=0.0) ** 2
    return torch.where(same_plate.to(emb_sr.device), pull, push).mean()


def lambda_embed_at(epoch: int, warmup_epochs: int, target: float = 0.3) -> float:
    """Weight of the embedding loss at `epoch` (0-based within the stage): rises linearly from 0 at
    epoch 0 to `target` at epoch `warmup_epochs`, then stays at `target`. warmup_epochs <= 0: target."""
    if warmup_epochs <= 0:
        return float(target)
    return float(target) * min(1.0, max(0, epoch) / warmup_epochs)
