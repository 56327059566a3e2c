#!/usr/bin/env bash
# BQPO and E2E-OQP on the real model in each dtype, in one device call (after scripts/gpu_assets.sh):
# one-shot, +BQPO, +BQPO+E2E-OQP of SmolLM2 with the model in float16, bfloat16 and float32, three
# processes side by side on the GPU (scripts/stages.py; the library's defaults for every stage option).
#
#   bash scripts/gpu_assets.sh stage2 >/dev/null 2>&1 && bash scripts/gpu_stages.sh [SECONDS] [NSAMPLES] [ARGS...]
#
# NSAMPLES (default 64) calibration windows of 2,048 tokens; E2E-OQP trains on as many windows of
# the same length (its own seed); perplexity on 32 x 1,024 tokens of boolq. ARGS go to stages.py
# (default: W4 S50 G16, the CLI's defaults). Writes $OUT/stages-<dtype>.json and .md and .log;
# prints each table last. Give the device call a limit at least 60 s above SECONDS. DTYPES (default
# "float16 bfloat16 float32") picks the dtypes.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/gpu_assets.sh env
set +e
SECONDS_MAX=${1:-420}
NSAMPLES=${2:-64}
shift 2 2>/dev/null
OUT=${OUT:-bench_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:$PYTHONPATH"
nvidia-smi -L; date -u
DTYPES=${DTYPES:-float16 bfloat16 float32}
pids=()
for dt in $DTYPES; do
    timeout "$SECONDS_MAX" python3 scripts/stages.py --device cuda --dtype "$dt" --nsamples "$NSAMPLES" \
        --seqlen 2048 --e2e-windows "$NSAMPLES" --eval-windows 32 --threads 2 --tag "h200-$dt" \
        --results "$OUT" --md "$OUT/stages-$dt.md" "$@" > "$OUT/stages-$dt.log" 2>&1 &
    pids+=($!)
done
wait "${pids[@]}"
for dt in $DTYPES; do
    echo "=== $dt"; grep -E "ppl|Traceback|Error" "$OUT/stages-$dt.log" | tail -8
done
