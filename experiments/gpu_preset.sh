#!/usr/bin/env bash
# The one prepared GPU run of `accel bench --preset gpu` (issue #22): full-size random-weight configs
# (LlamaGen-B/L/XL, MAR-B/L, VAR-d16/d30) on one CUDA device, bf16. Estimated ~2-3 min on an H200
# (accel.harness.costs.estimated_seconds); the timeout leaves room to rerun within a 15-minute lease.
#
#   bash experiments/gpu_preset.sh [RESULTS_DIR]        # default results/gpu
#
# Writes RESULTS_DIR/{bench.jsonl, summary.md, command.txt, device.txt, log.txt}. A CUDA smoke run of the
# tiny configs comes first (seconds), so a CUDA-only error shows before the full preset starts.
set -euo pipefail
RESULTS=${1:-results/gpu}
PY=${PYTHON:-python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$RESULTS"
rm -f "$RESULTS/bench.jsonl"
{
  "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0)); print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
} > "$RESULTS/device.txt"
cat "$RESULTS/device.txt"
"$PY" -m accel bench --preset gpu --device cuda --tiny --out "$RESULTS/smoke" > "$RESULTS/smoke.log" 2>&1 \
  || { echo "tiny CUDA smoke run failed:"; tail -40 "$RESULTS/smoke.log"; exit 1; }
CMD=("$PY" -m accel bench --preset gpu --device cuda --out "$RESULTS")
echo "${CMD[*]}" > "$RESULTS/command.txt"
timeout "${TIMEOUT:-480}" "${CMD[@]}" 2>&1 | tee "$RESULTS/log.txt"
