"""Does the OCR read more plates after SR than before? The LR-bicubic | SR | HR comparison."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lpasrn.data.readers import StreamReader
from lpasrn.eval.metrics import RecognitionStats
from lpasrn.models.ocr_arch import greedy_decode

VARIANTS = ("lr_bicubic", "sr", "hr")


@torch.no_grad()
def compare_readings(model, data_dir, split: str, batch_size: int, accelerator, num_workers: int = 0) -> dict:
    """Word and character accuracy of `model.ocr` on bicubic-upscaled LR, on SR and on HR.

    Each rank reads its exact-once share of the split; the sums are all-reduced once at the end.
    # NOTE: call on all ranks.
    """
    model = accelerator.unwrap_model(model)
    model.eval()
    reader = StreamReader(data_dir, split, batch_size, rank=accelerator.process_index,
                          world_size=accelerator.num_processes, num_workers=num_workers, mode="exact")
    stats = {name: RecognitionStats() for name in VARIANTS}
    for batch in reader:
        if batch["hr"].shape[0] == 0:
            continue
        lr, hr = batch["lr"].to(accelerator.device), batch["hr"].to(accelerator.device)
        images = {
            "lr_bicubic": F.interpolate(lr, size=hr.shape[-2:], mode="bicubic", align_corners=False).clamp(0, 1),
            "sr": model.generator(lr).float().clamp(0, 1),
            "hr": hr,
        }
        for name, image in images.items():
            readings, _ = greedy_decode(model.ocr(image).float())
            stats[name].update(batch["text"], readings)
    packed = torch.stack([stats[name].as_tensor() for name in VARIANTS]).to(torch.float64)
    packed = accelerator.reduce(packed.to(accelerator.device), reduction="sum").cpu().round().to(torch.int64)
    result = {}
    for row, name in enumerate(VARIANTS):
        summary = RecognitionStats.from_tensor(packed[row]).summary()
        result[name] = {"word_acc": summary["word_acc"], "char_acc": summary["char_acc"],
                        "count": int(summary["count"])}
    return result


def format_table(result: dict) -> str:
    lines = [f"{'input':<12} {'word_acc':>9} {'char_acc':>9} {'plates':>7}"]
    for name in VARIANTS:
        row = result[name]
        lines.append(f"{name:<12} {row['word_acc']:>9.4f} {row['char_acc']:>9.4f} {row['count']:>7d}")
    return "\n".join(lines)
