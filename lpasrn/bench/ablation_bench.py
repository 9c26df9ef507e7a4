"""`lpasrn bench ablation`: the quickstart table with each main change of the recipe switched off.

Every variant is the quickstart config plus `--set` overrides, trained in its own run directory and
evaluated on the same test split. Variants whose overrides only touch stages 1-4 start from the
baseline's finished stage 0 (copied, then skipped by `--resume auto`), so the table costs one full
quickstart plus stages 1-4 per such line; the others retrain stage 0. The result is one markdown
line per variant (final OCR and HR-only stage-0 OCR, word/char accuracy, and SR PSNR/SSIM).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from lpasrn.eval.lr_control import GENERATOR_STAGES  # stages 1-4

REPO = Path(__file__).resolve().parents[2]
LCOFL_STAGES = ("lcofl", "finetune", "hard_mining")

# name -> (overrides, whether stage 0 is shared with the baseline)
VARIANTS: dict[str, tuple[list[str], bool]] = {
    "recipe (configs/quickstart.yaml)": ([], False),
    "no CTC on SR (ctc_sr off)": ([
        "stages.lcofl.loss_components=[l1, lcofl]",
        "stages.finetune.loss_components=[l1, lcofl, ctc_hr]",
        "stages.hard_mining.loss_components=[l1, lcofl, embedding]"], True),
    "constant lr in stages 1-4": ([f"stages.{s}.lr_schedule=constant" for s in GENERATOR_STAGES]
                                  + [f"stages.{s}.warmup_fraction=0" for s in GENERATOR_STAGES], True),
    "confusion restarts empty each stage": ([f"stages.{s}.confusion_start=none" for s in LCOFL_STAGES], True),
    "separate OCR forwards on SR and HR": (["model.joint_ocr_forward=false"], True),
    "LCOFL constants of before (position mean, 1 - SSIM)": ([
        "loss.layout_reduction=position_mean", "loss.ssim_loss_scale=1.0"], True),
    "no augmentation in stages 1-4": ([f"stages.{s}.augment=false" for s in GENERATOR_STAGES], True),
    "L1 at the global weight (1) in stages 2-4": (
        [f"stages.{s}.loss_weights.lambda_l1=null" for s in LCOFL_STAGES], True),
    "stage-3 OCR at the stage lr (no ocr_lr)": (["stages.finetune.ocr_lr=null"], True),
    # the other way round: stage 0 made harder (the quickstart's stage 0 reads clean HR)
    "stage-0 OCR on augmented + 50% degraded views": ([
        "stages.pretrain.augment=true", "stages.pretrain.ocr_degraded_views=0.5"], False),
}


def run_variant(name: str, overrides: list[str], shared_stage0: bool, base_dir: Path, run_dir: Path,
                config: str) -> dict:
    if shared_stage0:
        stage0 = base_dir / "stage0_pretrain"
        if not (stage0 / "DONE").is_file():
            raise SystemExit(f"{name}: needs the baseline's finished stage 0 in {stage0}")
        run_dir.mkdir(parents=True, exist_ok=True)
        if not (run_dir / "stage0_pretrain").exists():
            shutil.copytree(stage0, run_dir / "stage0_pretrain")
    args = [sys.executable, "-m", "lpasrn.cli", "quickstart", "--config", config, "--set", f"run_dir={run_dir}"]
    for item in overrides:
        args += ["--set", item]
    started = time.time()
    with open(run_dir.parent / f"{run_dir.name}.log", "w") as log:
        subprocess.run(args, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    return {"name": name, "overrides": overrides, "shared_stage0": shared_stage0,
            "seconds": round(time.time() - started), "eval": json.loads((run_dir / "eval.json").read_text())}


def table(rows: list[dict]) -> str:
    lines = ["| variant | final OCR: LR / SR / HR word | SR - LR | HR-only OCR: LR / SR word | SR - LR "
             "| PSNR bicubic / SR | SSIM bicubic / SR |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        e, h = row["eval"], row["eval"].get("hr_only_ocr", {})
        word = {k: e[k]["word_acc"] for k in ("lr_bicubic", "sr", "hr")}
        line = (f"| {row['name']} | {word['lr_bicubic']:.3f} / {word['sr']:.3f} / {word['hr']:.3f} | "
                f"{100 * (word['sr'] - word['lr_bicubic']):+.1f} |")
        if h:
            line += (f" {h['lr_bicubic']['word_acc']:.3f} / {h['sr']['word_acc']:.3f} | "
                     f"{100 * (h['sr']['word_acc'] - h['lr_bicubic']['word_acc']):+.1f} |")
        if "psnr" in e["sr"]:
            line += (f" {e['lr_bicubic']['psnr']:.2f} / {e['sr']['psnr']:.2f} |"
                     f" {e['lr_bicubic']['ssim']:.3f} / {e['sr']['ssim']:.3f} |")
        lines.append(line)
    return "\n".join(lines)


def run(args) -> int:
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    names = list(VARIANTS) if not args.only else [n for n in VARIANTS if any(k in n for k in args.only)]
    base = Path(args.base).resolve() if args.base else out / "v0"
    rows = []
    for index, name in enumerate(VARIANTS):
        if name not in names:
            continue
        overrides, shared = VARIANTS[name]
        run_dir = base if index == 0 else out / f"v{index}"
        if (run_dir / "eval.json").is_file():  # measured already (a rerun adds nothing: runs are deterministic)
            rows.append({"name": name, "overrides": overrides, "shared_stage0": shared, "seconds": None,
                         "eval": json.loads((run_dir / "eval.json").read_text())})
        else:
            rows.append(run_variant(name, overrides, shared, base, run_dir, args.config))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
        (out / "ablation.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(table(rows))
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("ablation", help="the quickstart table with each recipe change off")
    parser.add_argument("--config", default=str(REPO / "configs" / "quickstart.yaml"))
    parser.add_argument("--out", default="runs/ablation", help="one run directory per variant, and ablation.json")
    parser.add_argument("--base", default=None,
                        help="a finished run of --config to use as the baseline (its stage 0 is shared)")
    parser.add_argument("--only", nargs="*", default=None, help="variants whose name contains one of these")
    parser.set_defaults(func=run)
