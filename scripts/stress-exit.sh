#!/usr/bin/env bash
# Stress check of clean process exit (not a test): N consecutive 2-process `lpasrn evaluate` runs
# and M consecutive 2-process stage runs (gloo, CPU), counting abnormal exits: a non-zero exit
# status, or an abort message ("terminate called ...", SIGABRT) even when the status is 0.
#
#   bash scripts/stress-exit.sh [N_EVALUATE=50] [N_STAGE=20]      # results go in BENCHMARKS.md
#
# Before lpasrn/distributed/lifecycle.py ended the process group explicitly, 6 of 12 two-process
# evaluate runs died of SIGABRT at exit after printing correct results.
set -uo pipefail  # no -e: every run's status is counted, not fatal
cd "$(dirname "$0")/.."
N_EVALUATE=${1:-50}
N_STAGE=${2:-20}
PY=${LPASRN_PYTHON:-$PWD/.venv/bin/python}
WORK=$(mktemp -d /tmp/lpasrn-stress.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
export OMP_NUM_THREADS=1 ACCELERATE_USE_CPU=1 WANDB_MODE=offline PYTHONUNBUFFERED=1
ABORT_RE='terminate called|Aborted|SIGABRT|Signal 6|core dumped|exited unexpectedly'

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
launch_two() {  # accelerate launch with 2 CPU processes; the rest are the program and its arguments
  "$PY" -m accelerate.commands.launch --multi_gpu --num_processes 2 --num_machines 1 \
    --mixed_precision no --dynamo_backend no --main_process_port "$(free_port)" "$@"
}

# A tiny dataset, and stage 0 trained once (one process): what evaluate reads and stage 1 starts from.
"$PY" -m lpasrn.cli data synth --out "$WORK/data" --train 48 --val 16 --test 16 --seed 0 \
  --degradation realistic --shard-size 16 >"$WORK/synth.log" 2>&1 || { cat "$WORK/synth.log"; exit 1; }
cat >"$WORK/cfg.yaml" <<YAML
experiment: stress
seed: 0
run_dir: $WORK/run
data: {dir: $WORK/data, batch_size: 8, num_workers: 0}
model: {generator_preset: tiny, ocr_preset: tiny, use_lightweight_embedder: true}
stages:
  pretrain: {epochs: 1, lr: 1.0e-3, loss_components: [ctc], freeze_ocr: false}
  warmup: {epochs: 1, lr: 1.0e-3, loss_components: [l1]}
tracking: {wandb: off, num_image_samples: 4}
YAML
"$PY" launch/run.py --config "$WORK/cfg.yaml" --stage 0 >"$WORK/stage0.log" 2>&1 \
  || { tail -20 "$WORK/stage0.log"; exit 1; }
EXPORT=$WORK/run/stage0_pretrain/best

abnormal_evaluate=0 abnormal_stage=0
check() {  # kind, index, status, log: count and keep the log of an abnormal exit
  if [ "$3" != 0 ] || grep -Eq "$ABORT_RE" "$4"; then
    cp "$4" "/tmp/lpasrn-stress-abnormal-$1-$2.log"
    echo "$1 run $2: ABNORMAL (status $3; log /tmp/lpasrn-stress-abnormal-$1-$2.log)"
    return 1
  fi
}
started=$(date +%s)
for i in $(seq "$N_EVALUATE"); do
  launch_two -m lpasrn.cli evaluate --checkpoint "$EXPORT" --data "$WORK/data" --split test \
    --json "$WORK/eval.json" --batch-size 5 >"$WORK/eval.log" 2>&1
  check evaluate "$i" $? "$WORK/eval.log" || abnormal_evaluate=$((abnormal_evaluate + 1))
done
echo "evaluate: $N_EVALUATE two-process runs, $abnormal_evaluate abnormal exits ($(( $(date +%s) - started )) s)"
started=$(date +%s)
for i in $(seq "$N_STAGE"); do
  rm -rf "$WORK/stage-run"; mkdir -p "$WORK/stage-run"
  cp -r "$WORK/run/stage0_pretrain" "$WORK/stage-run/"
  launch_two launch/run.py --config "$WORK/cfg.yaml" --stage 1 --set "run_dir=$WORK/stage-run" \
    >"$WORK/stage.log" 2>&1
  check stage "$i" $? "$WORK/stage.log" || abnormal_stage=$((abnormal_stage + 1))
done
echo "stage 1: $N_STAGE two-process runs, $abnormal_stage abnormal exits ($(( $(date +%s) - started )) s)"
[ "$abnormal_evaluate" = 0 ] && [ "$abnormal_stage" = 0 ]
