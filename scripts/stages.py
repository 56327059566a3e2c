"""Perplexity, time and peak memory of each GQSA stage on SmolLM2-135M-Instruct (CPU or GPU, any dtype).

Stages, for each sparsity: the dense reference ("FP16": the float16 folder, computed in
float32), one-shot compression, one-shot + BQPO (block-wise, full-precision targets), and
one-shot + BQPO + E2E-OQP (scales trained end to end). Each compressed stage starts from a
fresh copy of the dense model, except E2E, which continues the BQPO model. Writes
``docs/results/stages-<tag>.json`` and a markdown table ``docs/stages.md``.

    python scripts/stages.py --sparsity 0.5 --tag w4s50g16
    python scripts/stages.py --device cuda --dtype float16 --nsamples 128 --seqlen 2048 ...  # on a GPU

The model is loaded in ``--dtype`` (the CLI's default on a GPU is float16) and every stage runs
with the library's own defaults for whatever option is not given (BQPO and E2E-OQP in mixed
precision on CUDA). Peak memory is the process's resident set size (sampled every 20 ms) during
the stage, which includes the model and everything else the process holds; on CUDA also the
peak GPU memory allocated.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import json
import platform
import sys
import threading
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from gqsa.assets import smollm2_path
from gqsa.compression import compress
from gqsa.config import BQPOConfig, E2EConfig, GQSAConfig
from gqsa.data import (
    DEFAULT_CALIBRATION_TEXT,
    calibration_windows,
    eval_tokens,
    load_texts,
)
from gqsa.eval.perplexity import perplexity
from gqsa.train.e2e import train_scales


class PeakRSS:
    """Context manager sampling this process's resident set size; ``peak`` in bytes."""

    def __init__(self, every: float = 0.02):
        self.every, self.peak, self._stop = every, 0, threading.Event()

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self.peak = max(self.peak, self._rss())

    def __enter__(self) -> "PeakRSS":
        self.peak = self._rss()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


def run_stage(name: str, fn, results: dict) -> object:
    """Run ``fn()`` and record its time and peak RSS (and peak GPU memory on CUDA) under ``results[name]``."""
    print(f"== {name}", flush=True)
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    with PeakRSS() as mem:
        out = fn()
    if cuda:
        torch.cuda.synchronize()
    results[name] = {"seconds": time.perf_counter() - t0, "peak_rss_bytes": mem.peak}
    if cuda:
        results[name]["peak_gpu_bytes"] = torch.cuda.max_memory_allocated()
    return out


def evaluate(model, tokens, a, results: dict, name: str) -> None:
    ppl = perplexity(model, tokens, seqlen=a.eval_seqlen, max_windows=a.eval_windows, device=a.device,
                     progress=False)
    results[name]["ppl"] = ppl["ppl"]
    results[name]["eval"] = ppl
    print(f"   {name}: ppl {ppl['ppl']:.3f} ({ppl['seconds']:.0f} s eval)", flush=True)


def sparsity_stages(dense, calib, train, tokens, a, sparsity: float, results: dict) -> None:
    """One-shot, +BQPO, +BQPO+E2E at one sparsity (calibration and E2E windows given); fills ``results``."""
    config = GQSAConfig(group_size=a.group_size, sparsity=sparsity, bits=a.bits, sparsity_ramp=a.sparsity_ramp,
                        mask=a.mask)
    bqpo = BQPOConfig(epochs=a.bqpo_epochs, batch_size=a.bqpo_batch, lr_weight=a.bqpo_lr_weight,
                      lr_scale=a.bqpo_lr_scale, lr_zero=a.bqpo_lr_zero)
    e2e = E2EConfig(epochs=a.e2e_epochs, lr=a.e2e_lr, batch_size=a.e2e_batch, grad_accum=a.e2e_accum)
    tag = f"S{round(sparsity * 100)}"

    model = copy.deepcopy(dense)
    rep = run_stage(f"{tag} one-shot", lambda: compress(model, config, calib, batch_size=8, progress=False,
                                                        device=a.device), results)
    results[f"{tag} one-shot"]["report_seconds"] = rep.seconds
    evaluate(model, tokens, a, results, f"{tag} one-shot")
    del model

    model = copy.deepcopy(dense)
    with_bqpo = dataclasses.replace(config, bqpo=bqpo)
    rep = run_stage(f"{tag} +BQPO", lambda: compress(model, with_bqpo, calib, batch_size=8, progress=False,
                                                     device=a.device), results)
    results[f"{tag} +BQPO"]["bqpo"] = rep.stages["bqpo"]
    evaluate(model, tokens, a, results, f"{tag} +BQPO")

    # E2E-OQP on the model BQPO left (the verb would run one-shot and BQPO again first).
    log = run_stage(f"{tag} +BQPO+E2E", lambda: train_scales(model, train, e2e, device=a.device, progress=False),
                    results)
    results[f"{tag} +BQPO+E2E"]["e2e"] = log
    evaluate(model, tokens, a, results, f"{tag} +BQPO+E2E")


