"""Validation of a stage: loss, PSNR/SSIM of SR, and the OCR's recognition metrics, summed on each
rank and all-reduced once, so the numbers do not depend on how samples were split across ranks.
"""
from __future__ import annotations

import torch

from lpasrn.losses.ssim import ssim
from lpasrn.metrics import RecognitionStats, psnr
from lpasrn.models.ocr_arch import greedy_decode
from lpasrn.train.lockstep import select_rows, with_stand_in
from lpasrn.train.objective import outputs_needed


@torch.no_grad()
def validate(runner, batches) -> dict[str, float]:
    """# NOTE: call on all ranks: every rank runs the same number of forwards (lock-step batches,
    a forward is a collective under ZeRO-3) and one all-reduce of the sums at the end."""
    acc, spec = runner.acc, runner.spec
    net = acc.unwrap_model(runner.model)
    was_training = net.training
    net.eval()
    want = tuple(sorted(outputs_needed(runner.objective.components, True, spec.uses_generator)))
    sums = torch.zeros(4, dtype=torch.float64)  # loss*n, n, psnr sum, ssim sum
    stats = RecognitionStats()
    runner.val_read_errors.reset()  # the same split every epoch: report the last pass, not the sum
    for batch in batches:
        runner.val_read_errors.record(batch.get("corrupt", []))
        batch = runner.to_device(with_stand_in(batch, runner.stand_in))
        out = runner.forward(net, batch, want)
        rows = torch.nonzero(batch["weight"] > 0).reshape(-1)
        if rows.numel() == 0:  # padding or all corrupt: the forward above kept the ranks in step
            continue
        out, batch = select_rows(out, rows), select_rows(batch, rows)
        hr = batch["hr"]
        loss, _ = runner.objective(out, batch)
        n = hr.shape[0]
        sums[0] += float(loss) * n
        sums[1] += n
        logits = out["ocr_sr"] if spec.uses_generator else out["ocr_hr"]
        readings, _ = greedy_decode(logits.float())
        stats.update(batch["text"], readings)
        if spec.uses_generator:
            sr = out["sr"].float().clamp(0, 1)
            sums[2] += float(psnr(sr, hr).sum())
            sums[3] += float(ssim(sr, hr, window=runner.cfg.loss.ssim_window, reduction="none").sum())
    net.train(was_training)
    totals = acc.reduce(torch.cat([sums, stats.as_tensor().to(torch.float64)]).to(acc.device), reduction="sum").cpu()
    sums, stats = totals[:4], RecognitionStats.from_tensor(totals[4:].round().to(torch.int64))
    count = max(1.0, float(sums[1]))
    metrics = {"val_loss": float(sums[0]) / count}
    metrics.update({f"val_{k}": float(v) for k, v in stats.summary().items() if k != "count"})
    if spec.uses_generator:
        metrics["val_psnr"], metrics["val_ssim"] = float(sums[2]) / count, float(sums[3]) / count
    return metrics
