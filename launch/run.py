#!/usr/bin/env python
"""Training entry point: `accelerate launch launch/run.py --stage N --config FILE [--set k=v] [--resume auto]`,
or `python launch/run.py ...` for single-process debug. All logic lives in lpasrn.train."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from lpasrn.train.train_cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
