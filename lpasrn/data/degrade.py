"""HR preparation and named, seeded degradations (LR from HR).

`prepare_hr` turns any plate crop into an HR image the way the published LP-SR work does: pad to
aspect 3 with gray 127, then bicubic resize to HR_SIZE. `degrade(hr, name, seed, **params)` makes
the LR twin with one of the pipelines in `DEGRADATIONS`:

- "paper": the published recipe, "iteratively applying random Gaussian noise [read: blur and noise,
  an optical system of lower resolution] until SSIM < 0.1", then pad to aspect 3 and bicubic resize
  to LR_SIZE. Pure blur cannot do it: on plates SSIM(blur, HR) levels off near 0.35 however wide the
  blur (flat plate areas stay similar), so every plate would end at the cap as a featureless smear.
  Each iteration therefore blurs and adds Gaussian noise. n iterations of blur s0 are one blur of
  s0*sqrt(n), and the noise adds up the same way, so the recipe is a one-parameter family: instead
  of many tiny iterations (tens of ms per plate) the strength is searched directly on a 5% geometric
  grid, 8 grid steps at a time then by bisection, for the smallest strength with SSIM <= target
  (about 8 SSIM evaluations, ~1 ms a plate). The search is capped (`max_steps`); see
  `paper_degraded_hr`. SSIM is our own (grayscale, float64, Gaussian window), see `ssim_gray`.
- "realistic": a random mix drawn from numpy Generator(seed): Gaussian blur, downscale with a
  random filter (sometimes through an intermediate smaller size), sensor noise (Gaussian plus
  signal-dependent shot noise) and JPEG re-encoding at a random quality.

Same (hr, name, seed, params) -> same bytes: all randomness comes from the seed, none from globals.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter, gaussian_filter1d

from lpasrn.plates import HR_SIZE, LR_SIZE, pad_to_aspect

# PIL sizes are (width, height); plates.py sizes are (height, width).
HR_WH = (HR_SIZE[1], HR_SIZE[0])
LR_WH = (LR_SIZE[1], LR_SIZE[0])

# Luma weights (ITU-R BT.601), the grayscale SSIM is computed on.
_LUMA = np.array([0.299, 0.587, 0.114])


def prepare_hr(crop: Image.Image) -> Image.Image:
    """Pad a plate crop to aspect 3 with gray 127, then bicubic resize to HR_SIZE (RGB)."""
    return pad_to_aspect(crop.convert("RGB")).resize(HR_WH, Image.BICUBIC)


@lru_cache(maxsize=1024)
def _gaussian_operator(n: int, sigma: float, mode: str, truncate: float) -> np.ndarray:
    """n x n matrix M with M @ x == scipy gaussian_filter1d(x, sigma, mode, truncate) (read-only).

    Plates are tiny (32 x 96), so filtering as two small matrix products is several times faster than
    scipy's per-call overhead, and the operators are cached: SSIM always uses the same two, and the
    paper recipe only tries blur strengths on a fixed geometric grid.
    """
    operator = gaussian_filter1d(np.eye(n), sigma, axis=0, mode=mode, truncate=truncate)
    operator.setflags(write=False)
    return operator


def _filter2d(stack: np.ndarray, sigma: float, mode: str, truncate: float) -> np.ndarray:
    """Gaussian filter over the last two axes of `stack` ([..., H, W])."""
    rows = _gaussian_operator(stack.shape[-2], sigma, mode, truncate)
    cols = _gaussian_operator(stack.shape[-1], sigma, mode, truncate)
    return rows @ stack @ cols.T


class _SSIMReference:
    """SSIM against a fixed reference image, its local statistics computed once.

    Mean SSIM (Wang et al. 2004) on grayscale float64, Gaussian window sigma 1.5 truncated at 3.5
    sigma (11 x 11), borders reflected so the mean covers every pixel (HR plates are 32 pixels high).
    """

    def __init__(self, reference: np.ndarray, data_range: float = 255.0, sigma: float = 1.5) -> None:
        self.reference = reference
        self.sigma = sigma
        self.c1 = (0.01 * data_range) ** 2
        self.c2 = (0.03 * data_range) ** 2
        self.mu_y, mean_yy = self._local_means(np.stack([reference, reference * reference]))
        self.var_y = mean_yy - self.mu_y * self.mu_y

    def _local_means(self, stack: np.ndarray) -> np.ndarray:
        return _filter2d(stack, self.sigma, "reflect", 3.5)

    def ssim(self, image: np.ndarray) -> float:
        mu_x, mean_xx, mean_xy = self._local_means(np.stack([image, image * image, image * self.reference]))
        var_x = mean_xx - mu_x * mu_x
        cov = mean_xy - mu_x * self.mu_y
        numerator = (2 * mu_x * self.mu_y + self.c1) * (2 * cov + self.c2)
        denominator = (mu_x * mu_x + self.mu_y * self.mu_y + self.c1) * (var_x + self.var_y + self.c2)
        return float(np.mean(numerator / denominator))


def ssim_gray(x: np.ndarray, y: np.ndarray, data_range: float = 255.0) -> float:
    """Mean SSIM of two grayscale float64 images of the same shape (window: see _SSIMReference)."""
    return _SSIMReference(np.asarray(y, dtype=np.float64), data_range).ssim(np.asarray(x, dtype=np.float64))


@dataclass(frozen=True)
class BlurSearch:
    """Outcome of the paper recipe's search: the strength used (blur sigma in HR pixels), the SSIM of
    the degraded HR against the HR, whether the target was reached, and the SSIM evaluations made."""

    sigma: float
    ssim: float
    reached: bool
    evaluations: int


def _blur(rgb: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of an H x W x 3 image, edges extended as repeated blurs of a crop would see them."""
    planes = np.moveaxis(rgb, -1, 0)
    return np.moveaxis(_filter2d(planes, sigma, "nearest", 3.0), 0, -1)


