#!/usr/bin/env bash
# Create .venv and install lpasrn with its test tools. Idempotent: a second run installs nothing new.
# torch goes in first and pinned: on a machine with no GPU the CPU build torch==2.13.0; an unpinned
# torch would pull a multi-GB CUDA build. Set LPASRN_TORCH to choose another spec (e.g. on a GPU node).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
if [ -z "${LPASRN_TORCH:-}" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then LPASRN_TORCH="torch"; else LPASRN_TORCH="torch==2.13.0"; fi
fi
python -c "import torch" 2>/dev/null || pip install -q --disable-pip-version-check "$LPASRN_TORCH"
# deepspeed builds against the installed torch: no build isolation, or pip would fetch another torch.
python -c "import deepspeed" 2>/dev/null || pip install -q --disable-pip-version-check --no-build-isolation "deepspeed>=0.15"
pip install -q --disable-pip-version-check -e ".[dev]"
