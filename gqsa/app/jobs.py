"""The ``gqsa eval``, ``gqsa generate`` and ``gqsa info`` jobs, as plain functions."""

from __future__ import annotations

import json
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

import torch

from gqsa.app.run_report import SCHEMA
from gqsa.baselines.save import baseline_config, read_baseline
from gqsa.data import eval_tokens, load_texts
from gqsa.eval.perplexity import perplexity
from gqsa.eval.zeroshot import evaluate_mc, load_mc_tasks
from gqsa.loading import is_compressed, load_model, load_tokenizer, resolve_model
from gqsa.size import accounting_summary, folder_bytes, model_stats


def evaluate_perplexities(model_name: str, texts: list[str], seqlen: int, device: torch.device,
                          dtype: torch.dtype, max_windows: int | None = None, tasks: list[str] = (),
                          limit: int | None = None, verify: bool = True) -> dict[str, Any]:
    """Perplexity of one model on each held-out text (GPTQ protocol: joined with "\\n\\n",
    whole non-overlapping windows), and acc/acc_norm on local multiple-choice tasks.

    Returns a run log of :mod:`gqsa.app.run_report`'s schema (``gqsa report`` reads it): what
    the model is (:func:`describe_model`), ``ppl`` {text: perplexity}, ``ppl_windows`` {text:
    the full :func:`gqsa.eval.perplexity.perplexity` record}, ``accuracy`` {task: record}.
    """
    path = resolve_model(model_name)
    model = load_model(path, device, dtype, verify=verify)
    tokenizer = load_tokenizer(path)
    out: dict[str, Any] = {"schema": SCHEMA, **describe_model(path, model), "model": model_name,
                           "compressed": is_compressed(path), "device": str(device), "date": date.today().isoformat(),
                           "ppl": {}, "ppl_windows": {}, "accuracy": {}}
    for name in texts:
        tokens = eval_tokens(tokenizer, load_texts(name, "eval"))
        windows = tokens.numel() // seqlen if max_windows is None else min(max_windows, tokens.numel() // seqlen)
        print(f"gqsa eval: perplexity on {name}: {windows} windows of {seqlen} tokens on {device}"
              + ("" if max_windows else " (--max-windows N evaluates fewer)"), file=sys.stderr, flush=True)
        out["ppl_windows"][name] = perplexity(model, tokens, seqlen=seqlen, device=device, max_windows=max_windows)
        out["ppl"][name] = out["ppl_windows"][name]["ppl"]
    for name in tasks:
        out["accuracy"][name] = evaluate_mc(model, tokenizer, load_mc_tasks(name), limit=limit, device=device)
    return out


def describe_model(path: str, model: torch.nn.Module) -> dict[str, Any]:
    """``method``, ``settings`` and the size accounting (:func:`gqsa.size.accounting_summary`:
    ``bits_per_weight``, ``bits_per_weight_all_linears``, ``model_bytes``, ...) of a loaded
    model folder for the run log: gqsa folders from their quantization_config and packed
    layers, baseline folders from their ``gqsa_baseline`` entry, anything else as ``fp16``
    (the dense reference, 16 bits)."""
    qc = getattr(model.config, "quantization_config", None)
    if isinstance(qc, dict) and qc.get("quant_method") == "gqsa":
        settings = {k: v for k, v in qc.items() if k not in ("quant_method", "layers")}
        return {"method": "gqsa", "settings": settings, **accounting_summary(model_stats(model))}
    baseline = read_baseline(path) if Path(path).is_dir() else None
    if baseline:
        stats = model_stats(model, baseline_config(baseline))
        return {"method": baseline.get("method", "baseline"), "settings": baseline, **accounting_summary(stats)}
    return {"method": "fp16", "settings": {}, **accounting_summary(model_stats(model)), "bits_per_weight": 16.0}


def generate_text(model_name: str, prompt: str, max_new_tokens: int, device: torch.device, dtype: torch.dtype,
                  chat: bool = False, verify: bool = True) -> str:
    """Greedy continuation of ``prompt`` (optionally through the chat template)."""
    path = resolve_model(model_name)
    model = load_model(path, device, dtype, verify=verify)
    tokenizer = load_tokenizer(path)
    if chat:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)["input_ids"]
    else:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.inference_mode():
        out = model.generate(ids.to(device), max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def folder_info(path: str | Path, verify: bool = True) -> dict[str, Any]:
    """Bytes on disk, the size accounting (:mod:`gqsa.size`: bits per weight of the compressed
    linears and of all linears as format version 3 stores them, whole-model bytes), the folder's
    own quantization_config (its ``format_version`` included), per-layer sparsity and the stages that ran,
    of a gqsa folder or a baseline folder; ``verify``: check the weight files' sha256 first
    (``checksums`` says how many matched)."""
    from gqsa.hf import load, read_quantization_config, verify_checksums
    t = time.perf_counter()
    checked = verify_checksums(path) if verify else None
    baseline = read_baseline(path)
    if baseline:
        model = load_model(str(path), torch.device("cpu"), torch.float32, verify=False)
        stats, config = model_stats(model, baseline_config(baseline)), baseline
    else:
        model = load(path, device="cpu", verify=False)
        stats = model_stats(model)
        config = {k: v for k, v in read_quantization_config(path).items() if k != "layers"}  # as the folder says
    log = read_log(path)
    info = {"path": str(path), "bytes_on_disk": folder_bytes(path),
            "original_bytes": log.get("original_bytes"),
            "compressed_layers": stats["compressed_layers"],
            "bits_per_weight": round(stats["bits_per_weight"], 3),
            "bits_per_weight_all_linears": round(stats["bits_per_weight_all_linears"], 3),
            "model_bytes": round(stats["model_bytes"]),
            "bits_per_param": round(stats["bits_per_param"], 3),
            "skipped_layers": len(stats["skipped_layers"]),
            "mean_sparsity": round(stats["sparsity"], 4),
            "config": config,
            "stages": list((config.get("stages") or {}).keys()),
            "checksums": "not checked" if checked is None else (f"{checked} files match" if checked else
                                                                  "none recorded"),
            "load_seconds": round(time.perf_counter() - t, 2), "layers": stats["layers"]}
    return info


def read_log(path: str | Path) -> dict[str, Any]:
    """The gqsa_log.json written by ``gqsa compress`` (empty dict when absent)."""
    f = Path(path) / "gqsa_log.json"
    return json.loads(f.read_text()) if f.exists() else {}
