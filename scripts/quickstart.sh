#!/usr/bin/env bash
# The README's main job: set up (idempotent), render the default synthetic plates if absent, train
# all five stages with configs/quickstart.yaml on CPU, and print the LR-bicubic | SR | HR table
# (also written to runs/quickstart/eval.json). Extra arguments go to `lpasrn quickstart`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/lpasrn quickstart "$@"
