"""Validation of a stage: loss, PSNR/SSIM of SR, and the OCR's recognition metrics, summed on each
rank and all-reduced once, so the numbers do not depend on how samples were split across ranks.
"""
from __future__ import annotations

import torch

from lpasrn.metrics import RecognitionStats, psnr
from lpasrn.losses.ssim import ssim
from lpasrn.models.ocr_arch import greedy_decode
from lpasrn.train.data_sources import val_batch_limit
from lpasrn.train.objective import outputs_needed


@torch.no_grad()
def validate(runner, batches) -> dict[str, float]:
    """# NOTE: call on all ranks: one all-reduce of the sums at the end, none inside the loop
    (ranks may hold different numbers of validation batches)."""
    acc, spec = runner.acc, runner.spec
    net = acc.unwrap_model(runner.model)  # plain module: no DDP collectives for uneven batch counts
    was_training = net.training
    net.eval()
    want = tuple(sorted(outputs_needed(runner.stage_cfg.loss_components, True, spec.uses_generator)))
    sums = torch.zeros(4, dtype=torch.float64)  # loss*n, n, psnr sum, ssim sum
    stats = RecognitionStats()
    limit = val_batch_limit(runner.cfg, acc)
    for index, batch in enumerate(batches):
        if limit and index >= limit:
            break
        if batch["hr"].shape[0] == 0:  # every sample of the batch was corrupt (and reported)
            continue
        batch = {k: v.to(acc.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        with acc.autocast():
            out = net(lr=batch["lr"], hr=batch["hr"], outputs=want)
        loss, _ = runner.objective(out, batch)
        n = batch["hr"].shape[0]
        sums[0] += float(loss) * n
        sums[1] += n
        logits = out["ocr_sr"] if spec.uses_generator else out["ocr_hr"]
        readings, _ = greedy_decode(logits.float())
        stats.update(batch["text"], readings)
        if spec.uses_generator:
            sr = out["sr"].float().clamp(0, 1)
            sums[2] += float(psnr(sr, batch["hr"]).sum())
            sums[3] += float(ssim(sr, batch["hr"], window=runner.cfg.loss.ssim_window, reduction="none").sum())
    net.train(was_training)
    totals = acc.reduce(torch.cat([sums, stats.as_tensor().to(torch.float64)]).to(acc.device), reduction="sum").cpu()
    sums, stats = totals[:4], RecognitionStats.from_tensor(totals[4:].round().to(torch.int64))
    count = max(1.0, float(sums[1]))
    metrics = {"val_loss": float(sums[0]) / count}
    metrics.update({f"val_{k}": float(v) for k, v in stats.summary().items() if k != "count"})
    if spec.uses_generator:
        metrics["val_psnr"], metrics["val_ssim"] = float(sums[2]) / count, float(sums[3]) / count
    return metrics
