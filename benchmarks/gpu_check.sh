#!/usr/bin/env bash
# Issue 6's GPU measurements in one device call, for a session that is lent a GPU:
#   run(command="bash benchmarks/gpu_check.sh", timeout_s=540)     (about 7 minutes on an H100)
# It needs only the GPU image's python3 (PyTorch, torchvision, numpy): no MLflow, no wheels.
# Results go to $OUT (the device tool brings them back), or ./gpu-out elsewhere; copy the
# tables into BENCHMARKS.md with the machine line each one prints.
# Rehearse it on a CPU with tiny sizes: DEVICE=cpu N=512 EPOCH_SUBSET=512 bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
DEVICE=${DEVICE:-cuda}
N=${N:-20000}                    # images per timed epoch in the throughput benchmarks
EPOCH_SUBSET=${EPOCH_SUBSET:-0}  # 0 = full MNIST for the per-epoch cost
PY=${PY:-python3}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
  $PY -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'; } 2>&1 | tee "$OUT/machine.txt"

echo "== 1. training throughput vs the PyTorch-example reference (fp32 and bf16)"
timeout 220 $PY benchmarks/train_throughput.py --device "$DEVICE" --n "$N" --repeats 5 --levers 2>&1 \
  | tee "$OUT/train_throughput.txt"
echo "== 2. siblings: K=5 batched (vmap) vs sequential"
timeout 150 $PY benchmarks/siblings.py --device "$DEVICE" --no-processes --k 5 --n "$N" --repeats 5 2>&1 \
  | tee "$OUT/siblings.txt"
echo "== 3. seconds per model-epoch (train + both evaluations), paper suite extrapolated"
timeout 150 $PY benchmarks/epoch_cost.py --device "$DEVICE" --epochs 3 --train-subset "$EPOCH_SUBSET" --batched 2>&1 \
  | tee "$OUT/epoch_cost.txt"