def markdown(out: dict) -> str:
    """The table of docs/stages.md for one result file."""
    a = out["args"]
    lines = [f"## W{a['bits']} G{a['group_size']}, SmolLM2-135M-Instruct, {out['device']}, {out['date']}", "",
             f"Command: `{out['command']}`", "",
             f"Perplexity on `{a['eval_text']}` ({a['eval_windows']} windows of {a['eval_seqlen']} tokens); "
             f"calibration: {a['nsamples']} x {a['seqlen']} tokens of `{a['calib']}`; BQPO {a['bqpo_epochs']} "
             f"epoch(s), batch {a['bqpo_batch']}, lr w/s/z {a['bqpo_lr_weight']}/{a['bqpo_lr_scale']}/"
             f"{a['bqpo_lr_zero']}; E2E-OQP {a['e2e_epochs']} epoch(s) on {a['e2e_windows']} x {a['seqlen']} "
             f"tokens, batch {a['e2e_batch']} x {a['e2e_accum']}, lr {a['e2e_lr']}. Time and peak RSS are "
             "those of the stage alone (E2E: its own time, after BQPO).", "",
             "| stage | perplexity | stage time (s) | peak RSS (MiB) |", "|---|---:|---:|---:|"]
    for name, r in out["stages"].items():
        lines.append(f"| {name} | {r['ppl']:.3f} | {r['seconds']:.0f} | {r['peak_rss_bytes'] / 2**20:.0f} |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sparsity", type=float, action="append", help="repeatable; default 0.5")
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--sparsity-ramp", type=float, default=0.0, help="GQSAConfig.sparsity_ramp (0: uniform)")
    p.add_argument("--mask", default="static", choices=["static", "adaptive"], help="GQSAConfig.mask")
    p.add_argument("--group-size", type=int, default=16)
    p.add_argument("--calib", default=DEFAULT_CALIBRATION_TEXT)
    p.add_argument("--eval-text", default="boolq")
    p.add_argument("--nsamples", type=int, default=32)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--eval-windows", type=int, default=20)
    p.add_argument("--eval-seqlen", type=int, default=1024)
    p.add_argument("--bqpo-epochs", type=int, default=None)
    p.add_argument("--bqpo-batch", type=int, default=None)
    p.add_argument("--bqpo-lr-weight", type=float, default=None)
    p.add_argument("--bqpo-lr-scale", type=float, default=None)
    p.add_argument("--bqpo-lr-zero", type=float, default=None)
    p.add_argument("--e2e-epochs", type=int, default=None)
    p.add_argument("--e2e-windows", type=int, default=32)
    p.add_argument("--e2e-batch", type=int, default=None)
    p.add_argument("--e2e-accum", type=int, default=None)
    p.add_argument("--e2e-lr", type=float, default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="where the model lives and every stage runs (cuda on a GPU)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                   help="the dense model's dtype (the CLI's default on a GPU is float16)")
    p.add_argument("--layers", type=int, default=None, help="keep only the first N blocks (smoke tests)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tag", default="w4s50g16")
    p.add_argument("--results", default="docs/results")
    p.add_argument("--md", default="docs/stages.md")
    return library_defaults(p.parse_args(argv))


# stage options left out take the library's defaults (BQPOConfig, E2EConfig)
STAGE_OPTIONS = {"bqpo_epochs": (BQPOConfig, "epochs"), "bqpo_batch": (BQPOConfig, "batch_size"),
                 "bqpo_lr_weight": (BQPOConfig, "lr_weight"), "bqpo_lr_scale": (BQPOConfig, "lr_scale"),
                 "bqpo_lr_zero": (BQPOConfig, "lr_zero"), "e2e_epochs": (E2EConfig, "epochs"),
                 "e2e_lr": (E2EConfig, "lr"), "e2e_batch": (E2EConfig, "batch_size"),
                 "e2e_accum": (E2EConfig, "grad_accum")}


def library_defaults(a: argparse.Namespace) -> argparse.Namespace:
    """Fill each stage option not given with the library's default for it."""
    for opt, (cls, field) in STAGE_OPTIONS.items():
        if getattr(a, opt) is None:
            setattr(a, opt, getattr(cls(), field))
    return a


def main(argv=None) -> None:
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    path = smollm2_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    dense = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, a.dtype)).to(a.device).eval()
    if a.layers is not None:
        dense.model.layers = dense.model.layers[:a.layers]
        dense.config.num_hidden_layers = a.layers
    tokens = eval_tokens(tokenizer, load_texts(a.eval_text, "eval"))
    stages: dict = {}
    run_stage("FP16 (dense reference)", lambda: None, stages)
    evaluate(dense, tokens, a, stages, "FP16 (dense reference)")
    texts = load_texts(a.calib, "calibration")
    calib = calibration_windows(tokenizer, texts, a.nsamples, a.seqlen, a.seed)
    train = calibration_windows(tokenizer, texts, a.e2e_windows, a.seqlen, a.seed + 1)
    for sparsity in a.sparsity or [0.5]:
        sparsity_stages(dense, calib, train, tokens, a, sparsity, stages)
    where = (torch.cuda.get_device_name() if a.device.startswith("cuda") else
             f"CPU ({platform.processor() or platform.machine()}), {torch.get_num_threads()} thread(s)")
    out = {"device": f"{where}, model in {a.dtype}",
           "date": datetime.date.today().isoformat(), "command": "python " + " ".join(sys.argv),
           "torch": torch.__version__, "args": vars(a), "stages": stages}
    Path(a.results).mkdir(parents=True, exist_ok=True)
    Path(a.results, f"stages-{a.tag}.json").write_text(json.dumps(out, indent=1, default=str))
    md = Path(a.md)
    head = "# GQSA stages: one-shot, BQPO, E2E-OQP\n\nWritten by `scripts/stages.py`.\n\n"
    old = md.read_text() if md.exists() else head
    md.write_text(old + "\n" + markdown(out))
    print(markdown(out))


if __name__ == "__main__":
    main()
