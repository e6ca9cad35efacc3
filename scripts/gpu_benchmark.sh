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

# the GPU tests (the other test files need packages the GPU machine lacks)
if ! timeout 200 python3 -m pytest -q -p no:cacheprovider -n 0 -m gpu $(grep -l "mark.gpu" tests/*.py) > "$OUT/gpu_tests.txt" 2>&1; then
  grep -v "^frame #" "$OUT/gpu_tests.txt" | tail -80
  exit 1  # the numbers below would be of broken code
fi
tail -3 "$OUT/gpu_tests.txt"
# one run's phases: its log lines' times against the command's start
echo "start $(date +%T.%N)" > "$OUT/phases.txt"
python3 -m mnist_lit.train data.root=/tmp/mnist hydra.run.dir=/tmp/phases 2>&1 | grep -E "^\[" | cut -c1-160 >> "$OUT/phases.txt"
echo "end $(date +%T.%N)" >> "$OUT/phases.txt"
cat "$OUT/phases.txt"
# what importing takes there, by cumulative time (the modules a run has imported when it starts fitting)
python3 -X importtime -c "import mnist_lit.train, mnist_lit.config.building, mnist_lit.reporting.callbacks, mnist_lit.runs.checkpoint, mnist_lit.data, mnist_lit.speed.grouped, mnist_lit.module, mnist_lit.runs.reliability, mnist_lit.runs.record; import lightning.pytorch" 2>&1 | sort -t'|' -k2 -n -r | head -40 > "$OUT/imports.txt"
python3 scripts/benchmark.py --device cuda --reps "$REPS" --root /tmp/mnist --json "$OUT/fast.json" 2>&1 | tee "$OUT/fast.txt"
python3 -m mnist_lit.train experiment=fast_gpu data.root=/tmp/mnist hydra.run.dir=/tmp/fast_gpu 2>&1 | tail -2
python3 -c "import json; m = json.load(open('/tmp/fast_gpu/metrics.json')); print('fast_gpu', {k: m[k] for k in ('fit_seconds', 'steps', 'test_acc', 'device')}, m['metrics'].get('val/acc'))" | tee "$OUT/fast_gpu.txt"
