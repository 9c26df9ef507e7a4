"""prepare_hr padding, the paper recipe's SSIM stopping rule, determinism of both degradations."""
import numpy as np
import pytest
from PIL import Image, ImageDraw
from scipy.ndimage import gaussian_filter

from lpasrn.data.degrade import (DEGRADATIONS, degrade, degradation_params, paper_degraded_hr, prepare_hr,
                                 ssim_gray)
from lpasrn.data.shards import encode_png
from lpasrn.data.synth import synth_record
from lpasrn.plates import HR_SIZE, LR_SIZE

LUMA = np.array([0.299, 0.587, 0.114])


@pytest.fixture(scope="module")
def plate_hr():
    return synth_record(seed=11, split="train", index=0, degradation="realistic").hr


def test_prepare_hr_pads_a_narrow_crop_with_gray_columns():
    crop = Image.new("RGB", (30, 30), (255, 0, 0))  # aspect 1: needs gray columns left and right
    hr = np.asarray(prepare_hr(crop))
    assert hr.shape == (HR_SIZE[0], HR_SIZE[1], 3)
    # 30 gray columns of 90 each side become 32 of 96; away from the seam bicubic keeps them exact.
    assert (hr[:, :28] == 127).all() and (hr[:, -28:] == 127).all()
    assert (hr[:, 40:56] == (255, 0, 0)).all()


def test_prepare_hr_keeps_a_crop_already_at_aspect_3_unpadded():
    crop = Image.new("RGB", (150, 50), (10, 200, 30))
    assert (np.asarray(prepare_hr(crop)) == (10, 200, 30)).all()


def test_ssim_matches_a_direct_gaussian_window_reference():
    rng = np.random.default_rng(0)
    x, y = rng.random((32, 96)) * 255, rng.random((32, 96)) * 255
    y[:, :40] = x[:, :40]  # partly similar, so the value is not near 0 or 1

    def local(a):
        return gaussian_filter(a, 1.5, mode="reflect", truncate=3.5)

    mx, my = local(x), local(y)
    vx, vy, cov = local(x * x) - mx * mx, local(y * y) - my * my, local(x * y) - mx * my
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    expected = np.mean((2 * mx * my + c1) * (2 * cov + c2) / ((mx * mx + my * my + c1) * (vx + vy + c2)))
    assert ssim_gray(x, y) == pytest.approx(expected, rel=1e-9)
    assert ssim_gray(x, x) == pytest.approx(1.0)


def test_paper_recipe_stops_at_the_first_strength_reaching_the_target(plate_hr):
    rgb = np.asarray(plate_hr, dtype=np.float64)
    params = degradation_params("paper")
    degraded, search = paper_degraded_hr(rgb, np.random.default_rng(3), **params)
    assert search.reached and search.evaluations <= 12
    assert ssim_gray(degraded @ LUMA, rgb @ LUMA) == pytest.approx(search.ssim)
    assert search.ssim <= params["ssim_target"]
    # One grid step weaker (same noise field) is still above the target: the smallest strength won.
    weaker = search.sigma / params["step_ratio"]
    _, above = paper_degraded_hr(rgb, np.random.default_rng(3), **{**params, "sigma_start": weaker,
                                                                   "max_steps": 1, "start_step": 0})
    assert not above.reached and above.ssim > params["ssim_target"]


def test_paper_recipe_is_capped_when_blur_alone_cannot_reach_the_target():
    img = Image.new("RGB", (96, 32), (190, 190, 190))
    ImageDraw.Draw(img).rectangle((20, 8, 40, 24), fill=(20, 20, 20))
    rgb = np.asarray(img, dtype=np.float64)
    degraded, search = paper_degraded_hr(rgb, np.random.default_rng(0), noise_per_sigma=0.0)
    assert not search.reached and search.ssim > 0.1
    assert search.sigma == pytest.approx(0.5 * 1.05 ** 91) and search.evaluations <= 10
    assert degraded.shape == rgb.shape


@pytest.mark.parametrize("name", sorted(DEGRADATIONS))
def test_degrade_is_deterministic_per_seed_and_sized(plate_hr, name):
    first = degrade(plate_hr, name, seed=5)
    assert first.size == (LR_SIZE[1], LR_SIZE[0]) and first.mode == "RGB"
    assert encode_png(degrade(plate_hr, name, seed=5)) == encode_png(first)
    assert encode_png(degrade(plate_hr, name, seed=6)) != encode_png(first)


def test_unknown_degradation_and_parameter_are_named_in_the_error(plate_hr):
    with pytest.raises(ValueError, match="unknown degradation 'blurry'.*paper, realistic"):
        degrade(plate_hr, "blurry", seed=0)
    with pytest.raises(ValueError, match="no parameter.*sigma_max"):
        degrade(plate_hr, "paper", seed=0, sigma_max=3)
