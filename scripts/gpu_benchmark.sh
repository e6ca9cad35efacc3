#!/usr/bin/env bash
# The GPU measurements in the README, in one command for a lent GPU machine that has torch, Lightning and
# TensorBoard but no Hydra and no internet (see the README's "Benchmarks"). Expects, in the checkout:
#   .whl/        hydra-core, omegaconf and antlr4-python3-runtime wheels (pip wheel --no-deps -w .whl ...)
#   .mnist_gz/   the four MNIST files, gzipped
# Writes its logs and JSON to $OUT (default ./gpu_out).
#   bash scripts/gpu_benchmark.sh [reps]
set -uo pipefail
OUT=${OUT:-gpu_out}
REPS=${1:-2}
mkdir -p "$OUT"
if ! python3 -c "import hydra" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
mkdir -p /tmp/mnist/MNIST/raw
for f in .mnist_gz/*.gz; do gunzip -c "$f" > "/tmp/mnist/MNIST/raw/$(basename "$f" .gz)"; done
export MNIST_ROOT=/tmp/mnist PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/env.txt"
python3 -c "import torch, lightning, hydra, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'lightning', lightning.__version__, 'hydra', hydra.__version__, 'cpus', __import__('os').cpu_count())" | tee -a "$OUT/env.txt"

python3 -m pytest -q -p no:cacheprovider -m gpu tests/ 2>&1 | tail -15 | tee "$OUT/gpu_tests.txt"
python3 scripts/benchmark.py --device cuda --reps "$REPS" --json "$OUT/standard.json" -- fast=false 2>&1 | tee "$OUT/standard.txt"
python3 scripts/benchmark.py --device cuda --reps "$REPS" --json "$OUT/fast.json" 2>&1 | tee "$OUT/fast.txt"
python3 -m mnist_lit.train experiment=fast_gpu trainer=gpu data.root=/tmp/mnist hydra.run.dir=/tmp/fast_gpu 2>&1 | tail -4
python3 -c "import json; m = json.load(open('/tmp/fast_gpu/metrics.json')); print('fast_gpu', {k: m[k] for k in ('fit_seconds', 'steps', 'test_acc', 'device')}, m['metrics'].get('val/acc'))" | tee "$OUT/fast_gpu.txt"
