#!/usr/bin/env bash
# The README's test command: set up (idempotent), then run the test suite (arguments go to pytest).
#
# When the SLURM tests are selected (no -m that excludes `slurm`, and no test paths that leave out
# tests/test_slurm*.py) the local two-node cluster is started first (scripts/slurm-local.sh) and
# stopped on exit, whatever the outcome; a cluster that was already up is used and left running.
# Where SLURM cannot be provided (not root and not installed) the SLURM tests are skipped with the
# reason in the summary. LPASRN_SLURM=on|off|auto (default auto) forces the choice.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.torch_extensions}

slurm_selected() {
  local arg prev="" paths=0 slurm_path=0
  for arg in "$@"; do
    if [ "$prev" = "-m" ]; then
      case "$arg" in *"not slurm"*) return 1 ;; *slurm*) ;; *) return 1 ;; esac
    elif [ "${arg#-}" = "$arg" ] && [ -e "${arg%%::*}" ]; then  # a test path (file, dir, node id)
      paths=1
      case "$(realpath "${arg%%::*}")" in "$PWD"|"$PWD/tests"|*/test_slurm*) slurm_path=1 ;; esac
    fi
    prev=$arg
  done
  [ "$paths" = 0 ] || [ "$slurm_path" = 1 ]
}

want=${LPASRN_SLURM:-auto}
if [ "$want" = on ] || { [ "$want" = auto ] && slurm_selected "$@"; }; then
  if bash scripts/slurm-local.sh status >/dev/null 2>&1; then
    echo "test.sh: using the SLURM cluster that is already up (left running)"
  else
    set +e
    reason=$(bash scripts/slurm-local.sh start 2>&1 >/dev/null)
    status=$?
    set -e
    if [ "$status" = 0 ]; then
      trap 'bash scripts/slurm-local.sh stop' EXIT
    elif [ "$status" = 3 ]; then
      # Read by tests/test_slurm*.py: they skip with this reason instead of failing.
      export LPASRN_SLURM_UNAVAILABLE="${reason##*slurm-local: }"
    else
      echo "test.sh: could not start the local SLURM cluster (scripts/slurm-local.sh start):" >&2
      echo "$reason" >&2
      exit 1
    fi
  fi
fi
# Not exec: the EXIT trap must run after pytest.
.venv/bin/python -m pytest -q "$@"