def _as_uint8(arr: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)


def paper_degraded_hr(rgb: np.ndarray, rng: np.random.Generator, ssim_target: float = 0.1,
                      noise_per_sigma: float = 24.0, noise_chroma: float = 0.3, sigma_start: float = 0.5,
                      step_ratio: float = 1.05, max_steps: int = 92,
                      start_step: int = 32) -> tuple[np.ndarray, BlurSearch]:
    """The HR-sized degraded image of the paper recipe (uint8 RGB) and how it was found.

    Strength s = Gaussian blur sigma s (HR pixels) plus Gaussian noise of std noise_per_sigma * s
    (0..255 scale; mostly luminance, `noise_chroma` of it per channel) from one noise field drawn from
    `rng`: what (s / s0)**2 iterations of a (blur s0, noise) step amount to. The default ratio 24 is
    where, at SSIM 0.1, the LR keeps the most of the plate (correlation with the clean bicubic LR
    measured over 8..96: flat 0.60 between 16 and 48, lower outside): more blur erases strokes, more
    noise buries them. s runs over the grid
    sigma_start * step_ratio**k, k = 0..max_steps-1 (so blur operators are reused across plates).
    From k = start_step (where plates usually end) k moves 8 steps at a time until the SSIM
    crosses the target, then bisection finds the smallest k with SSIM(degraded, HR) <= ssim_target:
    where the iterated recipe would have stopped, to 5%. Capped at k = max_steps-1 (sigma ~43 px by
    default); past the cap `reached` is False and the strongest degradation is used.
    """
    reference = _SSIMReference(rgb @ _LUMA)
    shared = rng.standard_normal(rgb.shape[:2] + (1,))
    field = (shared + noise_chroma * rng.standard_normal(rgb.shape)) / np.hypot(1.0, noise_chroma)
    tried: dict[int, tuple[np.ndarray, float]] = {}

    def passes(k: int) -> bool:
        strength = sigma_start * step_ratio ** k
        out = _as_uint8(_blur(rgb, strength) + (noise_per_sigma * strength) * field)
        tried[k] = (out, reference.ssim(out @ _LUMA))
        return tried[k][1] <= ssim_target

    last = max_steps - 1
    high = min(max(start_step, 0), last)
    if passes(high):
        low = high - 8
        while low >= 0 and passes(low):
            high, low = low, low - 8
        low = max(low, -1)  # -1: below the grid, never tried
    else:
        low = high
        while True:
            high = min(low + 8, last)
            if passes(high):
                break
            if high == last:
                return tried[high][0], BlurSearch(sigma_start * step_ratio ** high, tried[high][1], False,
                                                  len(tried))
            low = high
    while high - low > 1:
        mid = (low + high) // 2
        if passes(mid):
            high = mid
        else:
            low = mid
    out, value = tried[high]
    return out, BlurSearch(sigma_start * step_ratio ** high, value, True, len(tried))


