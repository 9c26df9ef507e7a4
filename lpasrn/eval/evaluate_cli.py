"""`lpasrn evaluate --checkpoint EXPORT_DIR --data SHARDS --split test [--json OUT] [--report DIR]`.

One process or many: `ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 -m lpasrn.cli
evaluate ...` gives the same numbers as `lpasrn evaluate ...` (see lpasrn/eval/evaluate.py).
"""
from __future__ import annotations

import time
from pathlib import Path

from lpasrn.errors import LpasrnError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="OCR and image metrics of LR-bicubic, SR and HR on a split (with a report)",
        description="Read every plate of a split once, super-resolve it, read LR-bicubic, SR and HR with "
                    "the export's OCR, and report recognition (overall, per layout, per source, fused per "
                    "track) and PSNR/SSIM against HR.")
    parser.add_argument("--checkpoint", required=True, type=Path, metavar="EXPORT_DIR",
                        help="an export directory, e.g. runs/<exp>/stage4_hard_mining/best")
    parser.add_argument("--data", required=True, type=Path, metavar="SHARDS",
                        help="dataset folder (manifest.json)")
    parser.add_argument("--ocr", type=Path, default=None, metavar="EXPORT",
                        help="read with this export's OCR instead of the evaluated export's (e.g. the "
                             "stage-0 export, an OCR trained on HR only that never saw SR)")
    parser.add_argument("--split", default="test", help="split to evaluate (test)")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="write the metrics JSON here")
    parser.add_argument("--report", type=Path, default=None, metavar="DIR",
                        help="write summary.md, metrics.json, plate grids and the confusion heatmap here")
    parser.add_argument("--batch-size", type=int, default=64, metavar="N", help="plates per batch (64)")
    parser.add_argument("--num-workers", type=int, default=0, metavar="N",
                        help="DataLoader workers per rank (0)")
    parser.set_defaults(func=run)


def run(args) -> int:
    """# NOTE: runs on every rank; the gather inside `evaluate` is collective, the writing is main-only."""
    from lpasrn.eval.evaluate import evaluate, make_eval_accelerator
    from lpasrn.eval.report import write_json, write_report
    from lpasrn.eval.strata import degradation_lines

    if args.batch_size < 1 or args.num_workers < 0:
        raise LpasrnError(f"--batch-size must be >= 1 and --num-workers >= 0, got {args.batch_size}, "
                          f"{args.num_workers}")
    if args.json is None and args.report is None:
        print("lpasrn evaluate: no --json or --report given: printing the summary only")
    accelerator = make_eval_accelerator()
    run_info = {"distributed_type": str(accelerator.distributed_type).split(".")[-1],
                "num_processes": accelerator.num_processes}
    accelerator.print(f"lpasrn evaluate: distributed_type={run_info['distributed_type']} "
                      f"num_processes={run_info['num_processes']} device={accelerator.device}")
    started = time.time()
    outcome = evaluate(args.checkpoint, args.data, args.split, args.batch_size, accelerator, args.num_workers,
                       ocr_export=args.ocr)
    if outcome is None:  # not the main process
        return 0
    result, records, model = outcome
    ocr = str(args.ocr if args.ocr is not None else args.checkpoint)
    result["run"] = {**run_info, "checkpoint": str(args.checkpoint), "ocr": ocr, "data": str(args.data),
                     "split": args.split, "seconds": round(time.time() - started, 3)}
    result["samples"] = records
    if args.json is not None:
        write_json(result, args.json)
    if args.report is not None:
        processes = f"{run_info['distributed_type']} x{run_info['num_processes']}"
        header = {"checkpoint": args.checkpoint, "ocr": ocr, "data": args.data, "split": args.split,
                  "plates": len(records), "processes": processes}
        write_report(result, records, model, args.data, args.split, args.report, header)
    print(short_table(result))
    if result["by_degradation"]:
        print("\nword accuracy by degradation strength (terciles of each recorded parameter):")
        print("\n".join(degradation_lines(result["by_degradation"])))
    for error in result["read_errors"]:
        print(f"lpasrn evaluate: corrupt sample skipped: {error}")
    return 0


def short_table(result: dict) -> str:
    columns = ("recog", ">=6", ">=5", "char", "psnr", "ssim", "plates")
    lines = [f"{'input':<12} " + " ".join(f"{c:>7}" for c in columns)]
    for name in ("lr_bicubic", "sr", "hr"):
        m = result[name]
        image = f"{m['psnr']:>7.2f} {m['ssim']:>7.4f}" if "psnr" in m else f"{'':>7} {'':>7}"
        lines.append(f"{name:<12} {m['recognition_rate']:>7.4f} {m['ge6']:>7.4f} {m['ge5']:>7.4f} "
                     f"{m['char_acc']:>7.4f} {image} {m['count']:>7d}")
    return "\n".join(lines)
