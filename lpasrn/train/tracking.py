"""TensorBoard and W&B through Accelerate's trackers, one W&B run per stage.

TensorBoard always; W&B when it is installed and not switched off: online with an API key, offline
without one. group = experiment, job_type = stage, and a deterministic run id, so a requeued or
resumed job continues the same W&B run instead of starting a new one.
"""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from lpasrn.fonts import mono_font

log = logging.getLogger(__name__)


def wandb_mode(setting: str) -> str | None:
    """'online', 'offline' or None (no W&B) from the config setting and the environment."""
    if setting == "off" or importlib.util.find_spec("wandb") is None:
        return None
    if setting in ("online", "offline"):
        return setting
    has_key = bool(os.environ.get("WANDB_API_KEY")) or os.environ.get("WANDB_MODE") == "online"
    return "online" if has_key else "offline"


def wandb_run_id(experiment: str, run_dir: Path, stage_prefix: str) -> str:
    """Same experiment + run directory + stage -> same id, so resumes continue the run."""
    digest = hashlib.sha1(f"{experiment}|{run_dir.resolve()}|{stage_prefix}".encode()).hexdigest()
    return f"{stage_prefix}-{digest[:10]}"


def start_stage_trackers(accelerator, cfg, run_dir: Path, stage_prefix: str, config_dict: dict) -> None:
    """Point accelerator.log at this stage's TensorBoard writer and W&B run.

    # NOTE: call on all ranks; trackers start and log on the main process only.
    """
    from accelerate.tracking import TensorBoardTracker, WandBTracker

    trackers = []
    if cfg.tracking.tensorboard:
        trackers.append(TensorBoardTracker(stage_prefix, str(run_dir / "tensorboard")))
    mode = wandb_mode(cfg.tracking.wandb)
    if mode is not None:
        trackers.append(WandBTracker(
            cfg.tracking.wandb_project, name=f"{cfg.experiment}/{stage_prefix}", group=cfg.experiment,
            job_type=stage_prefix, id=wandb_run_id(cfg.experiment, run_dir, stage_prefix), resume="allow",
            mode=mode, dir=str(run_dir), config=config_dict, reinit="finish_previous"))
    accelerator.log_with = trackers
    accelerator.trackers = []
    accelerator.init_trackers(cfg.tracking.wandb_project)


def finish_stage_trackers(accelerator) -> None:
    """Close this stage's TensorBoard writer and W&B run. Not accelerator.end_training(): that also
    destroys the process group, which the next stage still needs. # NOTE: call on all ranks."""
    for tracker in accelerator.trackers:
        tracker.finish()
    accelerator.trackers = []


def _to_pil(img: torch.Tensor, size: tuple[int, int]) -> Image.Image:
    array = (img.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(array).resize(size, Image.NEAREST)


def plate_grid(lr: torch.Tensor, sr: torch.Tensor, hr: torch.Tensor, texts: list[str],
               readings: list[str], scale: int = 3) -> np.ndarray:
    """Rows of LR (upsampled) | SR | HR with 'truth -> OCR reading of SR' under each row; HxWx3 uint8."""
    h, w = hr.shape[-2] * scale, hr.shape[-1] * scale
    caption_h, gap = 18, 4
    rows = len(texts)
    canvas = Image.new("RGB", (3 * w + 4 * gap, rows * (h + caption_h + gap) + gap), (255, 255, 255))
    draw, font = ImageDraw.Draw(canvas), mono_font(13)
    for i in range(rows):
        top = gap + i * (h + caption_h + gap)
        for col, img in enumerate((lr[i], sr[i], hr[i])):
            canvas.paste(_to_pil(img, (w, h)), (gap + col * (w + gap), top))
        mark = "ok" if readings[i] == texts[i] else "x"
        draw.text((gap, top + h + 1), f"{texts[i]} -> {readings[i] or '(empty)'}  [{mark}]", fill=(0, 0, 0), font=font)
    return np.asarray(canvas)


def log_plate_grid(accelerator, tag: str, grid: np.ndarray, step: int) -> None:
    """Log an LR | SR | HR grid to every tracker (main process only)."""
    if not accelerator.is_main_process:
        return
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image(tag, grid, global_step=step, dataformats="HWC")
        elif tracker.name == "wandb":
            import wandb
            tracker.run.log({tag: wandb.Image(grid, caption="LR | SR | HR; truth -> reading")}, step=step)
