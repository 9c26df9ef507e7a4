"""Pixel loss between the generator's output and the HR image."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def l1_loss(sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over all pixels and channels of sr and hr [B, 3, H, W]."""
    if sr.shape != hr.shape:
        raise ValueError(f"sr {tuple(sr.shape)} and hr {tuple(hr.shape)} differ in shape")
    return F.l1_loss(sr, hr)
