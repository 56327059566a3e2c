"""Time and peak GPU memory of each gqsa stage (one-shot, BQPO, E2E-OQP) on a CUDA device.

The model is SmolLM2-135M's architecture (LLaMA, hidden 576, 30 blocks) with random weights
and random calibration tokens: the real checkpoint does not fit the device machine's upload
limit, and time and memory depend on shapes, not on weight values. Accuracy numbers come
from scripts/stages.py on the real model.

Usage: python scripts/stages_gpu.py [--nsamples 128] [--seqlen 2048] [--out stages_gpu.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from datetime import date

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from gqsa.compression import compress
from gqsa.config import BQPOConfig, E2EConfig, GQSAConfig
from gqsa.train.e2e import train_scales

SMOLLM2 = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
               num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
               rope_theta=100000.0, tie_word_embeddings=True)


def stage(name: str, fn, results: dict) -> None:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    results[name] = {"seconds": round(time.perf_counter() - t, 2),
                     "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3)}
    print(name, results[name], flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nsamples", type=int, default=128)
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--e2e-windows", type=int, default=64)
    ap.add_argument("--out", default="stages_gpu.json")
    a = ap.parse_args()
    torch.manual_seed(0)
    dev = torch.device("cuda")
    calib = torch.randint(0, SMOLLM2["vocab_size"], (a.nsamples, a.seqlen))
    results: dict = {}
    cfg = GQSAConfig(sparsity=0.5, bits=4, group_size=16)
    bqpo = BQPOConfig()
    for label, config in (("oneshot", cfg), ("oneshot+bqpo", dataclasses.replace(cfg, bqpo=bqpo))):
        model = LlamaForCausalLM(LlamaConfig(**SMOLLM2)).to(dev, torch.bfloat16).eval()
        stage(label, lambda: compress(model, config, calib, device=dev, progress=False), results)
    windows = calib[: a.e2e_windows, :1024]
    stage("e2e_oqp", lambda: train_scales(model, windows, E2EConfig(), device=dev, progress=False,
                                          evaluate=False), results)
    out = {"device": torch.cuda.get_device_name(), "date": str(date.today()), "torch": torch.__version__,
           "command": "python scripts/stages_gpu.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(a).items()
                                                                 if k != "out"),
           "calibration": f"{a.nsamples} x {a.seqlen} random tokens", "e2e": f"{a.e2e_windows} x 1024 tokens, 1 epoch",
           "model": "SmolLM2-135M architecture, random bf16 weights", "stages": results}
    with open(a.out, "w") as f:
        json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
