"""`lpasrn train` / `launch/run.py` (the same entry point) and `lpasrn quickstart`.

    accelerate launch launch/run.py --stage 2 --config configs/lpasrn.yaml   # cluster
    python launch/run.py --stage all --config configs/quickstart.yaml       # one process, debug
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from lpasrn.distributed.lifecycle import end_process_group
from lpasrn.errors import LpasrnError

QUICKSTART_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stage", default="all", help="0..4 or 'all' (default)")
    parser.add_argument("--config", default=None, help="YAML config (default: built-in paper defaults)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set stages.lcofl.epochs=5 (repeatable)")
    parser.add_argument("--resume", default=None, help="'auto' (newest complete checkpoint) or a checkpoint dir")
    parser.add_argument("--debug", action="store_true", help="verbose logging, anomaly detection")
    parser.add_argument("--eval", action="store_true",
                        help="after training, compare OCR on LR-bicubic, SR and HR on the test split")


def run_train(args) -> int:
    """# NOTE: runs on every rank; everything below is collective or main-process-guarded."""
    import torch

    from lpasrn.config import load_config
    from lpasrn.distributed.preemption import describe_rank, install_signal_handlers, restore_signal_handlers
    from lpasrn.train.loop import Preempted
    from lpasrn.train.pipeline import make_accelerator, run_stages
    from lpasrn.train.stages import parse_stage_arg

    # Line-buffered stdout: epoch summaries reach SLURM logs and pipes as they happen.
    if hasattr(sys.stdout, "reconfigure"):  # a real text stream (not pytest's capture)
        sys.stdout.reconfigure(line_buffering=True)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.debug:  # the libraries' INFO lines at every checkpoint would drown the epoch lines
        for library in ("accelerate", "DeepSpeed", "torch.distributed"):
            logging.getLogger(library).setLevel(logging.WARNING)
    if args.debug:
        torch.autograd.set_detect_anomaly(True)
    cfg = load_config(args.config, args.set)
    specs = parse_stage_arg(args.stage)
    previous_handlers = install_signal_handlers()  # NOTE: every rank, before the first collective
    try:
        accelerator = make_accelerator(cfg)
        print(describe_rank(accelerator), flush=True)  # every rank: the layout is checkable from a job log
        accelerator.print(f"lpasrn: {accelerator.distributed_type} x{accelerator.num_processes} on "
                          f"{accelerator.device}, stages {[s.index for s in specs]}, run dir {cfg.run_dir}")
        started = time.time()
        export = run_stages(cfg, specs, args.resume, accelerator)
    except Preempted as done:
        rank = accelerator.process_index
        print(f"lpasrn-rank: rank {rank} saved its part of {done}; exiting 0", flush=True)
        accelerator.print(f"lpasrn: preempted; checkpoint {done}; requeue and resume with --resume auto")
        return 0
    finally:
        restore_signal_handlers(previous_handlers)
    accelerator.print(f"lpasrn: finished in {time.time() - started:.0f} s; best weights in {export}")
    if args.eval:
        evaluate_after_training(cfg, export, accelerator)
    return 0  # the caller ends the process group (lpasrn.distributed.lifecycle), on every rank


def accuracy_table(summary: dict) -> dict:
    """{variant: word_acc, char_acc, count} of one reader's summary section."""
    from lpasrn.eval.evaluate import VARIANTS

    table = {name: {"word_acc": summary[name]["recognition_rate"], "char_acc": summary[name]["char_acc"],
                    "count": int(summary[name]["count"])} for name in VARIANTS}
    for name in VARIANTS:  # image quality vs HR (LR-bicubic and SR): does SR also beat bicubic there?
        table[name].update({k: summary[name][k] for k in ("psnr", "ssim") if summary[name].get(k) is not None})
    return table


def _table_lines(rows: dict) -> list[str]:
    lines = [f"{'input':<12} {'word_acc':>9} {'char_acc':>9} {'plates':>7} {'psnr':>7} {'ssim':>7}"]
    lines += [f"{name:<12} {row['word_acc']:>9.4f} {row['char_acc']:>9.4f} {row['count']:>7d}"
              + (f" {row['psnr']:>7.2f} {row['ssim']:>7.4f}" if "psnr" in row else "")
              for name, row in rows.items()]
    return lines


def evaluate_after_training(cfg, export: Path, accelerator) -> dict | None:
    """Print and save (run_dir/eval.json) the LR-bicubic | SR | HR table on the test split, using the
    same per-sample evaluation as `lpasrn evaluate`, read by the final OCR and (`hr_only_ocr`) by the
    stage-0 OCR, which was trained on HR only and never on SR, so it cannot favour SR.
    # NOTE: call on all ranks (the gather is collective)."""
    from lpasrn.eval.evaluate import evaluate
    from lpasrn.train.pipeline import stage_dir
    from lpasrn.train.stages import STAGES

    stage0 = stage_dir(cfg, STAGES[0]) / "best"
    others = {"hr_only_ocr": stage0} if (stage0 / "model.safetensors").is_file() else {}
    evaluated = evaluate(export, Path(cfg.data.dir), "test", cfg.data.batch_size, accelerator,
                         cfg.data.num_workers, other_ocr_exports=others)
    if evaluated is None:  # not the main process
        return None
    summary = evaluated[0]
    result = accuracy_table(summary)
    table = [f"\nOCR on the test split ({cfg.data.dir}), read by the final OCR ({export}):"] + _table_lines(result)
    if others:
        result["hr_only_ocr"] = accuracy_table(summary["hr_only_ocr"])
        table += [f"read by the stage-0 OCR, trained on HR only ({stage0}):"] + _table_lines(result["hr_only_ocr"])
    else:
        table += [f"no stage-0 export at {stage0}: no hr_only_ocr table"]
    out = Path(cfg.run_dir) / "eval.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print("\n".join(table) + f"\nwritten to {out}")
    return result


def run_quickstart(args) -> int:
    args.config = args.config or str(QUICKSTART_CONFIG)
    args.stage, args.eval = "all", True
    args.resume = args.resume or "auto"
    return run_train(args)


def register(subparsers) -> None:
    train = subparsers.add_parser("train", help="train stages (same as launch/run.py)")
    add_train_arguments(train)
    train.set_defaults(func=run_train)
    quick = subparsers.add_parser("quickstart", help="synthetic data, all stages on CPU, LR|SR|HR table")
    quick.add_argument("--config", default=None, help=f"default: {QUICKSTART_CONFIG}")
    quick.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    quick.add_argument("--resume", default=None)
    quick.add_argument("--debug", action="store_true")
    quick.set_defaults(func=run_quickstart)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="launch/run.py", description=__doc__.splitlines()[0])
    add_train_arguments(parser)
    args = parser.parse_args(argv)
    status = 1  # an unexpected exception propagates, after the process group is ended
    try:
        status = run_train(args)
    except LpasrnError as err:
        print(f"lpasrn: error: {err}", file=sys.stderr)
        status = 2
    finally:
        end_process_group(success=status == 0)  # NOTE: every rank (see lifecycle.py)
    return status
