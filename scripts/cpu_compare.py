"""One compression of SmolLM2 on the CPU protocol of docs/results.md, scored on two texts.

    python scripts/cpu_compare.py gqsa BITS SPARSITY [--group-size G] [--act-order [--act-order-grids compensated]]
        [--allocation owl] [--bits-per-weight B (instead of SPARSITY)] [--seed S] [--out FILE]
    python scripts/cpu_compare.py sparsegpt-2of4 BITS [--seed S] [--out FILE]     # 2:4 + W(BITS) g128
    python scripts/cpu_compare.py gptq BITS [--group-size g] [--scale-format log8] [--seed S] [--out FILE]
        # W(BITS) g128

16 x 512 calibration tokens of CoQA (seed S, default 0); gqsa at G = 16 (or --group-size) with its layers put
through format v2 as a saved folder would be (gqsa.layer.roundtrip_model); then perplexity on
the first 4 windows of 1,024 tokens of boolq and squad. Prints one JSON line (and writes it to
--out). For side-by-side checks too slow for the sweep's whole plan on 2 cores (about 4 minutes
a run).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from gqsa.assets import smollm2_path
from gqsa.baselines import compress_method
from gqsa.data import DEFAULT_CALIBRATION_TEXT, calibration_windows, eval_tokens, load_texts
from gqsa.eval.perplexity import perplexity
from gqsa.layer import roundtrip_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("method", choices=["gqsa", "sparsegpt-2of4", "gptq"])
    ap.add_argument("bits", type=int)
    ap.add_argument("sparsity", type=float, nargs="?", default=None, help="gqsa: the sparsity")
    ap.add_argument("--act-order", action="store_true", help="gqsa: act-order (static groups)")
    ap.add_argument("--group-size", type=int, default=None,
                    help="gqsa: G, the pruning and quantization group (default 16); gptq: g (default 128)")
    ap.add_argument("--act-order-grids", default="original", choices=["compensated", "original"],
                    help="gqsa with --act-order: where the static grids come from (original: the runs before "
                         "2026-12-02 evening)")
    ap.add_argument("--allocation", default="uniform", choices=["uniform", "owl", "owl-linear"], help="gqsa")
    ap.add_argument("--allocation-strength", type=float, default=0.08, help="gqsa: OWL's lambda")
    ap.add_argument("--bits-per-weight", type=float, default=None, help="gqsa: a size budget instead of SPARSITY")
    ap.add_argument("--balance", default="row", choices=["row", "layer"],
                    help="gqsa: pruned groups counted per row or per layer")
    ap.add_argument("--scale-format", default="fp16", choices=["fp16", "log8"], help="gptq: how its scales are stored")
    ap.add_argument("--seed", type=int, default=0, help="calibration windows' seed")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_num_threads(1)
    path = smollm2_path()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    calib = calibration_windows(tok, load_texts(DEFAULT_CALIBRATION_TEXT, "calibration"), 16, 512, seed=a.seed)
    t0 = time.perf_counter()
    if a.method == "gqsa":
        report = compress_method(model, "gqsa", bits=a.bits, group_size=a.group_size or 16, sparsity=a.sparsity, calib=calib,
                                 progress=False, act_order=a.act_order, act_order_grids=a.act_order_grids,
                                 allocation=a.allocation, bits_per_weight=a.bits_per_weight, balance=a.balance,
                                 allocation_strength=a.allocation_strength)
    elif a.method == "gptq":  # its best settings: static act-order and clip search (the defaults)
        report = compress_method(model, "gptq", bits=a.bits, group_size=a.group_size or 128, calib=calib,
                                 progress=False, scale_format=a.scale_format)
    else:
        report = compress_method(model, "sparsegpt", pattern="2:4", bits=a.bits, group_size=128, calib=calib,
                                 progress=False)
    seconds = time.perf_counter() - t0
    bits = roundtrip_model(model)["stored_bits_per_weight"] if a.method == "gqsa" else report.bits_per_weight
    ppl = {t: perplexity(model, eval_tokens(tok, load_texts(t, "eval"))[:, :4096], seqlen=1024, progress=False)["ppl"]
           for t in ("boolq", "squad")}
    out = {"method": a.method, "settings": report.settings(),
           "bits_per_weight": bits, "ppl": ppl, "compress_seconds": seconds,
           "calibration": f"16 x 512 coqa, seed {a.seed}", "windows": "4 x 1024", "torch": torch.__version__}
    print(json.dumps(out))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