def _to_image(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(_as_uint8(arr), "RGB")


def _resize_to_lr(img: Image.Image, resample: int = Image.BICUBIC) -> Image.Image:
    return pad_to_aspect(img).resize(LR_WH, resample)


def degrade_paper(hr: Image.Image, rng: np.random.Generator, drawn: dict | None = None,
                  **params) -> Image.Image:
    """The published recipe: degrade the HR until SSIM <= target, pad to aspect 3, bicubic to LR.
    `drawn` (if given) receives the strength the search found (see `degrade_recorded`)."""
    rgb = np.asarray(hr.convert("RGB"), dtype=np.float64)
    degraded, search = paper_degraded_hr(rgb, rng, **params)
    if drawn is not None:
        drawn.update(blur_sigma=search.sigma, noise_std=params["noise_per_sigma"] * search.sigma,
                     ssim=search.ssim)
    return _resize_to_lr(Image.fromarray(degraded, "RGB"))


_RESAMPLE_FILTERS = (Image.BICUBIC, Image.BILINEAR, Image.BOX, Image.LANCZOS)


def degrade_realistic(hr: Image.Image, rng: np.random.Generator, blur_sigma: tuple = (0.0, 1.6),
                      extra_downscale_prob: float = 0.3, noise_sigma: tuple = (1.0, 10.0),
                      shot_noise: tuple = (0.0, 0.6), jpeg_prob: float = 0.8,
                      jpeg_quality: tuple = (25, 90), drawn: dict | None = None) -> Image.Image:
    """Camera-like LR: optical blur, downscale, sensor noise, JPEG. Ranges are (low, high).
    `drawn` (if given) receives the values drawn (see `degrade_recorded`); it changes no draw."""
    drawn = {} if drawn is None else drawn
    img = hr.convert("RGB")
    sigma = rng.uniform(*blur_sigma)
    drawn.update(blur_sigma=float(sigma) if sigma > 0.2 else 0.0, downscale_factor=1.0)
    if sigma > 0.2:
        # Continuous random sigma: scipy directly, so the cached operators stay for the paper grid.
        img = _to_image(gaussian_filter(np.asarray(img, dtype=np.float64), (sigma, sigma, 0), mode="nearest"))
    if rng.random() < extra_downscale_prob:
        # Through a smaller size first: what a far-away plate looks like once upscaled by the ISP.
        factor = rng.uniform(1.2, 1.8)
        drawn["downscale_factor"] = float(factor)
        small = (max(8, int(LR_WH[0] / factor)), max(4, int(LR_WH[1] / factor)))
        img = pad_to_aspect(img).resize(small, _RESAMPLE_FILTERS[rng.integers(len(_RESAMPLE_FILTERS))])
    lr = _resize_to_lr(img, _RESAMPLE_FILTERS[rng.integers(len(_RESAMPLE_FILTERS))])
    arr = np.asarray(lr, dtype=np.float64)
    # Read noise (signal-independent) plus shot noise whose variance grows with the signal.
    shot = rng.uniform(*shot_noise)
    read_std = rng.uniform(*noise_sigma)
    std = np.sqrt(read_std ** 2 + shot * shot * arr)
    drawn.update(noise_std=float(read_std), shot_noise=float(shot))
    arr = arr + std * rng.standard_normal(arr.shape)
    lr = _to_image(arr)
    if rng.random() < jpeg_prob:
        buffer = io.BytesIO()
        quality = int(rng.integers(jpeg_quality[0], jpeg_quality[1] + 1))
        drawn["jpeg_quality"] = quality  # absent when no JPEG re-encoding was drawn
        lr.save(buffer, format="JPEG", quality=quality)
        lr = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    return lr


@dataclass(frozen=True)
class Degradation:
    """A named pipeline: `fn(hr, rng, **params)` and the defaults of its params (for manifests)."""

    fn: Callable[..., Image.Image]
    defaults: dict


DEGRADATIONS: dict[str, Degradation] = {
    "paper": Degradation(degrade_paper, {"ssim_target": 0.1, "noise_per_sigma": 24.0, "noise_chroma": 0.3,
                                         "sigma_start": 0.5, "step_ratio": 1.05, "max_steps": 92,
                                         "start_step": 32}),
    "realistic": Degradation(degrade_realistic, {
        "blur_sigma": (0.0, 1.6), "extra_downscale_prob": 0.3, "noise_sigma": (1.0, 10.0),
        "shot_noise": (0.0, 0.6), "jpeg_prob": 0.8, "jpeg_quality": (25, 90)}),
}


def _lookup(name: str) -> Degradation:
    if name not in DEGRADATIONS:
        raise ValueError(f"unknown degradation {name!r}; known: {', '.join(sorted(DEGRADATIONS))}")
    return DEGRADATIONS[name]


def degradation_params(name: str, **params) -> dict:
    """The full parameter set `degrade(..., name, ..., **params)` uses: defaults overridden by params.

    Raises ValueError for an unknown name or a parameter the pipeline does not take.
    """
    defaults = _lookup(name).defaults
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise ValueError(f"degradation {name!r} has no parameter(s) {', '.join(unknown)}; "
                         f"it takes: {', '.join(sorted(defaults))}")
    return {**defaults, **params}


def degrade(hr: Image.Image, name: str, seed: int, **params) -> Image.Image:
    """LR image (RGB, LR_SIZE) from an HR image by the named pipeline, seeded by `seed`."""
    full = degradation_params(name, **params)
    return _lookup(name).fn(hr, np.random.default_rng(seed), **full)


def degrade_recorded(hr: Image.Image, name: str, seed: int, **params) -> tuple[Image.Image, dict]:
    """`degrade(hr, name, seed, **params)` (the same bytes) and the strength this sample got,
    {parameter: number}, so evaluation can tell where reading fails. paper: blur_sigma (HR px),
    noise_std (0..255), ssim reached; realistic: blur_sigma (0 = none), downscale_factor (1 = none),
    noise_std (read noise), shot_noise, jpeg_quality (only when JPEG was applied)."""
    full = degradation_params(name, **params)
    drawn: dict = {}
    lr = _lookup(name).fn(hr, np.random.default_rng(seed), drawn=drawn, **full)
    return lr, {key: float(value) for key, value in drawn.items()}
