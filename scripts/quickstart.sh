#!/usr/bin/env bash
# The main job, on the CPU: LeNet on MNIST trained with GG pre-training + DG fine-tuning (the paper's schedule,
# shortened to 1 + 1 epochs), a DG run beside it with the same steps, both test errors, and HMC samples of the
# GG+DG LeNet's ten digit nodes (4 chains each, preset mnist_legible: the data's Gaussian as the reference q, 4
# tempering replicas; 400 of its 1,000 iterations, the work of 1,600 plain ones) in one
# labelled grid, with the chains' R-hat; last, that LeNet exported to ONNX and checked against ONNX Runtime.
# Full-length runs: gencnn train lenet_mnist --mode gg+dg (25 epochs) and benchmarks/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh
export PATH="$PWD/.venv/bin:$PATH"
export GENCNN_DATA=${GENCNN_DATA:-../shared/data}
# One thread per process unless told otherwise: the setting the README's time was measured with; it never collapses
# on a busy machine (docs/results/threads.md; gencnn's own default, 2 passive threads here, is also safe there).
export GENCNN_THREADS=${GENCNN_THREADS:-1}
OUT=${OUT:-runs/quickstart}
EPOCHS=${EPOCHS:-2}

gencnn train lenet_mnist --mode gg+dg --epochs "$EPOCHS" --switch-epoch $((EPOCHS / 2)) --device cpu --out "$OUT/gg+dg" \
  --overwrite
gencnn train lenet_mnist --mode dg --epochs "$EPOCHS" --device cpu --out "$OUT/dg" --overwrite
echo
echo "test error on the 10,000 MNIST test images after $EPOCHS epochs:"
gencnn eval "$OUT/gg+dg" --device cpu
gencnn eval "$OUT/dg" --device cpu

echo
nodes=()
for k in 0 1 2 3 4 5 6 7 8 9; do nodes+=(--node "logits:$k"); done
gencnn sample "$OUT/gg+dg" "${nodes[@]}" --preset mnist_legible --iters "${HMC_ITERS:-400}" --device cpu \
  --out "$OUT/digits.png" --npz "$OUT/digits.npz"

echo
echo "ONNX export of the GG+DG LeNet, checked against ONNX Runtime:"
gencnn export "$OUT/gg+dg" --out "$OUT/lenet.onnx"
