"""`lpasrn control lr-ocr --config CONFIG [--steps N] [--json OUT]`: the no-SR control.

Fine-tunes the config's stage-0 OCR export (`run_dir/stage0_pretrain/best`, trained on HR only)
with CTC on bicubic-upscaled LR of the train split, then reads the test split's bicubic LR with it.
One process (the control is small); see lpasrn/eval/lr_control.py.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from lpasrn.errors import LpasrnError

DEFAULT_LR = 5e-4
OUT_NAME = "control_lr_ocr.json"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "control", help="controls that tell whether SR pays for itself",
        description="Experiments that the SR pipeline has to beat; each writes a JSON result.")
    controls = parser.add_subparsers(dest="control", required=True, metavar="CONTROL")
    lr_ocr = controls.add_parser(
        "lr-ocr", help="no SR: the stage-0 OCR fine-tuned on bicubic LR, read on the test split's LR",
        description="Fine-tune the stage-0 OCR export with CTC on bicubic-upscaled LR of the train split "
                    "(default: as many steps as stages 1-4 of the config together), then report its word "
                    "and character accuracy on the test split's bicubic LR.")
    lr_ocr.add_argument("--config", default=None, help="YAML config of the run (default: built-in defaults)")
    lr_ocr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    lr_ocr.add_argument("--ocr", type=Path, default=None, metavar="EXPORT",
                        help="the OCR export to start from (default: run_dir/stage0_pretrain/best)")
    lr_ocr.add_argument("--steps", type=int, default=None, metavar="N",
                        help="optimizer steps (default: stages 1-4 of the config together)")
    lr_ocr.add_argument("--lr", type=float, default=DEFAULT_LR, help=f"AdamW learning rate ({DEFAULT_LR})")
    lr_ocr.add_argument("--batch-size", type=int, default=None, metavar="N",
                        help="plates per step (default: data.batch_size)")
    lr_ocr.add_argument("--json", type=Path, default=None, metavar="OUT",
                        help=f"where to write the result (default: run_dir/{OUT_NAME})")
    lr_ocr.set_defaults(func=run_lr_ocr)


def run_lr_ocr(args) -> int:
    import torch

    from lpasrn.config import load_config
    from lpasrn.eval.loading import load_exported_ocr
    from lpasrn.eval.lr_control import fine_tune, generator_stage_steps, loss_trend, read_split_lr, train_batches
    from lpasrn.train.pipeline import stage_dir
    from lpasrn.train.stages import STAGES

    cfg = load_config(args.config, args.set)
    data_dir = Path(cfg.data.dir)
    export = args.ocr if args.ocr is not None else stage_dir(cfg, STAGES[0]) / "best"
    if not export.is_dir():
        raise LpasrnError(f"no stage-0 OCR export at {export}: train stage 0 first "
                          f"(lpasrn train --stage 0 --config ...) or pass --ocr EXPORT")
    steps = generator_stage_steps(cfg) if args.steps is None else args.steps
    batch_size = args.batch_size or cfg.data.batch_size
    if steps < 1 or batch_size < 1 or args.lr <= 0:
        raise LpasrnError(f"--steps, --batch-size and --lr must be positive, got {steps}, {batch_size}, {args.lr}")
    torch.manual_seed(cfg.seed)
    ocr = load_exported_ocr(export, "cpu")
    before = read_split_lr(ocr, data_dir, "test", batch_size)
    started = time.time()
    # the schedule of the config's stage 3 (the stage that fine-tunes the OCR), on the control's steps
    sched = cfg.stages.finetune
    losses = fine_tune(ocr, train_batches(data_dir, batch_size, cfg.seed), steps, args.lr,
                       cfg.train.grad_clip, cfg.train.weight_decay, sched.lr_schedule, sched.warmup_fraction,
                       sched.min_lr_ratio)
    seconds = time.time() - started
    after = read_split_lr(ocr, data_dir, "test", batch_size)
    result = {
        "lr_bicubic": {k: after[k] for k in ("word_acc", "char_acc", "count", "ctc_loss")},
        "before_fine_tuning": {k: before[k] for k in ("word_acc", "char_acc", "count", "ctc_loss")},
        "steps": steps, "batch_size": batch_size, "lr": args.lr, "optimizer": "AdamW",
        "lr_schedule": {"schedule": sched.lr_schedule, "warmup_fraction": sched.warmup_fraction,
                        "min_lr_ratio": sched.min_lr_ratio},
        "train_seconds": round(seconds, 1), "loss": loss_trend(losses),
        "ocr_export": str(export), "data": str(data_dir), "split": "test", "samples": after["samples"],
    }
    out = args.json if args.json is not None else Path(cfg.run_dir) / OUT_NAME
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"no-SR control: stage-0 OCR ({export}) fine-tuned on bicubic LR of the train split for {steps} "
          f"steps ({seconds:.0f} s)\n"
          f"test bicubic LR word_acc {before['word_acc']:.4f} -> {after['word_acc']:.4f}, "
          f"char_acc {before['char_acc']:.4f} -> {after['char_acc']:.4f} ({after['count']} plates)\n"
          f"written to {out}")
    return 0
