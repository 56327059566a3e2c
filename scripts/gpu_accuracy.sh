#!/usr/bin/env bash
# The accuracy sweep of the real model on one GPU, in one device call (after scripts/gpu_assets.sh).
#
#   bash scripts/gpu_assets.sh stage2 && bash scripts/gpu_accuracy.sh [SECONDS] [WORKERS]
#
# Runs WORKERS (default 3) processes of `scripts/sweep.py --gpu` side by side for at most
# SECONDS (default 450); they share the run list of sweep.GPU_PLAN (each run is claimed by one),
# so a 135M model's launch-bound solves overlap on the GPU. Processes share the GPU by time
# slices, so more workers do not help much. Seen on an H200 (2026-12-02): a one-shot run with its
# evaluation took about 140 s beside one other worker and 230 s beside five others, and with
# six workers the GPTQ and SparseGPT runs did not finish within 440 s. Each run spends about
# half its time in the multiple-choice evaluation. Run logs go to /tmp/gqsa-assets/gpu_runs
# (kept while the machine is warm: a next call continues the list, a killed run is redone) and
# come back as $OUT/gpu_runs.tar.gz; unpack it into docs/results/gpu and rebuild the page here with
# `python scripts/sweep.py --gpu --report-only`. Prints one line per finished run last. Give the device call
# a limit at least 90 s above SECONDS (staging and packing): the archives are refreshed every 20 s, so a
# call killed at its limit still returns the runs finished by then.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/gpu_assets.sh env
set +e  # sourcing gpu_assets.sh turned on -e; a grep that finds nothing must not end the script
SECONDS_MAX=${1:-450}
WORKERS=${2:-3}
RUNS=/tmp/gqsa-assets/gpu_runs
OUT=${OUT:-bench_out}
mkdir -p "$RUNS" "$OUT"
# Runs already in the repository are not redone (FRESH=1 redoes everything): their code paths are
# unchanged since (fp16, the baselines, gqsa without act-order give the same tensors).
[ "${FRESH:-0}" = 1 ] || for d in docs/results/gpu/*/; do [ -f "$d/run.json" ] && cp -rn "$d" "$RUNS"/; done
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:$PYTHONPATH"
nvidia-smi -L; date -u
archive() {  # archive NAME TAR_ARGS...: files of $RUNS into $OUT/NAME, replaced whole (tar, then mv)
    local name=$1; shift
    tar -czf "$OUT/$name.part" -C "$RUNS" "$@" 2>/dev/null && mv "$OUT/$name.part" "$OUT/$name"
}
pack() {  # the finished runs and the worker logs
    archive gpu_runs.tar.gz --exclude='worker*.log' --exclude='*.png' .
    archive gpu_worker_logs.tar.gz $(cd "$RUNS" && ls worker*.log 2>/dev/null)
}
pids=()
for w in $(seq 1 "$WORKERS"); do
    timeout "$SECONDS_MAX" python3 scripts/sweep.py --gpu --threads 2 --out "$RUNS" \
        > "$RUNS/worker$w.log" 2>&1 &
    pids+=($!)
    sleep 2  # let each claim its first run before the next starts
done
# Pack every 20 s while the workers run: if the device call's own limit kills this script, the runs
# finished so far still come back (2026-12-02: a call killed 60 s after SECONDS_MAX brought back nothing)
( while sleep 20; do pack; done ) &
packer=$!
wait "${pids[@]}"
kill "$packer" 2>/dev/null; wait "$packer" 2>/dev/null; rm -f "$OUT"/*.part
grep -h -E "^[a-z0-9-]+: [0-9]+ s, bits" "$RUNS"/worker*.log
grep -h -B2 -A12 "Traceback" "$RUNS"/worker*.log | tail -40
pack
echo "=== finished runs ($(ls "$RUNS"/*/run.json 2>/dev/null | wc -l) of the plan)"
python3 - "$RUNS" <<'EOF'
import json, sys, pathlib
for p in sorted(pathlib.Path(sys.argv[1]).glob("*/run.json")):
    r = json.loads(p.read_text())
    v1 = r.get("ppl_v1")
    print(f"{r['run']:<30} {r['bits_per_weight']:6.3f} bits  ppl " + " ".join(f"{t} {v:8.1f}" for t, v in r["ppl"].items())
          + (f"  (v1 {r['bits_per_weight_v1']:.2f} bits: " + " ".join(f"{v:.1f}" for v in v1.values()) + ")" if v1 else ""))
EOF
