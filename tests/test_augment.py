"""Seeded training augmentation (issue 12): deterministic per (seed, stage, epoch, step, sid), the
LR/HR pair stays aligned and gets the same colour transform, degraded views only touch what the
stage-0 OCR reads, off means untouched, and a preempted run with augmentation resumes to the same
weights as an uninterrupted one."""
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from conftest import write_tiny_config
from lpasrn.config import AugmentConfig, load_config
from lpasrn.data.augment import _AT, _SLOTS, BatchAugment, affine_thetas, warp
from lpasrn.errors import LpasrnError
from lpasrn.train.train_cli import main as run_main

GEOMETRIC = AugmentConfig(enabled=True, geometric=True, photometric=False)
PHOTOMETRIC = AugmentConfig(enabled=True, geometric=False, photometric=True)


def smooth_plates(count: int, seed: int = 0) -> torch.Tensor:
    """[count, 3, 32, 96] smooth images (low-frequency noise upsampled), so resampling at LR and at
    HR size can be compared."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, 6, 18, generator=gen)
    return F.interpolate(coarse, size=(32, 96), mode="bicubic", align_corners=False).clamp(0, 1)


def pair_batch(count: int = 8, seed: int = 0) -> dict:
    hr = smooth_plates(count, seed)
    return {"hr": hr, "lr": F.avg_pool2d(hr, 2), "sid": torch.arange(100, 100 + count)}


def run(aug: BatchAugment, batch: dict, epoch: int = 0, step: int = 0) -> dict:
    return aug(batch, batch["sid"], epoch, step)


def test_same_key_same_bytes_other_epoch_or_step_differs():
    batch = pair_batch()
    aug = BatchAugment(AugmentConfig(enabled=True), seed=3, stage=1)
    a, b = run(aug, batch, epoch=2, step=5), run(aug, batch, epoch=2, step=5)
    assert torch.equal(a["hr"], b["hr"]) and torch.equal(a["lr"], b["lr"])
    for other in (run(aug, batch, epoch=3, step=5), run(aug, batch, epoch=2, step=6),
                  run(BatchAugment(AugmentConfig(enabled=True), seed=4, stage=1), batch, 2, 5)):
        differs = (other["hr"] - a["hr"]).flatten(1).abs().amax(1) > 1e-3
        assert bool(differs.all())  # every sample gets a new view


def test_a_samples_view_does_not_depend_on_its_batch():
    """Per-sample generators: sid 103's view is the same whichever samples share its batch."""
    batch = pair_batch()
    aug = BatchAugment(AugmentConfig(enabled=True), seed=0, stage=0, ocr_degraded_views=0.5)
    whole = run(aug, batch, 1, 4)
    part = {k: v[[3, 0]] for k, v in batch.items()}
    alone = run(aug, part, 1, 4)
    assert torch.equal(alone["hr"][0], whole["hr"][3]) and torch.equal(alone["lr"][0], whole["lr"][3])


def test_even_hr_translation_is_half_as_many_lr_pixels():
    """The real parameter path: only the x translation slot is drawn (u = 1 -> +max_translate)."""
    cfg = replace(GEOMETRIC, max_translate=2 / 96)  # 2 HR pixels = 1 LR pixel
    u = torch.full((1, len(_SLOTS)), 0.5, dtype=torch.float64)
    u[0, _AT["tx"]] = 1.0
    theta = affine_thetas(u, cfg, aspect=3.0)
    hr, lr = torch.rand(1, 3, 32, 96), torch.rand(1, 3, 16, 48)
    hr_out, lr_out = warp(hr, theta), warp(lr, theta)
    assert torch.allclose(hr_out[..., :-2], hr[..., 2:], atol=1e-5)
    assert torch.allclose(lr_out[..., :-1], lr[..., 1:], atol=1e-5)
    assert not torch.allclose(hr_out, hr, atol=1e-2)


