"""Siamese embedder: one CNN applied to both G(LR) and HR, giving L2-normalised embeddings for the
embedding-consistency loss (same plate close, different plates apart).

Full variant: four conv stages (32-64-128-256 channels, BN + ReLU, stride-2 pooling), global
average pool, linear projection. Lightweight variant: depthwise-separable convs with 16-32-64
channels, about 100x fewer parameters (12 k vs 1.2 M), for stages where the embedder must be cheap.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lpasrn.models.norm import BatchNorm2d


def _full_stage(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
        BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False),
        BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


def _separable_stage(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, in_ch, 3, padding=1, groups=in_ch, bias=False),
        nn.Conv2d(in_ch, out_ch, 1, bias=False),
        BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class SiameseEmbedder(nn.Module):
    """images [B, 3, 32, 96] in [0, 1] -> embeddings [B, embedding_dim] with unit L2 norm."""

    def __init__(self, embedding_dim: int = 128, lightweight: bool = False):
        super().__init__()
        self.embedding_dim = embedding_dim
        self.lightweight = lightweight
        if lightweight:
            # The first stage is a plain conv: a depthwise conv over 3 RGB channels sees too little.
            stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), BatchNorm2d(16),
                                 nn.ReLU(inplace=True), nn.MaxPool2d(2))
            self.features = nn.Sequential(stem, _separable_stage(16, 32), _separable_stage(32, 64))
            width = 64
        else:
            channels = (3, 32, 64, 128, 256)
            self.features = nn.Sequential(*[_full_stage(a, b) for a, b in zip(channels, channels[1:])])
            width = channels[-1]
        self.projection = nn.Linear(width, embedding_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pooled = self.features(images * 2.0 - 1.0).mean(dim=(2, 3))
        return F.normalize(self.projection(pooled), dim=1)
