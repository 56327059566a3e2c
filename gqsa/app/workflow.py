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
from gqsa.compression import compress, compress_streamed
from gqsa.config import GQSAConfig
from gqsa.data import DEFAULT_CALIBRATION_TEXT, calibration_windows, load_texts
from gqsa.hf import save_compressed, verify_checksums
from gqsa.loading import is_compressed, load_model, load_tokenizer, resolve_model
from gqsa.models import find_blocks
from gqsa.size import accounting_summary, folder_bytes, model_stats
from gqsa.streaming import skeleton


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
                    resume: bool = False, checkpoint_dir: str | None = None,
                    stream: bool | None = None) -> dict[str, Any]:
    """Compress a model folder (or hub id) with GQSA and save it to ``out``; returns the log
    also saved there (``gqsa_log.json``).

    A local folder is streamed by default (``stream=None``; :func:`gqsa.compress_streamed`):
    one block at a time is read from its safetensors shards, so neither CPU nor GPU memory
    ever holds the dense model. ``stream=False`` (and a hub id) loads the dense model on the
    CPU and :func:`gqsa.compress` moves its blocks to ``device`` one at a time; both give the
    same packed tensors. Every finished block is checkpointed in ``checkpoint_dir`` (default
    ``OUT.checkpoint``, removed after the save); ``resume`` continues an interrupted run.
    """
    if Path(out).exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    times: dict[str, float] = {}
    t = time.perf_counter()
    source = resolve_uncompressed(model_name)
    distill = bool(config.e2e and config.e2e.distill)  # needs the dense model whole, as E2E-OQP's teacher
    stream = Path(source).is_dir() and not distill if stream is None else stream
    if stream and not Path(source).is_dir():
        raise ValueError(f"streamed compression reads a local model folder; {model_name} is not one")
    tokenizer = load_tokenizer(source)
    ids = calibration_windows(tokenizer, load_texts(calib, "calibration"), nsamples, seqlen, seed)
    train_ids = None
    if config.e2e:
        train_ids = calibration_windows(tokenizer, load_texts(e2e_text.text, "calibration"), e2e_text.nsamples,
                                        e2e_text.seqlen, seed + 1)
    ckpt = Path(checkpoint_dir or f"{out}.checkpoint")
    run = dict(train_ids=train_ids, device=device, batch_size=batch_size, progress=progress, checkpoint=ckpt,
               resume=resume)
    if stream:
        verify_checksums(source)
        if progress:
            _say_plan(_count_blocks(source, dtype), config, ids, calib, device, dtype, e2e_text, stream)
        times["load"] = time.perf_counter() - t
        model, report = compress_streamed(source, config, ids, dtype=dtype, **run)
    else:
        model = load_model(source, torch.device("cpu"), dtype)
        times["load"] = time.perf_counter() - t
        if progress:
            _say_plan(len(find_blocks(model)[1]), config, ids, calib, device, dtype, e2e_text, stream)
        report = compress(model, config, ids, **run)
    times["compress"] = report.seconds
    if config.e2e:
        report.stages["e2e_oqp"] = {"data": e2e_text.text, **report.stages["e2e_oqp"]}
        times["e2e_oqp"] = report.stages["e2e_oqp"].get("seconds", 0.0)
    stats = model_stats(model)
    settings = {k: v for k, v in config.to_dict().items() if k != "quant_method"}
    log = {"schema": SCHEMA, "method": "gqsa", "settings": settings, "ppl": {}, "date": date.today().isoformat(),
           "model": model_name, "source": str(source), "config": config.to_dict(),
           "calibration": {"source": calib, "nsamples": nsamples, "seqlen": seqlen, "seed": seed},
           "device": str(device), "dtype": str(dtype).replace("torch.", ""), "streamed": stream,
           "stages": report.stages, **accounting_summary(stats),
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


def _count_blocks(source: str, dtype: torch.dtype) -> int:
    """Number of decoder blocks of a model folder, from its meta-device skeleton."""
    from transformers import AutoConfig
    return len(find_blocks(skeleton(AutoConfig.from_pretrained(source), dtype))[1])


def _say_plan(num_blocks: int, config: GQSAConfig, ids: torch.Tensor, calib: str, device: torch.device,
              dtype: torch.dtype, e2e_text: TrainText, stream: bool) -> None:
    """One line on stderr saying what the run will do, before the long part starts."""
    oneshot = "one-shot" + (" in act-order" if config.act_order else "")
    steps = ([f"{config.allocation} allocation (a pass over the dense blocks)"] if config.allocation != "uniform"
             else []) + [oneshot] + ([f"BQPO {config.bqpo.epochs} epochs"] if config.bqpo else []) + \
        ([f"E2E-OQP {config.e2e.epochs} epochs on {e2e_text.nsamples} x {e2e_text.seqlen} tokens of {e2e_text.text}"]
         if config.e2e else [])
    slow = device.type == "cpu" and ids.numel() >= 64 * 2048
    how = "streamed from the folder" if stream else "loaded whole"
    print(f"gqsa compress: {num_blocks} blocks {how} at G{config.group_size} W{config.bits} "
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