def test_pair_stays_aligned_under_random_affines():
    """LR = downscale(HR) still holds after augmentation, far closer than with another draw."""
    batch = pair_batch(16)
    aug = BatchAugment(replace(GEOMETRIC, max_rotation_deg=4.0, max_scale=0.06, max_translate=0.05), 0, 1)
    out = run(aug, batch)
    mismatched = run(aug, batch, epoch=1)
    assert not torch.allclose(out["hr"], batch["hr"], atol=1e-2)
    aligned = (F.avg_pool2d(out["hr"], 2) - out["lr"]).abs().mean()
    other = (F.avg_pool2d(out["hr"], 2) - mismatched["lr"]).abs().mean()
    assert aligned < 0.2 * other, (float(aligned), float(other))


def test_rotation_is_a_rotation_on_screen():
    """A 90 degree turn built in the pixel-proportional frame maps the plate's horizontal axis onto
    its vertical one (normalised coordinates would need 1/3 and 3, not 1 and 1)."""
    cfg = replace(GEOMETRIC, max_rotation_deg=90.0)
    u = torch.full((1, len(_SLOTS)), 0.5, dtype=torch.float64)
    u[0, _AT["rotation"]] = 1.0
    theta = affine_thetas(u, cfg, aspect=3.0)[0]
    assert torch.allclose(theta[:, :2], torch.tensor([[0.0, -1 / 3], [3.0, 0.0]], dtype=torch.float64), atol=1e-9)


def test_photometric_is_the_same_pointwise_transform_on_lr_and_hr():
    hr = torch.rand(8, 3, 32, 96)
    batch = {"hr": hr, "lr": hr[..., ::2, ::2].contiguous(), "sid": torch.arange(8)}
    out = run(BatchAugment(PHOTOMETRIC, 0, 1), batch)
    assert torch.allclose(out["lr"], out["hr"][..., ::2, ::2], atol=1e-6)
    assert out["hr"].min() >= 0 and out["hr"].max() <= 1
    change = (out["hr"] - hr).flatten(1).abs().mean(1)
    assert bool((change > 1e-3).all()) and len(set(change.tolist())) == 8  # each sample its own jitter


def high_frequency(images: torch.Tensor) -> torch.Tensor:
    return (images[..., :, 1:] - images[..., :, :-1]).abs().flatten(1).mean(1)


def test_degraded_views_touch_only_hr_and_blur_it():
    hr = torch.rand(64, 3, 32, 96)
    batch = {"hr": hr, "lr": torch.rand(64, 3, 16, 48), "sid": torch.arange(64)}
    everyone = run(BatchAugment(AugmentConfig(), 0, 0, ocr_degraded_views=1.0), batch)
    assert torch.equal(everyone["lr"], batch["lr"])  # augmentation off: only the OCR's input changes
    assert bool((high_frequency(everyone["hr"]) < 0.9 * high_frequency(hr)).all())
    half = run(BatchAugment(AugmentConfig(), 0, 0, ocr_degraded_views=0.5), batch)
    changed = (half["hr"] != hr).flatten(1).any(1)
    assert 16 <= int(changed.sum()) <= 48
    assert torch.equal(half["hr"][changed], everyone["hr"][changed])  # same key, same degradation


def test_off_is_the_identity():
    batch = pair_batch()
    for cfg in (AugmentConfig(), AugmentConfig(enabled=True, geometric=False, photometric=False),
                AugmentConfig(enabled=False, geometric=True, photometric=True)):
        out = run(BatchAugment(cfg, 0, 0, ocr_degraded_views=0.0), batch)
        assert out["hr"] is batch["hr"] and out["lr"] is batch["lr"]


def test_degraded_views_are_a_stage0_key_only():
    assert load_config(None, ["stages.pretrain.ocr_degraded_views=0.5"]).stages.pretrain.ocr_degraded_views == 0.5
    with pytest.raises(LpasrnError, match="stages.finetune.ocr_degraded_views"):
        load_config(None, ["stages.finetune.ocr_degraded_views=0.5"])
    with pytest.raises(LpasrnError, match="data.augment.max_rotation_deg"):
        load_config(None, ["data.augment.max_rotation_deg=-1"])
    with pytest.raises(LpasrnError, match="data.augment.rotation"):
        load_config(None, ["data.augment.rotation=1"])


