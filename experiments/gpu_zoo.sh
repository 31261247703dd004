#!/usr/bin/env bash
# The zoo methods of the open issues timed on a lent GPU (speed only, N = 0), each group against its baseline in
# the same run: exact SD (γ 3 and γ measured on the device, gamma="auto") and deterministic LANTERN with the
# CFG-trained EAGLE drafter on the dynamic tree, its node budget pinned (dyn8) and measured on the device (dynauto)
# (issue #18, batch 1 and 8),
# CCA guidance-free LlamaGen and VAR against CFG (#21, batch 1 and 64), and CSpD with the aligned draft, released
# per-window loop under T = 42 and the exact rule, gamma 8 and 16, with its draft-free control (#20, batch 1 and 16;
# experiments/cspd.py, against the one-token target).
# The second prepared GPU run, after experiments/gpu_preset.sh (full-size shapes); each stage has its own time cap,
# so one slow stage cannot take the others' time.
#
#   bash experiments/gpu_zoo.sh [RESULTS_DIR]                      # default results/gpu/zoo, --device cuda
#   DEVICE=cpu REPEATS=1 CSPD_BATCHES=1 bash experiments/gpu_zoo.sh /tmp/zoo   # the CPU dry run (~5 min)
#
# Writes RESULTS_DIR/{bench.jsonl, summary.md} (appended per stage), RESULTS_DIR/cspd/ and one log per stage.
set -uo pipefail
RESULTS=${1:-results/gpu/zoo}
PY=${PYTHON:-python}
DEVICE=${DEVICE:-cuda}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$RESULTS"
failed=0
stage() {  # NAME LIMIT_S COMMAND...
  local name=$1 limit=$2
  shift 2
  echo "== $name (cap ${limit} s)"
  timeout "$limit" "$@" > "$RESULTS/$name.log" 2>&1
  local rc=$?
  tail -n 12 "$RESULTS/$name.log"
  if [ "$rc" -ne 0 ]; then echo "$name: exit $rc (124 = the cap)"; failed=1; fi
}
BENCH=("$PY" -m accel bench --device "$DEVICE" --n-images 0 --memory none --repeats "${REPEATS:-5}" --out "$RESULTS")
stage lantern "${LANTERN_CAP:-200}" "${BENCH[@]}" --batch-size 1 --batch-size 8 \
  --method sd-eagle-cfg --method sd-eagle-cfg-auto --method lantern-det-eagle-cfg-dyn --method lantern-det-eagle-cfg-dynauto
stage cca "${CCA_CAP:-150}" "${BENCH[@]}" --batch-size 1 --batch-size 64 --method llamagen-cca --method var-cca
stage cspd "${CSPD_CAP:-240}" "$PY" experiments/cspd.py --device "$DEVICE" --threads "${THREADS:-1}" --drafts aligned \
  --n-images 0 --batch-sizes ${CSPD_BATCHES:-1 16} --repeats "${REPEATS:-5}" --out "$RESULTS/cspd" \
  --methods target-parallel-g8 target-parallel-g16 cspd-released-T42-aligned-g8 cspd-released-T42-aligned-g16 \
  cspd-released-exact-aligned-g16
exit "$failed"
