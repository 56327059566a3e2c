"""The ``gqsa compress`` job as one function: load, calibrate, compress, save, log."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from gqsa.config import GQSAConfig
from gqsa.data import calibration_windows, load_texts
from gqsa.hf import save_compressed
from gqsa.info import folder_bytes, model_stats
from gqsa.loading import load_model, load_tokenizer, resolve_model
from gqsa.pipeline import compress


def compress_folder(model_name: str, out: str | Path, config: GQSAConfig, calib: str = "coqa",
                    nsamples: int = 128, seqlen: int = 2048, device: torch.device = torch.device("cpu"),
                    dtype: torch.dtype = torch.float32, seed: int = 0, batch_size: int = 8,
                    overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Compress a model folder (or hub id) into ``out``; returns the log also saved there.

    The dense model is loaded on the CPU and its blocks are moved to ``device`` one at a
    time, so the GPU needs to hold only one block plus the calibration activations.
    """
    if Path(out).exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    times: dict[str, float] = {}
    t = time.perf_counter()
    source = resolve_model(model_name)
    model = load_model(source, torch.device("cpu"), dtype)
    tokenizer = load_tokenizer(source)
    times["load"] = time.perf_counter() - t
    t = time.perf_counter()
    ids = calibration_windows(tokenizer, load_texts(calib, "calibration"), nsamples, seqlen, seed)
    times["calibration_data"] = time.perf_counter() - t
    report = compress(model, config, ids, device=device, batch_size=batch_size, progress=progress)
    times["compress"] = report.seconds
    stats = model_stats(model)
    log = {"model": model_name, "source": str(source), "config": config.to_dict(),
           "calibration": {"source": calib, "nsamples": nsamples, "seqlen": seqlen, "seed": seed},
           "device": str(device), "dtype": str(dtype).replace("torch.", ""),
           "stages": {"oneshot": {"seconds": report.seconds, "peak_memory_bytes": report.peak_memory_bytes}},
           "bits_per_weight": stats["bits_per_weight"], "packed_bytes": stats["packed_bytes"],
           "original_bytes": folder_bytes(source) if Path(source).is_dir() else None,
           "layers": report.layers}
    t = time.perf_counter()
    model.to(_source_dtype(source, dtype))  # dense parts back to the checkpoint's dtype; packed tensors keep theirs
    save_compressed(model, out, config, source=source, stages={"oneshot": True}, overwrite=overwrite,
                    log={**log, "times": times})
    times["save"] = time.perf_counter() - t
    log["times"] = times
    log["compressed_bytes"] = folder_bytes(out)
    return log


def _source_dtype(source: str, fallback: torch.dtype) -> torch.dtype:
    """The dtype the original checkpoint was stored in (``dtype`` in its config.json), else ``fallback``."""
    cfg = Path(source) / "config.json"
    saved = json.loads(cfg.read_text()) if cfg.exists() else {}
    name = saved.get("dtype") or saved.get("torch_dtype")
    d = getattr(torch, name, None) if isinstance(name, str) else None
    return d if isinstance(d, torch.dtype) and d.is_floating_point else fallback
