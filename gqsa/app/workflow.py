"""The ``gqsa compress`` job as one function: load, calibrate, compress, save, log."""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import torch

from gqsa.app.run_report import SCHEMA
from gqsa.compression import compress
from gqsa.config import GQSAConfig
from gqsa.data import DEFAULT_CALIBRATION_TEXT, calibration_windows, load_texts
from gqsa.hf import save_compressed
from gqsa.loading import is_compressed, load_model, load_tokenizer, resolve_model
from gqsa.size import accounting_summary, folder_bytes, model_stats


@dataclass(frozen=True)
class TrainText:
    """E2E-OQP's training text: a builtin name or path, windows and their length. Its windows
    use ``seed + 1``, so they differ from the calibration windows even on the same text."""

    text: str = DEFAULT_CALIBRATION_TEXT
    nsamples: int = 128
    seqlen: int = 1024


def compress_folder(model_name: str, out: str | Path, config: GQSAConfig, calib: str = DEFAULT_CALIBRATION_TEXT,
                    nsamples: int = 128, seqlen: int = 2048, device: torch.device = torch.device("cpu"),
                    dtype: torch.dtype = torch.float32, seed: int = 0, batch_size: int = 8,
                    overwrite: bool = False, progress: bool = True, e2e_text: TrainText = TrainText(),
                    resume: bool = False, checkpoint_dir: str | None = None) -> dict[str, Any]:
    """Load a model folder (or hub id), :func:`gqsa.compress` it, save it to ``out``; returns
    the log also saved there (``gqsa_log.json``).

    The dense model is loaded on the CPU and its blocks are moved to ``device`` one at a
    time, so the GPU needs to hold only one block plus the calibration activations. Every
    finished block is checkpointed in ``checkpoint_dir`` (default ``OUT.checkpoint``, removed
    after the save); ``resume`` continues an interrupted run.
    """
    if Path(out).exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    times: dict[str, float] = {}
    t = time.perf_counter()
    source = resolve_uncompressed(model_name)
    model = load_model(source, torch.device("cpu"), dtype)
    tokenizer = load_tokenizer(source)
    times["load"] = time.perf_counter() - t
    ids = calibration_windows(tokenizer, load_texts(calib, "calibration"), nsamples, seqlen, seed)
    train_ids = None
    if config.e2e:
        train_ids = calibration_windows(tokenizer, load_texts(e2e_text.text, "calibration"), e2e_text.nsamples,
                                        e2e_text.seqlen, seed + 1)
    if progress:
        _say_plan(model, config, ids, calib, device, dtype, e2e_text)
    ckpt = Path(checkpoint_dir or f"{out}.checkpoint")
    report = compress(model, config, ids, train_ids=train_ids, device=device, batch_size=batch_size,
                      progress=progress, checkpoint=ckpt, resume=resume)
    times["compress"] = report.seconds
    if config.e2e:
        report.stages["e2e_oqp"] = {"data": e2e_text.text, **report.stages["e2e_oqp"]}
        times["e2e_oqp"] = report.stages["e2e_oqp"].get("seconds", 0.0)
    stats = model_stats(model)
    settings = {k: v for k, v in config.to_dict().items() if k != "quant_method"}
    log = {"schema": SCHEMA, "method": "gqsa", "settings": settings, "ppl": {}, "date": date.today().isoformat(),
           "model": model_name, "source": str(source), "config": config.to_dict(),
           "calibration": {"source": calib, "nsamples": nsamples, "seqlen": seqlen, "seed": seed},
           "device": str(device), "dtype": str(dtype).replace("torch.", ""), "stages": report.stages,
           **accounting_summary(stats),
           "original_bytes": folder_bytes(source) if Path(source).is_dir() else None,
           "layers": report.layers}
    t = time.perf_counter()
    model.to(_source_dtype(source, dtype))  # dense parts back to the checkpoint's dtype; GQSLinear keeps fp16 scales
    save_compressed(model, out, source=source, overwrite=overwrite, log={**log, "times": times})
    shutil.rmtree(ckpt, ignore_errors=True)
    times["save"] = time.perf_counter() - t
    log["times"] = times
    log["compressed_bytes"] = folder_bytes(out)
    return log