def record_forward_inputs(runner) -> list:
    """The HR each training forward of `runner` reads (the real forward still runs)."""
    seen, forward = [], runner.forward

    def recording(net, batch, outputs):
        seen.append(batch["hr"])
        return forward(net, batch, outputs)

    runner.forward = recording
    return seen


def test_the_runner_trains_on_augmented_views(tiny_dataset, tmp_path):
    """The runner's own step: with augmentation the model reads other pixels than the loader gave,
    a new view each step; validation batches are not augmented (only train_step calls it)."""
    from lpasrn.bench.host_syncs import runner_for
    from lpasrn.data.readers import IndexedPlateDataset, collate
    from lpasrn.train.pipeline import make_accelerator
    from lpasrn.train.stages import STAGES

    dataset = IndexedPlateDataset(tiny_dataset, "train")
    batch = collate([dataset[i] for i in range(4)])
    config = write_tiny_config(tmp_path / "cfg.yaml", tiny_dataset, tmp_path / "run")
    seen = {}
    for on in (False, True):
        cfg = load_config(config, ["train.image_every=1000", f"data.augment.enabled={str(on).lower()}",
                                   f"stages.pretrain.ocr_degraded_views={1.0 if on else 0.0}"])
        runner = runner_for(cfg, STAGES[0], make_accelerator(cfg), tmp_path / str(on))
        seen[on] = record_forward_inputs(runner)
        for step in range(2):
            runner.state.step_in_epoch = step
            runner.train_step(batch)
    assert all(torch.equal(hr, batch["hr"]) for hr in seen[False])
    first, second = seen[True]
    assert not torch.allclose(first, batch["hr"], atol=1e-2) and not torch.allclose(first, second, atol=1e-2)


def test_preempted_stage0_with_augmentation_resumes_to_the_same_weights(tiny_dataset, tmp_path, monkeypatch):
    overrides = ["--stage", "0", "--set", "stages.pretrain.epochs=2", "--set", "train.preempt_poll_every=2",
                 "--set", "data.augment.enabled=true", "--set", "stages.pretrain.ocr_degraded_views=0.5"]
    exports = {}
    for name in ("straight", "preempted"):
        config = write_tiny_config(tmp_path / f"{name}.yaml", tiny_dataset, tmp_path / name)
        if name == "preempted":
            mark = tmp_path / "preempt.mark"
            monkeypatch.setenv("LPASRN_PREEMPT_FILE", str(mark))
            mark.touch()
            assert run_main(["--config", config, *overrides]) == 0
            saved = tmp_path / name / "stage0_pretrain" / "checkpoints"
            assert sorted(p.name for p in saved.iterdir()) == ["epoch-0000-step-000002"]
            overrides += ["--resume", "auto"]
        assert run_main(["--config", config, *overrides]) == 0
        exports[name] = load_file(str(tmp_path / name / "stage0_pretrain" / "checkpoints" / "epoch-0002"
                                      / "model.safetensors"))
    a, b = exports["straight"], exports["preempted"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.timeout(600)
def test_augmented_step_keeps_its_host_sync_budget(tiny_dataset, tmp_path):
    """Augmentation adds no host sync: sids and parameters are host numbers, copied to the device."""
    from lpasrn.bench.host_syncs import WARMUP_STEPS, runner_for, step_syncs
    from lpasrn.data.readers import IndexedPlateDataset, collate
    from lpasrn.train.pipeline import make_accelerator
    from lpasrn.train.stages import STAGES

    dataset = IndexedPlateDataset(tiny_dataset, "train")
    batch = collate([dataset[i] for i in range(8)])
    config = write_tiny_config(tmp_path / "cfg.yaml", tiny_dataset, tmp_path / "run")
    cfg = load_config(config, [f"train.log_every={3 + WARMUP_STEPS}", "train.image_every=1000000",
                               "data.augment.enabled=true", "stages.pretrain.ocr_degraded_views=1.0"])
    accelerator = make_accelerator(cfg)
    for spec in STAGES[:2]:
        runner = runner_for(cfg, spec, accelerator, tmp_path)
        assert runner.augment.active
        assert step_syncs(runner, batch, 3) == [1, 1, 2], spec.prefix
