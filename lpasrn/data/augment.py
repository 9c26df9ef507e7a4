"""Seeded, batched training augmentation on the device (CPU or CUDA), applied by the runner's
training step only (validation, scoring and evaluation never see it).

- paired geometric: one small affine per sample (rotation, scale, translation, shear) applied to LR
  and HR through `affine_grid`/`grid_sample` in normalised coordinates (align_corners=False), so
  the SAME continuous transform is applied at both resolutions and the pair stays aligned (a shift
  of 2 HR pixels is a shift of 1 LR pixel). Rotation and shear are built in pixel space and carried
  into normalised coordinates, so a plate is rotated, not sheared, although it is 3x wider than high.
- photometric: brightness, contrast, gamma, saturation and per-channel gains ("hue-ish" colour
  cast) with the same parameters on LR and HR. Every operation is pointwise (contrast pivots on
  0.5, not on the image mean, which differs between LR and HR), so it is one function of the pixel
  value applied to both. Clamped to [0, 1].
- degraded views (stage 0 only): with probability p a sample's HR, which in stage 0 only the OCR
  reads, is replaced by a degraded copy at HR size (Gaussian blur, downscale-upscale, noise), so the
  OCR that later steers the generator has learnt to read blurry input like SR output.

Randomness: every sample's parameters come from its own `torch.Generator` on the host, seeded with a
hash of (seed, stage, epoch, step in epoch, sid). Why: a mid-epoch resume restores the epoch, the
step and the batches (whose sids depend only on seed, epoch and rank) but not any global RNG stream
consumed before it, so the augmentation must be a pure function of those numbers. Per sample (not
per batch) keeps a sample's draw independent of the others in its batch; the step makes a sample
drawn twice in one epoch (weighted sampler, resampled stream) see two different views. The draws
are identical on CPU and CUDA (host generator) and cost ~B tiny host RNG calls; no host sync: the
sids are read from the host batch, the parameters are copied to the device asynchronously.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

_MASK64 = (1 << 64) - 1
_LUMA = (0.299, 0.587, 0.114)

# Layout of each sample's uniform draws in [0, 1): every parameter always has its slot, so turning
# one feature on or off never changes what another draws.
_SLOTS = ("rotation", "scale", "tx", "ty", "shear", "brightness", "contrast", "gamma", "saturation",
          "gain_r", "gain_g", "gain_b", "degrade", "blur", "downscale", "noise")
_AT = {name: i for i, name in enumerate(_SLOTS)}


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def sample_key(*parts: int) -> int:
    """A 63-bit seed from a few integers (order matters); plain Python, the same on every machine."""
    key = 0
    for part in parts:
        key = _splitmix64(key ^ (int(part) & _MASK64))
    return key >> 1


def draw_uniforms(keys: list[int], noise_shape: tuple[int, ...] | None = None):
    """[B, len(_SLOTS)] uniforms (and [B, *noise_shape] standard normals when asked), one generator
    per sample seeded with its key, so a sample's draw does not depend on its batch."""
    uniforms, noise = [], []
    for key in keys:
        gen = torch.Generator().manual_seed(key)
        uniforms.append(torch.rand(len(_SLOTS), generator=gen, dtype=torch.float64))
        if noise_shape is not None:
            noise.append(torch.randn(noise_shape, generator=gen))
    u = torch.stack(uniforms) if keys else torch.empty(0, len(_SLOTS), dtype=torch.float64)
    return u, (torch.stack(noise) if noise_shape is not None and keys else None)


def _symmetric(u: torch.Tensor, amount: float) -> torch.Tensor:
    return (2.0 * u - 1.0) * amount