def _say_plan(model, config: GQSAConfig, ids: torch.Tensor, calib: str, device: torch.device,
              dtype: torch.dtype, e2e_text: TrainText) -> None:
    """One line on stderr saying what the run will do, before the long part starts."""
    from gqsa.models import find_blocks
    steps = ["one-shot"] + ([f"BQPO {config.bqpo.epochs} epochs"] if config.bqpo else []) + \
        ([f"E2E-OQP {config.e2e.epochs} epochs on {e2e_text.nsamples} x {e2e_text.seqlen} tokens of {e2e_text.text}"]
         if config.e2e else [])
    slow = device.type == "cpu" and ids.numel() >= 64 * 2048
    print(f"gqsa compress: {len(find_blocks(model)[1])} blocks at G{config.group_size} W{config.bits} "
          f"S{config.sparsity:g}; calibration {ids.shape[0]} x {ids.shape[1]} tokens of {calib}; {device} "
          f"{str(dtype).replace('torch.', '')}; {', then '.join(steps)}"
          + ("; on a 2-core CPU this takes about a minute per block (--nsamples/--seqlen make it shorter)"
             if slow else ""), file=sys.stderr, flush=True)


def resolve_uncompressed(model_name: str) -> str:
    """:func:`resolve_model`, refusing a folder that gqsa already compressed: its config would no
    longer describe its codes. Compress the original model instead."""
    source = resolve_model(model_name)
    if is_compressed(source):
        raise ValueError(f"{model_name} is already gqsa-compressed; compress the original model instead "
                         f"(its path is in {Path(source) / 'gqsa_log.json'}, key 'source')")
    return source


def _source_dtype(source: str, fallback: torch.dtype) -> torch.dtype:
    """The dtype the original checkpoint was stored in (``dtype`` in its config.json), else ``fallback``."""
    cfg = Path(source) / "config.json"
    saved = json.loads(cfg.read_text()) if cfg.exists() else {}
    name = saved.get("dtype") or saved.get("torch_dtype")
    d = getattr(torch, name, None) if isinstance(name, str) else None
    return d if isinstance(d, torch.dtype) and d.is_floating_point else fallback


def compress_baseline_folder(model_name: str, out: str | Path, method: str, pattern: str | None, bits: int | None,
                             group_size: int | None, sparsity: float | None, calib: str = DEFAULT_CALIBRATION_TEXT,
                             nsamples: int = 128, seqlen: int = 2048, device: torch.device = torch.device("cpu"),
                             dtype: torch.dtype = torch.float32, seed: int = 0, batch_size: int = 8,
                             overwrite: bool = False, **options: Any) -> dict[str, Any]:
    """Compress with a baseline method (:func:`gqsa.baselines.compress_method`) and save it
    (:func:`gqsa.baselines.save_method`): same data, model handling and folder rules as gqsa."""
    from gqsa.baselines import compress_method, save_method
    if Path(out).exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    source = resolve_uncompressed(model_name)
    model = load_model(source, torch.device("cpu"), dtype)
    ids = None
    if method != "rtn":
        ids = calibration_windows(load_tokenizer(source), load_texts(calib, "calibration"), nsamples, seqlen, seed)
    report = compress_method(model, method, pattern, bits, group_size, sparsity, ids, device=device,
                             batch_size=batch_size, **options)
    model.to(_source_dtype(source, dtype))
    log = {"schema": SCHEMA, "method": method, "settings": report.settings(), **accounting_summary(report.accounting),
           "ppl": {}, "date": date.today().isoformat(), "model": model_name, "source": str(source),
           "calibration": None if ids is None else {"source": calib, "nsamples": nsamples, "seqlen": seqlen, "seed": seed},
           "device": str(device), "seconds": report.seconds, "layers": report.layers}
    save_method(model, report, out, source=source, overwrite=overwrite, log=log)
    return log
