#!/usr/bin/env bash
# Protocol Q's (or P's) accuracy table on one GPU: every (method, seed) job in parallel worker processes.
# Usage on a GPU machine, from the repo root, with the CIFAR zip at $ZIP (default .dev/cifar10-q.zip, made here by
# `python benchmarks/subset_zip.py ../shared/data/cifar10-jpg.zip .dev/cifar10-q.zip` to fit the device's 64 MiB)
# and, when the machine lacks them, the dependencies' wheels in .whl/ (kornia, kornia_rs, higher, optuna, alembic,
# SQLAlchemy, Mako, colorlog, timm, filelock, click, rich; cp312 manylinux builds):
#   OUT=/tmp/out WORKERS=12 bash benchmarks/gpu_run.sh [extra protocol_q.py args]
#   ZIP=.dev/cifar10-p.zip PROTOCOL=p LIMIT=86400 OUT=/tmp/out WORKERS=5 bash benchmarks/gpu_run.sh --threads 3
#   (LIMIT: seconds; protocol P reads 5000 images per class: subset_zip.py --n-max 5000)
set -u
ZIP=${ZIP:-.dev/cifar10-q.zip}
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
