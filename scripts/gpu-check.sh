#!/usr/bin/env bash
# What a CPU cannot check, on one GPU, in at most ~8 minutes: prints one PASS/FAIL line per check and
# exits non-zero if any failed. Run it on a GPU node after `bash scripts/setup.sh` (there it installs
# the CUDA build of torch; set LPASRN_TORCH to pin another), or with PYTHON=... for an environment
# that already has torch with CUDA, accelerate and deepspeed.
#   bash scripts/gpu-check.sh            # all checks
#   bash scripts/gpu-check.sh dcn nccl   # only these (dcn, stages, nccl, bench)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.torch_extensions}
WORK=$(mktemp -d -t lpasrn-gpu-check.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
checks=("$@"); [ ${#checks[@]} -gt 0 ] || checks=(dcn nccl stages bench)
failed=0

result() {  # name, exit status, log file
  if [ "$2" -eq 0 ]; then echo "PASS $1"; else echo "FAIL $1 (exit $2; last lines of $3:)"; tail -n 15 "$3" | sed 's/^/    /'; failed=1; fi
}

stage_run() {  # name, timeout s, accelerate launch arguments...
  local name=$1 limit=$2; shift 2
  timeout "$limit" "$PY" -m accelerate.commands.launch "$@" launch/run.py --config "$WORK/gpu.yaml" \
    --stage all --set "run_dir=$WORK/run-$name" > "$WORK/$name.log" 2>&1
  local status=$?
  # the runner must really have computed in bf16 on the GPU
  if [ $status -eq 0 ] && ! grep -q "computes in bf16" "$WORK/$name.log"; then status=90; fi
  result "$name" $status "$WORK/$name.log"
}

for check in "${checks[@]}"; do
  case "$check" in
    dcn|nccl)
      timeout 180 "$PY" scripts/gpu_check.py "$check" > "$WORK/$check.log" 2>&1
      status=$?; cat "$WORK/$check.log" | grep -E "^(PASS|FAIL|SKIP|INFO) " ; [ $status -eq 0 ] || { grep -qE "^FAIL " "$WORK/$check.log" || result "$check" $status "$WORK/$check.log"; failed=1; } ;;
    stages)
      "$PY" -m lpasrn.cli data synth --out "$WORK/data" --train 64 --val 32 --test 32 --shard-size 32 \
        --degradation realistic > "$WORK/synth.log" 2>&1 || { result "stages: data" 1 "$WORK/synth.log"; continue; }
      cat > "$WORK/gpu.yaml" <<YAML
experiment: gpu-check
seed: 0
run_dir: $WORK/run
data: {dir: $WORK/data, batch_size: 16, num_workers: 2}
model: {generator_preset: small, ocr_preset: small}
stages:
  pretrain: {epochs: 1}
  warmup: {epochs: 1}
  lcofl: {epochs: 1}
  finetune: {epochs: 1}
  hard_mining: {epochs: 1}
train: {max_steps_per_epoch: 2, log_every: 1, image_every: 2}
tracking: {wandb: off, num_image_samples: 4}
YAML
      stage_run "stages bf16 DDP (1 GPU)" 200 --num_processes 1 --mixed_precision bf16
      stage_run "stages bf16 DeepSpeed ZeRO-2 (1 GPU)" 240 --config_file launch/accelerate/zero2.yaml \
        --num_processes 1 --mixed_precision bf16 ;;
    bench)
      timeout 120 "$PY" -m lpasrn.cli bench model --preset small --batch 32 --steps 10 > "$WORK/bench.log" 2>&1
      status=$?; result "bench model (small, batch 32)" $status "$WORK/bench.log"; grep -i "samples/s" "$WORK/bench.log" | sed 's/^/    /' ;;
    *) echo "FAIL unknown check '$check' (dcn, nccl, stages, bench)"; failed=1 ;;
  esac
done
exit $failed
