"""`lpasrn evaluate`: per-sample OCR readings and image quality of LR-bicubic, SR and HR, then every
summary (overall, per layout, per source, fused per track) computed from those per-sample records.

Distribution: each rank reads its exact-once share of the split, builds plain per-sample records,
and the records are gathered, de-duplicated by sid and sorted by sid on the main process. Every
number is then a function of that sorted list alone, so it cannot depend on the number of
processes (up to float rounding of the model's own outputs under different batch compositions).
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F

from lpasrn.data.readers import StreamReader
from lpasrn.eval.fusion import FRAME_COUNTS, RULES, fuse
from lpasrn.eval.strata import degradation_metrics
from lpasrn.eval.loading import load_exported_model, load_exported_ocr
from lpasrn.metrics import RecognitionStats, psnr
from lpasrn.losses.ssim import ssim
from lpasrn.models.ocr_arch import greedy_decode

VARIANTS = ("lr_bicubic", "sr", "hr")
IMAGE_VARIANTS = ("lr_bicubic", "sr")  # compared with HR by PSNR and SSIM
SSIM_WINDOW = 5  # DESIGN.md section 4
RECOGNITION_KEYS = ("recognition_rate", "ge6", "ge5", "char_acc", "count")


def make_eval_accelerator():
    """An Accelerator for inference: no mixed precision; gloo when launched on CPU with several ranks."""
    from accelerate import Accelerator

    from lpasrn.train.pipeline import process_group_handlers

    return Accelerator(mixed_precision="no", kwargs_handlers=process_group_handlers())


@torch.no_grad()
def variant_images(generator, lr: torch.Tensor, hr: torch.Tensor) -> dict[str, torch.Tensor]:
    """The three OCR inputs at HR size, clamped to [0, 1]."""
    return {
        "lr_bicubic": F.interpolate(lr, size=hr.shape[-2:], mode="bicubic", align_corners=False).clamp(0, 1),
        "sr": generator(lr).float().clamp(0, 1),
        "hr": hr,
    }


def _read(ocr, images: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    readings, confidences = {}, {}
    for name, image in images.items():
        texts, conf = greedy_decode(ocr(image).float())
        readings[name], confidences[name] = texts, conf.cpu().tolist()
    return readings, confidences


@torch.no_grad()
def batch_records(model, batch: dict, device, ocr=None, other_ocrs: dict | None = None) -> list[dict]:
    """Plain per-sample records (str, int, float only) for one batch.

    `ocr` (default: the export's own) gives `readings`; each of `other_ocrs` {name: OCR} reads the same
    three images into `other_readings[name]`, so several readers are compared on identical inputs.
    """
    lr, hr = batch["lr"].to(device), batch["hr"].to(device)
    images = variant_images(model.generator, lr, hr)
    readings, confidences = _read(ocr if ocr is not None else model.ocr, images)
    others = {name: _read(other, images)[0] for name, other in (other_ocrs or {}).items()}
    psnrs, ssims = {}, {}
    for name in IMAGE_VARIANTS:
        psnrs[name] = psnr(images[name], hr).cpu().tolist()
        ssims[name] = ssim(images[name], hr, window=SSIM_WINDOW, reduction="none").cpu().tolist()
    records = []
    for i, sid in enumerate(batch["sid"].tolist()):
        record = {
            "sid": int(sid), "text": batch["text"][i], "layout": batch["layout"][i] or "unknown",
            "source": batch["source"][i], "track": batch["track"][i],
            "readings": {name: readings[name][i] for name in VARIANTS},
            "confidences": {name: float(confidences[name][i]) for name in VARIANTS},
            "psnr": {name: float(psnrs[name][i]) for name in IMAGE_VARIANTS},
            "ssim": {name: float(ssims[name][i]) for name in IMAGE_VARIANTS},
            "degradation": (batch.get("degradation") or [None] * len(batch["text"]))[i],
        }
        if others:
            record["other_readings"] = {name: {v: texts[v][i] for v in VARIANTS} for name, texts in others.items()}
        records.append(record)
    return records


def collect_local_records(model, data_dir, split: str, batch_size: int, accelerator, num_workers: int = 0,
                          ocr=None, other_ocrs: dict | None = None) -> tuple[list[dict], list[str]]:
    """This rank's records and the corrupt samples its reader skipped ("shard:key: reason")."""
    # NOTE: exact mode with rank/world from the accelerator: every sample is read by exactly one rank.
    reader = StreamReader(data_dir, split, batch_size, rank=accelerator.process_index,
                          world_size=accelerator.num_processes, num_workers=num_workers, mode="exact")
    records = []
    for batch in reader:
        if batch["hr"].shape[0]:
            records.extend(batch_records(model, batch, accelerator.device, ocr, other_ocrs))
    return records, list(reader.read_errors.items)


def gather_records(records: list[dict], read_errors: list[str]) -> tuple[list[dict], list[str]]:
    """Every rank's records, de-duplicated by sid and sorted by sid, and every rank's read errors.

    # NOTE: collective: call on all ranks. Records travel as JSON text, so what crosses processes is
    # plain data; de-duplication and sorting make the result independent of rank count and order.
    """
    from accelerate.utils import gather_object

    texts = gather_object([json.dumps({"records": records, "errors": read_errors})])
    by_sid, errors = {}, []
    for text in texts:
        part = json.loads(text)
        for record in part["records"]:
            by_sid.setdefault(record["sid"], record)
        errors.extend(part["errors"])
    return [by_sid[sid] for sid in sorted(by_sid)], sorted(set(errors))


def recognition_metrics(records: list[dict], variant: str, reader: str | None = None) -> dict:
    """Recognition of `variant` as read by the main OCR, or by `other_readings[reader]`."""
    stats = RecognitionStats()
    if reader is None:
        readings = [r["readings"][variant] for r in records]
    else:
        readings = [r["other_readings"][reader][variant] for r in records]
    stats.update([r["text"] for r in records], readings)
    summary = stats.summary()
    return {key: summary[key] for key in RECOGNITION_KEYS}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def variant_metrics(records: list[dict]) -> dict:
    """{variant: recognition (+ mean psnr and ssim vs HR for lr_bicubic and sr)}."""
    result = {}
    for variant in VARIANTS:
        result[variant] = recognition_metrics(records, variant)
        if variant in IMAGE_VARIANTS:
            result[variant]["psnr"] = _mean([r["psnr"][variant] for r in records])
            result[variant]["ssim"] = _mean([r["ssim"][variant] for r in records])
    return result


def source_group(source: str) -> str:
    """The dataset part of a record's source: importers write 'ufpr:plate-001/lr-001.png' etc."""
    return source.split(":", 1)[0] or "unknown"


def grouped_metrics(records: list[dict], key) -> dict:
    groups: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        groups[key(record)].append(record)
    return {name: variant_metrics(groups[name]) for name in sorted(groups)}


def track_frames(records: list[dict]) -> dict[str, list[dict]]:
    """Records with a track id, grouped by track, frames in sid order (records are sid-sorted)."""
    tracks: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        if record["track"] is not None:
            tracks[record["track"]].append(record)
    return {track: tracks[track] for track in sorted(tracks)}


def fused_reading(frames: list[dict], variant: str, rule: str, count: int) -> str:
    readings = [f["readings"][variant] for f in frames]
    return fuse(rule, readings, [f["confidences"][variant] for f in frames], count)


def track_metrics(records: list[dict]) -> dict:
    """Recognition of fused readings per frame count, variant and rule. A track's truth is its first
    frame's text; tracks whose frames disagree on the text are counted in `inconsistent_text`."""
    tracks = track_frames(records)
    truths = [frames[0]["text"] for frames in tracks.values()]
    result = {"count": len(tracks),
              "inconsistent_text": sum(len({f["text"] for f in frames}) > 1 for frames in tracks.values()),
              "frames": {}}
    for count in FRAME_COUNTS:
        per_variant = {}
        for variant in VARIANTS:
            per_rule = {}
            for rule in RULES:
                stats = RecognitionStats()
                fused = [fused_reading(frames, variant, rule, count) for frames in tracks.values()]
                stats.update(truths, fused)
                per_rule[rule] = {key: stats.summary()[key] for key in RECOGNITION_KEYS}
            per_variant[variant] = per_rule
        result["frames"][str(count)] = per_variant
    return result


def summarize(records: list[dict]) -> dict:
    """Everything `lpasrn evaluate` reports, from sid-sorted per-sample records only."""
    result = variant_metrics(records)
    result["by_layout"] = grouped_metrics(records, lambda r: r["layout"])
    result["by_source"] = grouped_metrics(records, lambda r: source_group(r["source"]))
    result["by_degradation"] = degradation_metrics(records, variant_metrics)
    result["tracks"] = track_metrics(records)
    for reader in sorted(records[0].get("other_readings", {})) if records else ():
        result[reader] = {variant: recognition_metrics(records, variant, reader) for variant in VARIANTS}
    return result


def evaluate(export_dir: Path, data_dir: Path, split: str, batch_size: int, accelerator,
             num_workers: int = 0, ocr_export: Path | None = None,
             other_ocr_exports: dict[str, Path] | None = None) -> tuple[dict, list[dict], object] | None:
    """(summary, records, model) on the main process, None on the others.

    The generator comes from `export_dir`; the OCR from `ocr_export` when given (else the export's
    own); each of `other_ocr_exports` {name: export} also reads every image, summarised as `name`.

    # NOTE: call on all ranks (the gather is collective).
    """
    model, _ = load_exported_model(export_dir, accelerator.device)
    ocr = load_exported_ocr(ocr_export, accelerator.device) if ocr_export is not None else None
    others = {name: load_exported_ocr(path, accelerator.device) for name, path in (other_ocr_exports or {}).items()}
    records, errors = collect_local_records(model, data_dir, split, batch_size, accelerator, num_workers,
                                            ocr, others)
    records, errors = gather_records(records, errors)
    if not accelerator.is_main_process:
        return None
    if ocr is not None:
        model.ocr = ocr  # the report's grids and confusion read with the OCR the numbers were read with
    result = summarize(records)
    result["read_errors"] = errors
    return result, records, model
