#!/usr/bin/env bash
# The GPU checks and measurements, in one run on a machine with a CUDA device:
#   1. tests/test_cuda.py (skipped without CUDA): the models, guides, lookups and pruning on the
#      GPU give the CPU's results;
#   2. python -m benchmarks.layers --device cuda: the SVI step of the tensorized layers against dense
#      nn.Linear, and the lookups' peak GPU memory up to 1e12 rows;
#   3. python -m benchmarks.dlrm --device cuda: the full-size DLRM trained on the GPU (samples/s, peak
#      GPU memory, accuracy), the log generated on the CPU.
# Each part runs under its own time limit, so that one that hangs leaves the others' results.
#
#   bash benchmarks/gpu.sh OUTDIR [DLRM_SAMPLES]
set -uo pipefail
out=${1:?usage: bash benchmarks/gpu.sh OUTDIR [DLRM_SAMPLES]}
samples=${2:-2000000}
here=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
export PYTHONPATH=$here${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
cd "$here"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch, pyro; print('torch', torch.__version__, 'pyro', pyro.__version__)" | tee -a "$out/gpu.txt"
timeout 100 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$out/test_cuda.log"
timeout 200 python3 -m benchmarks.layers --device cuda --threads 8 --out "$out" 2>&1 | tee "$out/layers.log"
timeout 240 python3 -m benchmarks.dlrm --device cuda --threads 8 --samples "$samples" --id-order frequency \
    --no-progress --out "$out" 2>&1 | tee "$out/dlrm.log"