def affine_thetas(u: torch.Tensor, cfg, aspect: float) -> torch.Tensor:
    """[B, 2, 3] sampling matrices (output -> input, normalised coordinates) from the uniforms.

    Built in a pixel-proportional frame (x scaled by the aspect W/H) and carried back, so rotation
    by r degrees rotates the plate by r degrees on screen. The same theta fits LR and HR because
    they have the same aspect."""
    rot = torch.deg2rad(_symmetric(u[:, _AT["rotation"]], cfg.max_rotation_deg))
    shear = torch.tan(torch.deg2rad(_symmetric(u[:, _AT["shear"]], cfg.max_shear_deg)))
    scale = 1.0 + _symmetric(u[:, _AT["scale"]], cfg.max_scale)
    cos, sin = torch.cos(rot) / scale, torch.sin(rot) / scale
    # inverse map in the pixel-proportional frame: rotate, then shear along x, then scale
    m00, m01 = cos, -sin + shear * cos
    m10, m11 = sin, cos + shear * sin
    theta = torch.zeros(u.shape[0], 2, 3, dtype=torch.float64)
    theta[:, 0, 0], theta[:, 0, 1] = m00, m01 / aspect
    theta[:, 1, 0], theta[:, 1, 1] = m10 * aspect, m11
    # translation as a fraction of width/height; the normalised frame spans 2 per side
    theta[:, 0, 2] = 2.0 * _symmetric(u[:, _AT["tx"]], cfg.max_translate)
    theta[:, 1, 2] = 2.0 * _symmetric(u[:, _AT["ty"]], cfg.max_translate)
    return theta


