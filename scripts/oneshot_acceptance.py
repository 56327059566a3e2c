"""Issue-2 acceptance on SmolLM2-135M-Instruct (CPU): reference vs gqsa one-shot vs the naive
magnitude group pruning + round-to-nearest, at W4 S50 G16 and W4 S20 G16 (both mask modes).

Usage: python scripts/oneshot_acceptance.py [--windows 40] [--out docs/results/oneshot.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import date
from pathlib import Path

import torch

from gqsa.assets import smollm2_path
from gqsa.config import GQSAConfig
from gqsa.data import (
    DEFAULT_CALIBRATION_TEXT,
    calibration_windows,
    eval_tokens,
    load_texts,
)
from gqsa.eval.perplexity import perplexity
from gqsa.loading import load_model, load_tokenizer
from gqsa.pipeline import run_blocks
from gqsa.size import model_stats
from gqsa.solver.solve import solve_layer, solve_layer_naive


def smollm2_data(nsamples: int, seqlen: int):
    """(model folder, coqa calibration windows [nsamples, seqlen] (seed 0), boolq eval tokens) of the
    offline SmolLM2 evaluation shared by the CPU accuracy scripts; sets 2 torch threads."""
    torch.set_num_threads(2)
    src = smollm2_path()
    tok = load_tokenizer(str(src))
    calib = calibration_windows(tok, load_texts(DEFAULT_CALIBRATION_TEXT, "calibration"), nsamples, seqlen, seed=0)
    return src, calib, eval_tokens(tok, load_texts("boolq"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--windows", type=int, default=40)
    ap.add_argument("--nsamples", type=int, default=64)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--out", default="docs/results/oneshot.json")
    a = ap.parse_args()
    src, calib, tokens = smollm2_data(a.nsamples, a.seqlen)
    cpu = torch.device("cpu")
    rows = [{"method": "reference (dequantized Q4_1, fp32)", "bits_per_weight": 16.0,
             "ppl": perplexity(load_model(str(src), cpu, torch.float32), tokens, 1024, max_windows=a.windows)["ppl"]}]
    variants = (("gqsa one-shot (static mask)", "static", solve_layer),
                ("gqsa one-shot (adaptive mask)", "adaptive", solve_layer),
                ("magnitude groups + RTN", "static", solve_layer_naive))
    for sparsity in (0.5, 0.2):
        for label, mask, solve in variants:
            model = load_model(str(src), cpu, torch.float32)
            t = time.perf_counter()
            run_blocks(model, GQSAConfig(sparsity=sparsity, bits=4, group_size=16, mask=mask), calib, solve=solve)
            secs = time.perf_counter() - t
            ppl = perplexity(model, tokens, 1024, max_windows=a.windows)["ppl"]
            rows.append({"method": f"{label} W4 S{int(sparsity * 100)} G16", "ppl": ppl, "seconds": secs,
                         "bits_per_weight": model_stats(model)["bits_per_weight"]})
            print(rows[-1], flush=True)
    result = {"model": "SmolLM2-135M-Instruct", "eval": f"boolq, first {a.windows} windows of 1024 tokens",
              "calibration": f"coqa, {a.nsamples} x {a.seqlen} tokens, seed 0", "device": f"CPU ({platform.processor() or platform.machine()}, 2 cores)",
              "date": str(date.today()), "command": "python scripts/oneshot_acceptance.py", "rows": rows}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))
    for r in rows:
        print(f"{r['method']:<48} ppl {r['ppl']:8.2f}  bpw {r['bits_per_weight']:5.2f}  {r.get('seconds', 0):6.0f} s")


if __name__ == "__main__":
    main()
