#!/usr/bin/env bash
# Protocol Q's (or P's) accuracy table on one GPU: every (method, seed) job in parallel worker processes.
# Usage on a GPU machine, from the repo root, with the CIFAR zip at $ZIP (default .dev/cifar10-jpg.zip):
#   OUT=/tmp/out WORKERS=12 bash benchmarks/gpu_run.sh [extra protocol_q.py args]
#   PROTOCOL=p LIMIT=86400 OUT=/tmp/out WORKERS=5 bash benchmarks/gpu_run.sh --threads 3   # LIMIT: seconds
set -u
ZIP=${ZIP:-.dev/cifar10-jpg.zip}
OUT=${OUT:-benchmarks/results}
WORKERS=${WORKERS:-12}
LIMIT=${LIMIT:-500}
PROTOCOL=${PROTOCOL:-q}
export PYTHONUNBUFFERED=1
if ! python3 -c "import ab_plugin.policies" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>/dev/null
  python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target /tmp/site . || exit 1
  export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, ab_plugin; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
timeout "$LIMIT" python3 "benchmarks/protocol_$PROTOCOL.py" --data "$ZIP" --device cuda --workers "$WORKERS" \
  --threads 1 --out "$OUT/${PROTOCOL}_gpu.jsonl" "$@"
echo "exit $?"
