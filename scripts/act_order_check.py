"""gqsa one-shot with and without act-order on SmolLM2, on the CPU protocol of docs/results.md.

    python scripts/act_order_check.py BITS SPARSITY ACT_ORDER(0|1) [--out FILE]

16 x 512 calibration tokens of CoQA (seed 0), G = 16, the layers put through format v2 as a
saved folder would be (gqsa.layer.roundtrip_model), then perplexity on the first 4 windows of
1,024 tokens of boolq and squad. Prints one JSON line (and writes it to --out).
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
    ap.add_argument("bits", type=int)
    ap.add_argument("sparsity", type=float)
    ap.add_argument("act_order", type=int, choices=[0, 1])
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_num_threads(1)
    path = smollm2_path()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    calib = calibration_windows(tok, load_texts(DEFAULT_CALIBRATION_TEXT, "calibration"), 16, 512, seed=0)
    t0 = time.perf_counter()
    compress_method(model, "gqsa", bits=a.bits, group_size=16, sparsity=a.sparsity, calib=calib, progress=False,
                    act_order=bool(a.act_order))
    seconds = time.perf_counter() - t0
    sizes = roundtrip_model(model)
    ppl = {t: perplexity(model, eval_tokens(tok, load_texts(t, "eval"))[:, :4096], seqlen=1024, progress=False)["ppl"]
           for t in ("boolq", "squad")}
    out = {"bits": a.bits, "sparsity": a.sparsity, "act_order": bool(a.act_order), "group_size": 16,
           "v2_bits_per_weight": sizes["v2_bits_per_weight"], "ppl": ppl, "compress_seconds": seconds,
           "calibration": "16 x 512 coqa, seed 0", "windows": "4 x 1024", "torch": torch.__version__}
    print(json.dumps(out))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
