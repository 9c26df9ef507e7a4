"""Differentiable SSIM (Wang et al. 2004) with a Gaussian window.

Conventions (the test's numpy/scipy reference uses the same ones):
- window: a `window` x `window` Gaussian of std `sigma`, the outer product of the normalised 1-D
  Gaussian exp(-(i - (window - 1) / 2)^2 / (2 sigma^2)), so it sums to 1;
- local statistics by that window over each channel separately, VALID padding (only positions where
  the window lies inside the image; a 32x96 image gives a 28x92 map for window 5);
- variance and covariance as E[x^2] - E[x]^2 (biased), C1 = (0.01 L)^2, C2 = (0.03 L)^2 with L =
  data_range;
- the SSIM of an image is the mean of its map over positions and channels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def gaussian_window(window: int, sigma: float, dtype=torch.float32, device=None) -> torch.Tensor:
    """The normalised 2-D Gaussian window [window, window]."""
    coords = torch.arange(window, dtype=torch.float64) - (window - 1) / 2.0
    line = torch.exp(-coords ** 2 / (2.0 * sigma ** 2))
    line = line / line.sum()
    return torch.outer(line, line).to(dtype=dtype, device=device)


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = 5, data_range: float = 1.0,
         sigma: float = 1.5, reduction: str = "mean") -> torch.Tensor:
    """SSIM between images x and y [B, C, H, W]: a scalar (reduction="mean", mean over the batch)
    or one value per image [B] (reduction="none"). Differentiable w.r.t. both inputs."""
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"ssim needs two [B, C, H, W] tensors of one shape, got {tuple(x.shape)} "
                         f"and {tuple(y.shape)}")
    if min(x.shape[-2:]) < window:
        raise ValueError(f"images {tuple(x.shape[-2:])} are smaller than the SSIM window {window}")
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    channels = x.shape[1]
    # Float32 at least: under mixed precision the E[x^2] - E[x]^2 cancellation is ruinous in fp16.
    dtype = torch.promote_types(x.dtype, torch.float32)
    x, y = x.to(dtype), y.to(dtype)
    kernel = gaussian_window(window, sigma, dtype, x.device).expand(channels, 1, window, window)

    def local_mean(img: torch.Tensor) -> torch.Tensor:
        return F.conv2d(img, kernel, groups=channels)

    mu_x, mu_y = local_mean(x), local_mean(y)
    var_x = local_mean(x * x) - mu_x ** 2
    var_y = local_mean(y * y) - mu_y ** 2
    cov_xy = local_mean(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / (
        (mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    per_image = ssim_map.mean(dim=(1, 2, 3))
    return per_image.mean() if reduction == "mean" else per_image
