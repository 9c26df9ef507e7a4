"""What each degradation DOES, checked on its output: the paper recipe reaches its SSIM target through
`degrade` itself, the realistic pipeline applies its blur, noise and JPEG with the parameters given,
and synthetic shards hold LR made by the degradation they were asked for (read from the records)."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter

from lpasrn.cli import main
from lpasrn.data.degrade import _resize_to_lr, degrade, degradation_params, paper_degraded_hr, ssim_gray
from lpasrn.data.read_indexed import IndexedPlateDataset
from lpasrn.data.synth import synth_record

LUMA = np.array([0.299, 0.587, 0.114])
# Everything random in "realistic" switched off, so one stage at a time can be switched on.
QUIET = {"blur_sigma": (0.0, 0.0), "extra_downscale_prob": 0.0, "noise_sigma": (0.0, 0.0),
         "shot_noise": (0.0, 0.0), "jpeg_prob": 0.0}


@pytest.fixture(scope="module")
def plates():
    return [synth_record(seed=4, split="train", index=i, degradation="realistic").hr for i in range(4)]


def as_float(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)


def test_degrade_paper_is_the_recipe_and_reaches_the_ssim_target(plates):
    target = degradation_params("paper")["ssim_target"]
    for seed, hr in enumerate(plates):
        degraded, search = paper_degraded_hr(as_float(hr), np.random.default_rng(seed), **degradation_params("paper"))
        assert search.reached and ssim_gray(degraded @ LUMA, as_float(hr) @ LUMA) <= target
        # degrade() gives exactly that degraded HR, padded and resized to the LR size.
        expected = _resize_to_lr(Image.fromarray(degraded, "RGB"))
        assert np.array_equal(np.asarray(degrade(hr, "paper", seed=seed)), np.asarray(expected))
    # A looser target is honoured: a weaker degradation (higher SSIM) is enough.
    loose, search = paper_degraded_hr(as_float(plates[0]), np.random.default_rng(0),
                                      **degradation_params("paper", ssim_target=0.3))
    assert search.reached and 0.1 < search.ssim <= 0.3


def test_realistic_blur_is_applied_with_the_sigma_given(plates):
    hr = plates[0]
    blurred_hr = Image.fromarray(np.clip(np.round(gaussian_filter(as_float(hr), (1.5, 1.5, 0), mode="nearest")),
                                         0, 255).astype(np.uint8), "RGB")
    with_blur = degrade(hr, "realistic", seed=1, **{**QUIET, "blur_sigma": (1.5, 1.5)})
    # Same seed, same draws: blurring inside the pipeline == blurring the input of a blur-free run.
    assert np.abs(as_float(with_blur) - as_float(degrade(blurred_hr, "realistic", seed=1, **QUIET))).max() <= 1
    assert np.abs(as_float(with_blur) - as_float(degrade(hr, "realistic", seed=1, **QUIET))).mean() > 2


def test_realistic_noise_has_the_std_given(plates):
    clean = as_float(degrade(plates[1], "realistic", seed=2, **QUIET))
    noisy = as_float(degrade(plates[1], "realistic", seed=2, **{**QUIET, "noise_sigma": (8.0, 8.0)}))
    unclipped = (clean > 30) & (clean < 225)
    assert (noisy - clean)[unclipped].std() == pytest.approx(8.0, rel=0.15)


def test_realistic_jpeg_is_applied_at_the_quality_given(plates):
    hr = plates[2]
    plain = degrade(hr, "realistic", seed=3, **{**QUIET, "noise_sigma": (4.0, 4.0)})
    jpeg = degrade(hr, "realistic", seed=3, **{**QUIET, "noise_sigma": (4.0, 4.0), "jpeg_prob": 1.0,
                                                "jpeg_quality": (20, 20)})
    buffer = io.BytesIO()
    plain.save(buffer, format="JPEG", quality=20)
    assert np.array_equal(np.asarray(jpeg), np.asarray(Image.open(buffer).convert("RGB")))
    assert not np.array_equal(np.asarray(jpeg), np.asarray(plain))


def upsampled_ssim(hr: np.ndarray, lr: np.ndarray) -> float:
    to_hr = lambda a: np.asarray(Image.fromarray(a).resize((hr.shape[1], hr.shape[0]), Image.BICUBIC), float)
    return ssim_gray(to_hr(lr) @ LUMA, hr.astype(float) @ LUMA)


@pytest.mark.parametrize("name, low, high", [("paper", 0.0, 0.3), ("realistic", 0.4, 1.0)])
def test_synth_shards_hold_lr_of_the_degradation_named(tmp_path, capsys, name, low, high):
    out = tmp_path / name
    assert main(["data", "synth", "--out", str(out), "--train", "8", "--val", "0", "--test", "0",
                 "--seed", "2", "--degradation", name]) == 0
    dataset = IndexedPlateDataset(out, "train")
    values = []
    for sid in range(len(dataset)):
        sample = dataset[sid]
        hr, lr = ((sample[k] * 255).round().byte().permute(1, 2, 0).numpy() for k in ("hr", "lr"))
        values.append(upsampled_ssim(hr, lr))
    dataset.close()
    # Measured (8 plates, seed 2): paper 0.20-0.24 each, realistic 0.36-0.86, mean 0.58.
    assert low <= (max(values) if name == "paper" else np.mean(values)) <= high, values
