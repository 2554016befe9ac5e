#!/usr/bin/env bash
# The one device command (run from the repository root on the lent GPU machine; see gpu_train.py):
#   device run: command "bash benchmarks/gpu_train.sh", carry [".gpu_train"], timeout_s 600
# Links the source folders as the `mvclam` package (nothing is pip-installed there), trains for
# MINUTES (default 7) and leaves the trainable tensors, metrics and a summary in $OUT.
set -euo pipefail
export PYTHONUNBUFFERED=1
pkg=$(mktemp -d)/pkg && mkdir -p "$pkg/mvclam" && touch "$pkg/mvclam/__init__.py"
for d in engine jobs kernels configs checkpoints; do ln -s "$PWD/$d" "$pkg/mvclam/$d"; done
export PYTHONPATH="$pkg${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv || true
python benchmarks/gpu_train.py run --bundle .gpu_train --out "${OUT:?}" --minutes "${MINUTES:-7}" 2>&1 | tee "$OUT/log.txt"
