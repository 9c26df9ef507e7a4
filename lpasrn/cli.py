"""`lpasrn` console script: one parser, each command group registered by the module that owns it.

A command module exposes `register(subparsers)`, adding its parser with `set_defaults(func=run)`,
where `run(args) -> int` is the exit status. User errors (LpasrnError) print one line, exit 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from lpasrn.distributed.lifecycle import end_process_group
from lpasrn.errors import LpasrnError

# (group name, help, modules registering subcommands under it); None = top-level commands.
COMMAND_GROUPS = [
    ("data", "make, import and inspect plate shards",
     ["lpasrn.data.synth_cli", "lpasrn.data.import_cli", "lpasrn.data.inspect_cli"]),
    ("models", "model presets", ["lpasrn.models.summary_cli"]),
    ("bench", "benchmarks (results belong in BENCHMARKS.md)",
     ["lpasrn.bench.data_bench", "lpasrn.bench.model_bench", "lpasrn.bench.train_bench", "lpasrn.bench.dist_bench",
      "lpasrn.bench.scale_bench", "lpasrn.bench.ablation_bench"]),
    (None, None, ["lpasrn.train.train_cli", "lpasrn.eval.evaluate_cli", "lpasrn.eval.sr_cli",
                  "lpasrn.eval.export_cli", "lpasrn.eval.control_cli"]),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lpasrn", description=__doc__.splitlines()[0])
    top = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group, help_text, modules in COMMAND_GROUPS:
        target = top
        if group is not None:
            group_parser = top.add_parser(group, help=help_text)
            target = group_parser.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
        for module_name in modules:
            importlib.import_module(module_name).register(target)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    status = 1  # an unexpected exception propagates, after the process group is ended
    try:
        status = int(args.func(args) or 0)
    except LpasrnError as err:
        print(f"lpasrn: error: {err}", file=sys.stderr)
        status = 2
    except KeyboardInterrupt:
        status = 130
    finally:
        end_process_group(success=status == 0)  # NOTE: every rank, every command (see lifecycle.py)
    return status


if __name__ == "__main__":
    sys.exit(main())
