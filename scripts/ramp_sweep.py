"""Sparsity over depth on SmolLM2-135M-Instruct (CPU): gqsa one-shot W4 G16 at a mean sparsity S,
with ``sparsity_ramp`` r (block i of B at S * (1 + r * (2i/(B-1) - 1)), the same mean and size).

Usage: python scripts/ramp_sweep.py [--sparsities 0.5 0.2] [--ramps 0 0.2 0.3 0.4 0.5] [--windows 4]
       [--out docs/results/ramp.json]
Same data as scripts/oneshot_acceptance.py: coqa calibration (seed 0), boolq perplexity over the
first windows of 1024 tokens.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import date
from pathlib import Path

import torch
from oneshot_acceptance import (
    smollm2_data,  # scripts/ is on sys.path when run as a script
)

from gqsa.compression import compress
from gqsa.config import GQSAConfig
from gqsa.eval.perplexity import perplexity
from gqsa.loading import load_model
from gqsa.size import model_stats


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sparsities", nargs="*", type=float, default=[0.5, 0.2])
    ap.add_argument("--ramps", nargs="*", type=float, default=[0.0, 0.2, 0.3, 0.4, 0.5])
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--nsamples", type=int, default=16)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--out", default="docs/results/ramp.json")
    a = ap.parse_args()
    src, calib, tokens = smollm2_data(a.nsamples, a.seqlen)
    cpu = torch.device("cpu")
    rows = []
    for sparsity in a.sparsities:
        for ramp in a.ramps:
            model = load_model(str(src), cpu, torch.float32)
            t = time.perf_counter()
            compress(model, GQSAConfig(sparsity=sparsity, sparsity_ramp=ramp), calib, progress=False)
            secs = time.perf_counter() - t
            rows.append({"sparsity": sparsity, "ramp": ramp, "seconds": secs,
                         "ppl": perplexity(model, tokens, 1024, max_windows=a.windows)["ppl"],
                         "bits_per_weight": model_stats(model)["bits_per_weight"]})
            print(rows[-1], flush=True)
    result = {"model": "SmolLM2-135M-Instruct", "eval": f"boolq, first {a.windows} windows of 1024 tokens",
              "calibration": f"coqa, {a.nsamples} x {a.seqlen} tokens, seed 0",
              "device": f"CPU ({platform.processor() or platform.machine()}, 2 cores)", "date": str(date.today()),
              "command": "python scripts/ramp_sweep.py " + " ".join(
                  f"--{k} {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in vars(a).items()),
              "rows": rows}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))
    for r in rows:
        print(f"S{r['sparsity']:.2f} ramp {r['ramp']:.2f}: ppl {r['ppl']:10.2f}  bpw {r['bits_per_weight']:5.2f}  "
              f"{r['seconds']:5.0f} s")


if __name__ == "__main__":
    main()
