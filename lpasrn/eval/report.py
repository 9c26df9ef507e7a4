"""The `lpasrn evaluate --report DIR` folder: summary.md, metrics.json (with per-sample records),
LR | SR | HR grids of the best and worst plates, and the SR character-confusion heatmap.

Runs on the main process only, after the records of every rank were gathered.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image

from lpasrn.data.readers import IndexedPlateDataset
from lpasrn.distributed.confusion import CharacterConfusionTracker
from lpasrn.eval.evaluate import IMAGE_VARIANTS, VARIANTS
from lpasrn.eval.fusion import FRAME_COUNTS, RULES
from lpasrn.eval.strata import degradation_lines
from lpasrn.metrics import correct_chars
from lpasrn.train.tracking import plate_grid

METRICS_JSON = "metrics.json"
BEST_GRID, WORST_GRID = "plates_best.png", "plates_worst.png"
CONFUSION_PNG, SUMMARY_MD = "confusion_sr.png", "summary.md"
GRID_ROWS = 8


def write_json(result: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")


def sr_quality_order(records: list[dict]) -> list[dict]:
    """Records from best to worst SR: share of characters read right, then SR PSNR, then sid."""
    def score(r: dict):
        text, reading = r["text"], r["readings"]["sr"]
        return (-correct_chars(text, reading) / max(1, len(text)), -r["psnr"]["sr"], r["sid"])
    return sorted(records, key=score)


@torch.no_grad()
def write_grid(records: list[dict], model, data_dir: Path, split: str, path: Path) -> None:
    """LR | SR | HR rows of `records`, read back by sid and super-resolved again."""
    if not records:
        return
    dataset = IndexedPlateDataset(data_dir, split)
    try:
        samples = [dataset[r["sid"]] for r in records]
    finally:
        dataset.close()
    device = next(model.parameters()).device
    lr = torch.stack([s["lr"] for s in samples]).to(device)
    hr = torch.stack([s["hr"] for s in samples])
    sr = model.generator(lr).float().clamp(0, 1).cpu()
    grid = plate_grid(lr.cpu(), sr, hr, [r["text"] for r in records], [r["readings"]["sr"] for r in records])
    Image.fromarray(grid).save(path)


def write_confusion(records: list[dict], path: Path) -> None:
    tracker = CharacterConfusionTracker()
    tracker.update([r["text"] for r in records], [r["readings"]["sr"] for r in records])
    # NOTE: main process only, so no tracker.sync() (a collective): the records already hold every
    # rank's plates, and the local deltas are the global counts.
    tracker.load_state_dict({"counts": tracker.deltas, "deltas": torch.zeros_like(tracker.deltas)})
    Image.fromarray(tracker.heatmap_image()).save(path)


def _variant_table(metrics: dict) -> list[str]:
    lines = ["| input | recognition | >=6 chars | >=5 chars | char acc | PSNR (dB) | SSIM | plates |",
             "|---|---|---|---|---|---|---|---|"]
    for variant in VARIANTS:
        m = metrics[variant]
        image = (f"{m['psnr']:.2f} | {m['ssim']:.4f}" if variant in IMAGE_VARIANTS else " | ")
        lines.append(f"| {variant} | {m['recognition_rate']:.4f} | {m['ge6']:.4f} | {m['ge5']:.4f} | "
                     f"{m['char_acc']:.4f} | {image} | {m['count']} |")
    return lines


def _track_table(tracks: dict) -> list[str]:
    lines = [f"{tracks['count']} tracks ({tracks['inconsistent_text']} with frames that disagree on the "
             "text).",
             "", "| frames | input | " + " | ".join(RULES) + " |", "|---|---|" + "---|" * len(RULES)]
    for count in FRAME_COUNTS:
        for variant in VARIANTS:
            per_rule = tracks["frames"][str(count)][variant]
            rates = [f"{per_rule[rule]['recognition_rate']:.4f}" for rule in RULES]
            lines.append(f"| {count} | {variant} | " + " | ".join(rates) + " |")
    return lines


def summary_markdown(result: dict, header: dict) -> str:
    lines = ["# lpasrn evaluation", ""]
    lines += [f"- {key}: `{value}`" for key, value in header.items()]
    lines += ["", "## All plates", ""] + _variant_table(result)
    for section, title in (("by_layout", "layout"), ("by_source", "source")):
        for name, metrics in result[section].items():
            lines += ["", f"## {title}: {name}", ""] + _variant_table(metrics)
    if result.get("by_degradation"):
        lines += ["", "## Recognition by degradation strength (terciles of each recorded parameter)", "",
                  "```"] + degradation_lines(result["by_degradation"]) + ["```"]
    lines += ["", "## Tracks (fused recognition rate)", ""] + _track_table(result["tracks"])
    errors = result.get("read_errors", [])
    lines += ["", f"## Corrupt samples skipped: {len(errors)}", ""] + [f"- {e}" for e in errors]
    lines += ["", f"Files: `{METRICS_JSON}` (with per-sample `samples`), `{BEST_GRID}`, `{WORST_GRID}` "
              f"(LR | SR | HR, truth -> SR reading), `{CONFUSION_PNG}` (rows truth, columns SR reading).", ""]
    return "\n".join(lines)


def write_report(result: dict, records: list[dict], model, data_dir: Path, split: str, report_dir: Path,
                 header: dict) -> None:
    report_dir.mkdir(parents=True, exist_ok=True)
    write_json(result, report_dir / METRICS_JSON)
    ordered = sr_quality_order(records)
    write_grid(ordered[:GRID_ROWS], model, data_dir, split, report_dir / BEST_GRID)
    write_grid(ordered[::-1][:GRID_ROWS], model, data_dir, split, report_dir / WORST_GRID)
    write_confusion(records, report_dir / CONFUSION_PNG)
    (report_dir / SUMMARY_MD).write_text(summary_markdown(result, header))
