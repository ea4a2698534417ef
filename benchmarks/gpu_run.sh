#!/usr/bin/env bash
# Every GPU figure of benchmarks/RESULTS.md in one command, for a short GPU lease (about 5 min on one H200):
#   1. speed.py --device cuda (alone on the GPU, so its timings are clean);
#   2. Table 3 with PreResNet-20 (recipes/grids/fmnist_preresnet20_table3.yaml, 4 points at a time on the GPU);
#   3. the ResNet-20 Table 3 checkpoints re-evaluated on the paper's full 0.01 grid (51 levels).
# Inputs: Fashion-MNIST idx files in $DATA_ROOT/fashion_mnist (default .devcarry) and the ResNet-20 run folders in $R20
# (default .devcarry/r20). Outputs go to $OUT (default benchmarks/results/gpu) as a few files/tarballs.
# STEPS picks a subset (default "speed table3 r20eval"), for a lease too short for all of them. Mixed precision
# (issue "Mixed-precision GPU training at full-schedule speed"): STEPS="schedule parity" runs
#   schedule: benchmarks/gpu_schedule.py schedule (each precision / compile configuration, 2 epochs of 50,000
#             CIFAR-shaped images, and a hand-written loop with the same tricks): about 4 min on one H100/H200;
#   parity:   benchmarks/gpu_schedule.py parity (Fashion-MNIST ResNet-20 standard and hinge, fp32 vs fastest bf16,
#             2 seeds, 4 at a time): about 4 min; then benchmarks/k_precision.py --device cuda (k(x) under bf16 /
#             fp16 vs fp32 on the shipped weights, seconds). Both need Fashion-MNIST in $DATA_ROOT/fashion_mnist.
# Try it first on a CPU at a tiny size: SCHEDULE_ARGS="--device cpu --images 512 --epochs 1" \
#   PARITY_ARGS="--device cpu --steps 5 --seeds 0" STEPS="schedule parity" OUT=runs/gpu_try bash benchmarks/gpu_run.sh
#
#   OUT=gpu_out bash benchmarks/gpu_run.sh
#   STEPS="speed r20eval" OUT=gpu_out bash benchmarks/gpu_run.sh
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export TIMM_LIPSCHITZ_DATA=${DATA_ROOT:-$ROOT/.devcarry}  # Fashion-MNIST idx files in <root>/fashion_mnist
R20=${R20:-$ROOT/.devcarry/r20}
PY=${PYTHON:-python3}
GRID=recipes/grids/fmnist_preresnet20_table3.yaml
SWEEP_DIR=runs/sweeps/fmnist_preresnet20_table3
STEPS=" ${STEPS:-speed table3 r20eval} "
want() { [[ $STEPS == *" $1 "* ]]; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi (CPU trial)"
$PY -c "import torch, timm, accelerate; print('torch', torch.__version__, 'timm', timm.__version__,
'accelerate', accelerate.__version__, 'cuda', torch.cuda.is_available())" || exit 1

if want speed; then
  echo "== 1. speed (GPU alone) $(date +%T)"
  timeout "${SPEED_LIMIT:-200}" $PY benchmarks/speed.py --device cuda --repeats 5 && \
    cp benchmarks/results/speed_cuda.json benchmarks/results/speed_cuda.md "$OUT"/
fi

if want schedule; then
  echo "== schedule $(date +%T)"
  timeout "${SCHEDULE_LIMIT:-270}" $PY benchmarks/gpu_schedule.py schedule ${SCHEDULE_ARGS:-} > "$OUT/schedule.log" 2>&1
  cp benchmarks/results/gpu_schedule.json benchmarks/results/gpu_schedule.md "$OUT"/ 2>/dev/null; tail -n 20 "$OUT/schedule.log"
fi
if want parity; then
  echo "== parity $(date +%T)"
  timeout "${PARITY_LIMIT:-270}" $PY benchmarks/gpu_schedule.py parity ${PARITY_ARGS:-} > "$OUT/parity.log" 2>&1
  cp benchmarks/results/gpu_parity.json benchmarks/results/gpu_parity.md "$OUT"/ 2>/dev/null; tail -n 12 "$OUT/parity.log"
  # k(x) under bf16 / fp16 autocast against fp32 on the shipped Fashion-MNIST weights (seconds)
  timeout 60 $PY benchmarks/k_precision.py --device cuda ${K_ARGS:-} > "$OUT/k_precision.log" 2>&1
  cp benchmarks/results/k_precision_cuda.json benchmarks/results/k_precision_cuda.md "$OUT"/ 2>/dev/null
  tail -n 8 "$OUT/k_precision.log"
fi

echo "== 2. Table 3 PreResNet-20, 3. ResNet-20 0.01 curves $(date +%T)"
if want table3; then
  OMP_NUM_THREADS=4 timeout "${TRAIN_LIMIT:-240}" $PY -m timm_lipschitz.cli sweep "$GRID" --jobs 4 > "$OUT/sweep.log" 2>&1 &
  SWEEP=$!
fi
if want r20eval; then
  for run in "$R20"/*/; do
    name=$(basename "$run")
    $PY -m timm_lipschitz.cli eval "$run" --sigmas 0:0.5:0.01 --out "$OUT/r20_eval/$name" --no-progress ${EVAL_ARGS:-} \
      > "$OUT/r20_eval_$name.log" 2>&1 || echo "eval $name failed"
  done
  (cd "$OUT" && tar czf r20_eval.tgz r20_eval r20_eval_*.log && rm -rf r20_eval r20_eval_*.log)
fi
want table3 || { ls -la "$OUT"; exit 0; }
wait $SWEEP; echo "sweep exit $? $(date +%T)"
# finished points travel without their resume state; unfinished ones with it (they resume elsewhere)
excl=(--exclude=tensorboard)
for d in "$SWEEP_DIR"/*/; do [ -f "$d/final.json" ] && excl+=(--exclude="$(basename "$d")/state"); done
tar czf "$OUT/table3_preresnet20.tgz" "${excl[@]}" -C runs/sweeps fmnist_preresnet20_table3
ls -la "$OUT"; tail -n 30 "$OUT/sweep.log"
