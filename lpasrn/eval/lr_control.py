"""The no-SR control: is super-resolution worth more than teaching the OCR to read LR?

The stage-0 OCR (trained on HR only) is fine-tuned with CTC on bicubic-upscaled LR of the train
split, for as many optimizer steps as stages 1-4 of the config take together, then reads the
test split's bicubic LR. If that beats SR read by the final OCR, SR does not pay for itself.

Bicubic upscaling is the one evaluation uses for `lr_bicubic` (lpasrn.eval.evaluate.variant_images),
so the control reads exactly the images the evaluation table calls LR-bicubic.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from lpasrn.data.readers import IndexedPlateDataset, collate
from lpasrn.data.shards import load_manifest, split_entry
from lpasrn.metrics import RecognitionStats
from lpasrn.models.ocr_arch import ctc_loss, greedy_decode
from lpasrn.plates import HR_SIZE
from lpasrn.train.schedule import apply_lr, lr_factor

GENERATOR_STAGES = ("warmup", "lcofl", "finetune", "hard_mining")  # stages 1-4


def bicubic_lr(lr: torch.Tensor) -> torch.Tensor:
    """LR upscaled to HR size, clamped to [0, 1]: the evaluation's `lr_bicubic` input."""
    return F.interpolate(lr, size=HR_SIZE, mode="bicubic", align_corners=False).clamp(0, 1)


def steps_per_epoch(cfg, train_samples: int) -> int:
    """Optimizer steps of one training epoch: batches of data.batch_size (the last one partial),
    capped by train.max_steps_per_epoch when that is set."""
    steps = math.ceil(train_samples / cfg.data.batch_size)
    cap = cfg.train.max_steps_per_epoch
    return min(steps, cap) if cap else steps


def generator_stage_steps(cfg) -> int:
    """Optimizer steps stages 1-4 of `cfg` take together on its train split (single process)."""
    data_dir = Path(cfg.data.dir)
    train_samples = split_entry(load_manifest(data_dir), "train", data_dir)["num_samples"]
    epochs = sum(getattr(cfg.stages, name).epochs for name in GENERATOR_STAGES)
    return epochs * steps_per_epoch(cfg, train_samples)


def train_batches(data_dir: Path, batch_size: int, seed: int):
    """Endless (bicubic LR, texts, sids) batches of the train split, reshuffled each pass by a seeded
    generator, so a control run is repeatable."""
    dataset = IndexedPlateDataset(data_dir, "train")
    generator = torch.Generator().manual_seed(seed)
    try:
        while True:
            loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator,
                                collate_fn=collate, num_workers=0)
            for batch in loader:
                yield bicubic_lr(batch["lr"]), batch["text"], batch["sid"]
    finally:
        dataset.close()


def fine_tune(ocr: torch.nn.Module, batches, steps: int, lr: float, grad_clip: float = 1.0,
              weight_decay: float = 0.0, schedule: str = "constant", warmup_fraction: float = 0.0,
              min_lr_ratio: float = 0.0) -> list[float]:
    """`steps` AdamW steps of CTC on `batches`; returns the loss of every step. The lr follows the
    same schedule function as the training stages (train/schedule.py), so the control is given
    the same optimisation tools as the SR pipeline it is compared with."""
    ocr.requires_grad_(True)
    ocr.train()
    optimizer = torch.optim.AdamW(ocr.parameters(), lr=lr, weight_decay=weight_decay)
    losses = []
    for step, (images, texts, *_) in zip(range(steps), batches):
        apply_lr(optimizer, lr, lr_factor(step, steps, schedule, warmup_fraction, min_lr_ratio))
        loss = ctc_loss(ocr(images), texts)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(ocr.parameters(), grad_clip)
        optimizer.step()
        losses.append(float(loss.detach()))
    ocr.requires_grad_(False)
    return losses


@torch.no_grad()
def read_split_lr(ocr: torch.nn.Module, data_dir: Path, split: str, batch_size: int) -> dict:
    """Word/char accuracy and mean CTC loss of `ocr` on the bicubic LR of `split`, with the
    per-sample readings ({"sid", "text", "reading", "ctc_loss"}, sid order)."""
    ocr.eval()
    dataset = IndexedPlateDataset(data_dir, split)
    stats, samples, loss_sum = RecognitionStats(), [], 0.0
    try:
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate, num_workers=0)
        for batch in loader:
            logits = ocr(bicubic_lr(batch["lr"])).float()
            readings, _ = greedy_decode(logits)
            stats.update(batch["text"], readings)
            for row, (sid, text, reading) in enumerate(zip(batch["sid"].tolist(), batch["text"], readings)):
                loss = float(ctc_loss(logits[row:row + 1], [text]))  # per plate: which ones the control fails on
                loss_sum += loss
                samples.append({"sid": int(sid), "text": text, "reading": reading, "ctc_loss": loss})
    finally:
        dataset.close()
    summary = stats.summary()
    count = int(summary["count"])
    return {"word_acc": summary["word_acc"], "char_acc": summary["char_acc"], "count": count,
            "ctc_loss": loss_sum / max(count, 1), "samples": samples}


def loss_trend(losses: list[float], window: int = 20) -> dict:
    """Mean CTC loss of the first and the last `window` steps (fewer when the run is shorter)."""
    k = max(1, min(window, len(losses) // 2)) if losses else 0
    mean = (lambda xs: sum(xs) / len(xs) if xs else None)
    return {"first": mean(losses[:k]), "last": mean(losses[-k:]) if k else None, "window": k}
