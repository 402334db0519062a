#!/usr/bin/env bash
# GPU throughput check for a machine with one CUDA GPU (a few minutes; the script stops itself at its time limit).
# Measures r50 training samples/s at batch 256 (bf16 + channels_last vs fp32) and inference faces/s,
# prints a table and writes bench/results/gpu_check.json. Unattended: no prompts, no downloads.
#   bash bench/gpu_check.sh                 # uses python3 (a CUDA build of torch) with src/ on the path
#   PYTHON=.venv/bin/python bash bench/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: torch sees no CUDA GPU')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 480 "$PY" bench/_gpu_check.py "$@"
