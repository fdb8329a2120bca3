#!/usr/bin/env bash
# The MNIST experiments on one GPU, as run through the device tool: Table 1 (LeNet, 5 seeds x 4 modes) and the
# zoo models (resnet18, mobilenetv2_100; DG vs GG+DG, 3 seeds), side by side on the one GPU, then a tarball of
# the results for the machine that asked. MNIST is read from .data/mnist (a copy of ../shared/data/mnist).
#   bash benchmarks/mnist_gpu.sh [seconds]      # stops at that limit; rerunning resumes where it stopped
set -u
limit=${1:-540}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
out=${OUT:-runs/gpu_out}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)"
common=(--device cuda --data-dir .data)
timeout "$limit" python3 benchmarks/mnist_table1.py --seeds 0 1 2 3 4 --jobs 8 "${common[@]}" \
    > "$out/table1.log" 2>&1 &
timeout "$limit" python3 benchmarks/mnist_table1.py --recipe resnet18_mnist --modes dg gg+dg --seeds 0 1 2 --jobs 3 \
    "${common[@]}" > "$out/resnet18.log" 2>&1 &
timeout "$limit" python3 benchmarks/mnist_table1.py --recipe mobilenetv2_mnist --modes dg gg+dg --seeds 0 1 2 \
    --jobs 3 "${common[@]}" > "$out/mobilenetv2.log" 2>&1 &
wait
tail -n 30 "$out"/*.log
for f in runs/*_table1/*.log; do echo "== $f"; tail -n 2 "$f"; done
tar czf "$out/results.tgz" docs/results docs/images runs/*_table1/*.log runs/*_table1/*/metrics.jsonl
