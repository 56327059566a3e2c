"""The lean stored format (version 3) at the same masks and codes: re-encode every layer of a gqsa
folder (gqsa.format_v2.from_v1, then to_v1) and compare stored bits per weight and perplexity.

    python scripts/format_v2_check.py FOLDER [--windows 16] [--out result.json]

Codes, masks and zero points are carried exactly; only the scales move onto the lean format's 8-bit
logarithmic grids, so this measures the format alone on a version-1 folder (the solver has not seen
the grid); on a lean folder the second encoding shows what a save after loading changes.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from gqsa.data import eval_tokens, load_texts
from gqsa.eval.perplexity import perplexity
from gqsa.format_v2 import ROW_SPAN_OCTAVES, SPAN_OCTAVES
from gqsa.hf import load
from gqsa.layer import roundtrip_model
from gqsa.loading import load_tokenizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder")
    ap.add_argument("--texts", nargs="*", default=["boolq", "squad"])
    ap.add_argument("--windows", type=int, default=16)
    ap.add_argument("--seqlen", type=int, default=1024)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_num_threads(2)
    tok = load_tokenizer(a.folder)
    streams = {t: eval_tokens(tok, load_texts(t, "eval")) for t in a.texts}
    result = {"folder": a.folder, "span_octaves": SPAN_OCTAVES, "row_span_octaves": ROW_SPAN_OCTAVES, "windows": a.windows, "seqlen": a.seqlen}
    model = load(a.folder, dtype=torch.float32)
    ppl = lambda: {t: perplexity(model, s, seqlen=a.seqlen, max_windows=a.windows, progress=False)["ppl"]
                   for t, s in streams.items()}
    t0 = time.perf_counter()
    result["v1_ppl"] = ppl()
    result.update(roundtrip_model(model))
    result["stored_ppl"] = ppl()
    result["seconds"] = time.perf_counter() - t0
    print(json.dumps(result, indent=1))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