def warp(images: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Bilinear resampling of [B, C, H, W] by `theta` (border padding: plates fill the crop)."""
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def photometric_params(u: torch.Tensor, cfg) -> dict[str, torch.Tensor]:
    """Per-sample photometric parameters, shaped [B, 1 or 3, 1, 1] for broadcasting."""
    def col(name, amount):
        return _symmetric(u[:, _AT[name]], amount).view(-1, 1, 1, 1)

    gains = torch.stack([_symmetric(u[:, _AT[c]], cfg.channel_gain) for c in ("gain_r", "gain_g", "gain_b")], 1)
    return {"brightness": col("brightness", cfg.brightness), "contrast": 1.0 + col("contrast", cfg.contrast),
            # log-uniform gamma: as likely to darken the mid-tones as to lighten them
            "gamma": torch.exp(col("gamma", math.log1p(cfg.gamma))),
            "saturation": 1.0 + col("saturation", cfg.saturation), "gains": 1.0 + gains.view(-1, 3, 1, 1)}


def photometric(images: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
    """Pointwise colour jitter of [B, 3, H, W] in [0, 1]: the same function of the pixel value at any
    resolution, so LR and HR get the same transform."""
    x = images * p["gains"]
    luma = (x * x.new_tensor(_LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)
    x = luma + (x - luma) * p["saturation"]
    x = (x - 0.5) * p["contrast"] + 0.5 + p["brightness"]
    x = x.clamp(0.0, 1.0) ** p["gamma"]
    return x.clamp(0.0, 1.0)


def _gaussian_kernels(sigmas: torch.Tensor, radius: int) -> torch.Tensor:
    """[B, 2r+1] normalised 1-D Gaussians; sigma 0 gives the identity (a single 1)."""
    offsets = torch.arange(-radius, radius + 1, dtype=sigmas.dtype, device=sigmas.device)
    logits = -0.5 * (offsets / sigmas.clamp_min(1e-3).view(-1, 1)) ** 2
    return torch.softmax(logits, dim=1)


def blur(images: torch.Tensor, sigmas: torch.Tensor, radius: int) -> torch.Tensor:
    """Separable Gaussian blur with one sigma per sample (grouped conv, reflect padding)."""
    b, c, h, w = images.shape
    k = _gaussian_kernels(sigmas, radius).to(images.dtype).repeat_interleave(c, 0)  # [B*C, 2r+1]
    x = images.reshape(1, b * c, h, w)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), k.view(b * c, 1, 1, -1), groups=b * c)
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), k.view(b * c, 1, -1, 1), groups=b * c)
    return x.reshape(b, c, h, w)


def degraded_views(hr: torch.Tensor, u: torch.Tensor, noise: torch.Tensor, cfg) -> torch.Tensor:
    """Each HR blurred, downscaled by a factor in [1, max_downscale] and scaled back (bilinear with
    antialias), plus Gaussian noise; the factor is quantised to 0.25 so a batch needs at most a few
    resizes (the factors are on the host: no sync)."""
    device, (h, w) = hr.device, hr.shape[-2:]
    sigmas = (u[:, _AT["blur"]] * cfg.degrade_max_blur).to(device, torch.float32)
    radius = max(1, math.ceil(3 * cfg.degrade_max_blur))
    x = blur(hr, sigmas, radius) if cfg.degrade_max_blur > 0 else hr
    # host numbers (numpy): grouping the samples by factor costs no device sync
    factors = np.round((1.0 + u[:, _AT["downscale"]].numpy() * (cfg.degrade_max_downscale - 1.0)) * 4) / 4
    out = x.clone()
    for factor in sorted(set(factors[factors > 1.0])):
        rows = torch.from_numpy(np.flatnonzero(factors == factor)).to(device, non_blocking=True)
        small = F.interpolate(x[rows], size=(max(1, round(h / factor)), max(1, round(w / factor))),
                              mode="bilinear", antialias=True, align_corners=False)
        out[rows] = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
    sigma_noise = (u[:, _AT["noise"]] * cfg.degrade_max_noise).to(device, torch.float32).view(-1, 1, 1, 1)
    return (out + sigma_noise * noise.to(device, non_blocking=True)).clamp(0.0, 1.0)


class BatchAugment:
    """The training step's augmentation of one stage: `augment(batch, sids, epoch, step)`.

    `batch` is on the device; `sids` is the host copy of batch["sid"] (reading it costs no sync).
    `ocr_degraded_views` > 0 only where the OCR is the only reader of HR (stage 0): the runner
    passes 0 for stages that train the generator against HR."""

    def __init__(self, cfg, seed: int, stage: int, ocr_degraded_views: float = 0.0):
        self.cfg, self.seed, self.stage = cfg, seed, stage
        self.degraded = float(ocr_degraded_views)
        self.active = (cfg.enabled and (cfg.geometric or cfg.photometric)) or self.degraded > 0

    def keys(self, sids: torch.Tensor, epoch: int, step: int) -> list[int]:
        return [sample_key(self.seed, self.stage, epoch, step, sid) for sid in sids.numpy().tolist()]

    def __call__(self, batch: dict, sids: torch.Tensor, epoch: int, step: int) -> dict:
        if not self.active or batch["hr"].shape[0] == 0:
            return batch
        hr, lr = batch["hr"], batch["lr"]
        u, noise = draw_uniforms(self.keys(sids, epoch, step), tuple(hr.shape[1:]) if self.degraded > 0 else None)
        if self.cfg.enabled and self.cfg.geometric:
            theta = affine_thetas(u, self.cfg, aspect=hr.shape[-1] / hr.shape[-2]).to(hr.device, non_blocking=True)
            hr, lr = warp(hr, theta), warp(lr, theta)
        if self.cfg.enabled and self.cfg.photometric:
            params = {k: v.to(hr.device, torch.float32, non_blocking=True)
                      for k, v in photometric_params(u, self.cfg).items()}
            hr, lr = photometric(hr, params), photometric(lr, params)
        chosen = np.flatnonzero(u[:, _AT["degrade"]].numpy() < self.degraded)  # host numbers: no sync
        if len(chosen):  # only the chosen rows are degraded (half the work at p = 0.5)
            rows = torch.from_numpy(chosen).to(hr.device, non_blocking=True)
            hr = hr.index_copy(0, rows, degraded_views(hr[rows], u[chosen], noise[chosen], self.cfg))
        return {**batch, "hr": hr, "lr": lr}
