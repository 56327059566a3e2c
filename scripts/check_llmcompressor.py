"""Side-by-side check of gqsa's GPTQ / SparseGPT baselines against llm-compressor's modifiers.

Both run on the same data: SmolLM2-135M-Instruct (the offline default model, fp32, CPU),
calibrated on 16 x 512 CoQA windows (:func:`gqsa.data.calibration_windows`, seed 0, the
SmolLM2 tokenizer) and scored by :func:`gqsa.eval.perplexity.perplexity` on the first 32
windows x 512 tokens of two held-out texts (boolq, squad). llm-compressor needs its own
environment (it pins its own torch/transformers), so each side runs alone and writes one
JSON per run; ``--table`` joins them::

    PYTHONPATH=. python scripts/check_llmcompressor.py --only gqsa --out docs/results/llmc
    /work/venv-llmc/bin/python scripts/check_llmcompressor.py --only llmcompressor --out docs/results/llmc
    python scripts/check_llmcompressor.py --table --out docs/results/llmc

llm-compressor's environment (0.14 pins transformers <= 5.17; torch from the local CPU wheel)::

    python3 -m venv /work/venv-llmc && /work/venv-llmc/bin/pip install torch==2.13.0
    /work/venv-llmc/bin/pip install llmcompressor==0.14.0.1 transformers==5.17.0 gguf pyarrow safetensors
    /work/venv-llmc/bin/pip install --no-deps -e .

``--runs`` picks runs by name (see ``GQSA_RUNS`` / ``LLMC_RUNS``); ``reference`` is the dense model.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from datetime import date
from pathlib import Path
from typing import Any

import torch

from gqsa.data import calibration_windows, eval_tokens, load_texts
from gqsa.eval.perplexity import perplexity
from gqsa.loading import load_model, load_tokenizer, resolve_model

TEXTS = ("boolq", "squad")
CALIB = {"text": "coqa", "nsamples": 16, "seqlen": 512, "seed": 0}
EVAL = {"windows": 32, "seqlen": 512}

W3G64 = {"method": "gptq", "bits": 3, "group_size": 64}
# name -> compress_method arguments (gqsa side)
GQSA_RUNS: dict[str, dict[str, Any]] = {
    "reference": {},
    "gptq-w3g64-off": {**W3G64, "act_order": "off", "clip_search": False},  # the old default
    "gptq-w3g64-static": {**W3G64, "act_order": "static", "clip_search": False},
    "gptq-w3g64-group": {**W3G64, "act_order": "group", "clip_search": False},
    "gptq-w3g64-static-clip": {**W3G64, "act_order": "static", "clip_search": True},  # the new default
    "sparsegpt-2of4": {"method": "sparsegpt", "pattern": "2:4"},
}
# name -> GPTQ/SparseGPT modifier arguments (llm-compressor side)
LLMC_RUNS: dict[str, dict[str, Any]] = {
    "llmc-gptq-w3g64-static": {"modifier": "gptq", "bits": 3, "group_size": 64, "actorder": "static"},
    "llmc-gptq-w3g64-off": {"modifier": "gptq", "bits": 3, "group_size": 64, "actorder": None},
    "llmc-gptq-w3g64-static-mse": {"modifier": "gptq", "bits": 3, "group_size": 64, "actorder": "static",
                                   "observer": "mse"},
    "llmc-sparsegpt-2of4": {"modifier": "sparsegpt", "mask_structure": "2:4"},
}


def shared_data() -> tuple[str, torch.Tensor, dict[str, torch.Tensor]]:
    """(model folder, calibration ids [16, 512], {text: eval tokens [1, T]})."""
    src = resolve_model("smollm2")
    tok = load_tokenizer(src)
    calib = calibration_windows(tok, load_texts(CALIB["text"], "calibration"), CALIB["nsamples"], CALIB["seqlen"],
                                CALIB["seed"])
    return src, calib, {t: eval_tokens(tok, load_texts(t, "eval")) for t in TEXTS}


def score(model: torch.nn.Module, tokens: dict[str, torch.Tensor]) -> dict[str, float]:
    return {t: perplexity(model, ids, seqlen=EVAL["seqlen"], max_windows=EVAL["windows"], progress=False)["ppl"]
            for t, ids in tokens.items()}


def run_gqsa(name: str, src: str, calib: torch.Tensor, tokens: dict[str, torch.Tensor]) -> dict[str, Any]:
    from gqsa.baselines import compress_method
    model = load_model(src, torch.device("cpu"), torch.float32)
    if name == "reference":
        return {"impl": "dense", "ppl": score(model, tokens), "seconds": 0.0}
    args = dict(GQSA_RUNS[name])
    report = compress_method(model, args.pop("method"), calib=calib, device="cpu", progress=False, **args)
    return {"impl": "gqsa", "settings": report.settings(), "bits_per_weight": report.bits_per_weight,
            "seconds": report.seconds, "ppl": score(model, tokens)}


def run_llmc(name: str, src: str, calib: torch.Tensor, tokens: dict[str, torch.Tensor]) -> dict[str, Any]:
    """One llm-compressor one-shot on the same windows, scored with the model left in memory
    (its quantized linears fake-quantize in forward; the weights are already on the grid)."""
    import llmcompressor
    from datasets import Dataset
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM
    spec = dict(LLMC_RUNS[name])
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    data = Dataset.from_dict({"input_ids": calib.tolist(), "attention_mask": torch.ones_like(calib).tolist()})
    t = time.perf_counter()
    oneshot(model=model, dataset=data, recipe=_llmc_recipe(spec), num_calibration_samples=calib.shape[0],
            max_seq_length=calib.shape[1], shuffle_calibration_samples=False, pipeline="sequential")
    seconds = time.perf_counter() - t
    return {"impl": f"llmcompressor {llmcompressor.__version__}", "settings": spec, "seconds": seconds,
            "ppl": score(model.eval(), tokens)}


def _llmc_recipe(spec: dict[str, Any]):
    if spec["modifier"] == "sparsegpt":
        from llmcompressor.modifiers.pruning import SparseGPTModifier
        return SparseGPTModifier(sparsity=0.5, mask_structure=spec["mask_structure"], targets=["Linear"],
                                 ignore=["lm_head"])
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from llmcompressor.modifiers.quantization import GPTQModifier
    weights = QuantizationArgs(num_bits=spec["bits"], type="int", symmetric=False, strategy="group",
                               group_size=spec["group_size"], observer=spec.get("observer", "minmax"))
    scheme = QuantizationScheme(targets=["Linear"], weights=weights)
    # actorder on the modifier: a scheme's actorder=None is read as "unset" and becomes static
    return GPTQModifier(config_groups={"group_0": scheme}, ignore=["lm_head"], actorder=spec["actorder"])


def provenance() -> dict[str, Any]:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False,
                                cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        commit = None
    return {"date": date.today().isoformat(), "device": f"cpu ({platform.processor() or platform.machine()}), "
            f"{torch.get_num_threads()} threads", "torch": torch.__version__, "commit": commit,
            "calibration": CALIB, "eval": {**EVAL, "texts": list(TEXTS)}}


def render_table(out: Path) -> str:
    rows = [json.loads(f.read_text()) for f in sorted(out.glob("*.json"))]
    head = "| run | implementation | bits/weight | " + " | ".join(f"ppl {t}" for t in TEXTS) + " | seconds |"
    lines = [head, "|---|---|---:|" + "---:|" * (len(TEXTS) + 1)]
    for r in rows:
        bpw = r.get("bits_per_weight")
        lines.append(f"| {r['run']} | {r['impl']} | {'–' if bpw is None else f'{bpw:.3f}'} | "
                     + " | ".join(f"{r['ppl'][t]:.2f}" for t in TEXTS) + f" | {r['seconds']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["gqsa", "llmcompressor"], help="which side to run")
    ap.add_argument("--runs", nargs="*", default=None, help="run names (default: all of that side)")
    ap.add_argument("--table", action="store_true", help="print the table of the JSON files in --out")
    ap.add_argument("--out", default="docs/results/llmc", help="folder of the per-run JSON files")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on a shared 2-core machine one is faster than two)")
    ap.add_argument("--suffix", default="", help="appended to the run names written (e.g. -before)")
    a = ap.parse_args()
    out = Path(a.out)
    torch.set_num_threads(a.threads)
    if a.only:
        out.mkdir(parents=True, exist_ok=True)
        runs, run = (GQSA_RUNS, run_gqsa) if a.only == "gqsa" else (LLMC_RUNS, run_llmc)
        src, calib, tokens = shared_data()
        for name in a.runs or list(runs):
            result = {"run": name + a.suffix, **run(name, src, calib, tokens), **provenance()}
            print(json.dumps({k: result[k] for k in ("run", "ppl", "seconds")}), flush=True)
            (out / f"{name}{a.suffix}.json").write_text(json.dumps(result, indent=2))
    if a.table:
        print(render_table(out))


if __name__ == "__main__":
    main()
