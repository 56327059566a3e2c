#!/usr/bin/env bash
# One device call: GPU kernel tests (modes kernels and engine: then the 1,040 random cases), kernel
# benchmark, decode benchmark.
#
# Usage (from the repository root, on a CUDA machine):
#   scripts/gpu_all.sh [full|quick|kernels|engine|tune|stages|scale|stream]
#     full   tests + kernel bench (all models; beyond LLaMA-2-7B only batch 1/16 at S50)
#            + decode bench (512-token prompt, 256 new tokens, batch 1 and 8, each variant as a
#            CUDA graph of the eager step and with torch.compile'd blocks)     ~8 min on an H100
#     quick  tests + kernel bench on LLaMA-2-7B shapes, batch 1/8/16 + decode bench with 64 tokens
#     tune   tests + the launch-parameter sweep (gqsa.bench.tune)
#     stages tests + one-shot/BQPO/E2E-OQP time and memory (scripts/stages_gpu.py)
#     scale  no tests: the streamed 70B-shaped compression (2 blocks, gqsa.bench.stream) and the
#            70B-shaped decode on one GPU (FP16 vs gqsa W4 S50, batch 1 and 8)       ~8 min on an H200
#     stream no tests: only the streamed 70B-shaped compression                      ~3 min on an H200
#     kernels tests + random cases + kernel bench on LLaMA-2-7B shapes, batch 1/8/16 (no decode bench)
#     engine tests + random cases + the small-batch kernel's tile sweep (batch 8-32) ~9 min on an H200
# Writes $OUT/run.log, tune.json, kernels.json, kernels.png, decode.json ($OUT defaults to
# ./bench_out) and prints the summary tables last.
set -uo pipefail
MODE=${1:-full}
OUT=${OUT:-bench_out}
mkdir -p "$OUT"
LOG="$OUT/run.log"
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

step() {  # step NAME TIMEOUT_S CMD...: run with a time limit, log, never abort the whole script
    local name=$1 limit=$2; shift 2
    echo "=== $name: $*" | tee -a "$LOG"
    local t0=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    echo "=== $name rc=$rc in $((SECONDS - t0)) s" | tee -a "$LOG"
}

{ date -u; nvidia-smi -L; python3 -c "import torch, triton, transformers; print('torch', torch.__version__,
'triton', triton.__version__, 'transformers', transformers.__version__)"; echo 'code: the working tree this call carried (name its commit in docs)'
} 2>&1 | tee -a "$LOG"

case "$MODE" in  # the modes that measure compression skip the tests
  scale|stream) ;;
  *) step tests 200 python3 -m pytest tests/kernels tests/test_cli_gpu.py tests/solver/test_sweep_gpu.py \
       tests/solver/test_hessian_gpu.py -q -rfEs -p no:cacheprovider -n 8 --ignore tests/kernels/test_random_gpu.py ;;
esac
case "$MODE" in  # the kernel modes add the 1,040 random cases, in their own step so that a slow or failing
  kernels|engine)  # chunk cannot hide the other tests' summary
    step random_cases 200 python3 -m pytest tests/kernels/test_random_gpu.py -q -rfEs -p no:cacheprovider -n 8 ;;
esac
case "$MODE" in
  tune)
    step tune 300 python3 -m gqsa.bench.tune --out "$OUT" ;;
  quick)
    step kernels 170 python3 -m gqsa.bench.kernels --out "$OUT" --models llama2-7b --batches 1 8 16
    step decode 200 python3 -m gqsa.bench.decode --out "$OUT" --tokens 64 ;;
  full)
    step kernels 330 python3 -m gqsa.bench.kernels --out "$OUT" --trim --batches 1 2 4 8 16 32 40 128 \
      --formats 2:16 3:16 8:16 4:8 4:32 4:64 4:128
    step decode 240 python3 -m gqsa.bench.decode --out "$OUT" ;;
  kernels)
    step kernels 170 python3 -m gqsa.bench.kernels --out "$OUT" --models llama2-7b --batches 1 8 16 ;;
  engine)
    step smallm_tiles 150 python3 -m gqsa.bench.tune --out "$OUT" --smallm-tiles ;;
  stream)
    step stream 230 python3 -m gqsa.bench.stream --blocks 2 --out "$OUT" ;;
  scale)
    step stream 230 python3 -m gqsa.bench.stream --blocks 2 --out "$OUT"
    step decode70b 300 python3 -m gqsa.bench.decode --out "$OUT" --shape 70b --sparsities 0.5 --tokens 64 \
      --modes graph --batches 1 8 ;;
  stages)
    step stages 300 python3 scripts/stages_gpu.py --out "$OUT/stages_gpu.json" ;;
  *) echo "unknown mode $MODE (full|quick|kernels|engine|tune|stages|scale|stream)"; exit 2 ;;
esac

echo; echo "=============== summary ($MODE) ==============="
grep -E "passed|failed|error" "$LOG" | grep -E "^[0-9]+ (passed|failed)|^=+ .*(passed|failed)" | tail -2
grep -E "^FAILED|^ERROR" "$LOG" | head -20  # which tests, not just how many
python3 -m gqsa.bench.report "$OUT" 2>&1 | tail -60
