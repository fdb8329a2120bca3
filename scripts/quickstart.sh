#!/usr/bin/env bash
# The main job, on the CPU: LeNet on MNIST trained with GG pre-training + DG fine-tuning (the paper's schedule,
# shortened to 1 + 1 epochs), a DG run beside it with the same steps, and both test errors.
# Full-length runs: gencnn train lenet_mnist --mode gg+dg (25 epochs) and benchmarks/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh
export PATH="$PWD/.venv/bin:$PATH"
export GENCNN_DATA=${GENCNN_DATA:-../shared/data}
OUT=${OUT:-runs/quickstart}
EPOCHS=${EPOCHS:-2}

gencnn train lenet_mnist --mode gg+dg --epochs "$EPOCHS" --switch-epoch $((EPOCHS / 2)) --device cpu --out "$OUT/gg+dg"
gencnn train lenet_mnist --mode dg --epochs "$EPOCHS" --device cpu --out "$OUT/dg"
echo
echo "test error on the 10,000 MNIST test images after $EPOCHS epochs:"
gencnn eval "$OUT/gg+dg" --device cpu
gencnn eval "$OUT/dg" --device cpu
