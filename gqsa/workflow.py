"""The ``gqsa compress`` job as one function: load, calibrate, compress, save, log."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gqsa.config import GQSAConfig
from gqsa.data import calibration_windows, load_texts
from gqsa.hf import save_compressed
from gqsa.info import folder_bytes, model_stats
from gqsa.loading import is_compressed, load_model, load_tokenizer, resolve_model
from gqsa.pipeline import compress
from gqsa.train.bqpo import BQPOConfig, bqpo_hook, summarize
from gqsa.train.checkpoint import BlockCheckpoint, run_fingerprint
from gqsa.train.e2e import E2EConfig, train_scales


@dataclass(frozen=True)
class Stages:
    """The optional stages after one-shot compression, and resume settings.

    ``bqpo``/``e2e`` None: the stage is off. ``e2e_data``: training text of E2E-OQP (its
    windows use ``seed + 1``, so they differ from the calibration windows even on the same text).
    ``checkpoint_dir``: per-block checkpoints (default ``OUT.checkpoint``), kept until the save.
    """

    bqpo: BQPOConfig | None = None
    e2e: E2EConfig | None = None
    e2e_data: str = "coqa"
    e2e_nsamples: int = 128
    e2e_seqlen: int = 1024
    resume: bool = False
    checkpoint_dir: str | None = None


def compress_folder(model_name: str, out: str | Path, config: GQSAConfig, calib: str = "coqa",
                    nsamples: int = 128, seqlen: int = 2048, device: torch.device = torch.device("cpu"),
                    dtype: torch.dtype = torch.float32, seed: int = 0, batch_size: int = 8,
                    overwrite: bool = False, progress: bool = True, stages: Stages = Stages()) -> dict[str, Any]:
    """Compress a model folder (or hub id) into ``out``; returns the log also saved there.

    The dense model is loaded on the CPU and its blocks are moved to ``device`` one at a
    time, so the GPU needs to hold only one block plus the calibration activations.
    Every finished block is checkpointed; ``stages.resume`` continues an interrupted run.
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
    if progress:
        _say_plan(model, config, ids, calib, device, dtype, stages)
    ckpt = BlockCheckpoint(stages.checkpoint_dir or f"{out}.checkpoint",
                           run_fingerprint(model, config, ids, bqpo=stages.bqpo and stages.bqpo.to_dict()),
                           resume=stages.resume)
    fp_targets = bool(stages.bqpo and stages.bqpo.fp_targets)
    hook = bqpo_hook(stages.bqpo, progress) if stages.bqpo else None
    report = compress(model, config, ids, device=device, batch_size=batch_size, progress=progress,
                      after_block=hook, fp_targets=fp_targets, checkpoint=ckpt)
    times["compress"] = report.seconds
    stage_log: dict[str, Any] = {"oneshot": {"seconds": report.seconds, "peak_memory_bytes": report.peak_memory_bytes}}
    if stages.bqpo:
        stage_log["bqpo"] = summarize(report.blocks, stages.bqpo)
    if stages.e2e:
        windows = calibration_windows(tokenizer, load_texts(stages.e2e_data, "calibration"), stages.e2e_nsamples,
                                      stages.e2e_seqlen, seed + 1)
        stage_log["e2e_oqp"] = {"data": stages.e2e_data, "config": stages.e2e.to_dict(),
                                **train_scales(model, windows, stages.e2e, device, progress)}
        model.to("cpu")
        times["e2e_oqp"] = stage_log["e2e_oqp"].get("seconds", 0.0)
    stats = model_stats(model)
    log = {"model": model_name, "source": str(source), "config": config.to_dict(),
           "calibration": {"source": calib, "nsamples": nsamples, "seqlen": seqlen, "seed": seed},
           "device": str(device), "dtype": str(dtype).replace("torch.", ""), "stages": stage_log,
           "bits_per_weight": stats["bits_per_weight"], "packed_bytes": stats["packed_bytes"],
           "original_bytes": folder_bytes(source) if Path(source).is_dir() else None,
           "layers": report.layers}
    t = time.perf_counter()
    model.to(_source_dtype(source, dtype))  # dense parts back to the checkpoint's dtype; GQSLinear keeps fp16 scales
    save_compressed(model, out, config, source=source, overwrite=overwrite, log={**log, "times": times},
                    stages={k: (v.get("config") if isinstance(v, dict) and "config" in v else True)
                            for k, v in stage_log.items()})
    ckpt.remove()
    times["save"] = time.perf_counter() - t
    log["times"] = times
    log["compressed_bytes"] = folder_bytes(out)
    return log


def _say_plan(model, config: GQSAConfig, ids: torch.Tensor, calib: str, device: torch.device,
              dtype: torch.dtype, stages: Stages) -> None:
    """One line on stderr saying what the run will do, before the long part starts."""
    from gqsa.models import find_blocks
    steps = ["one-shot"] + ([f"BQPO {stages.bqpo.epochs} epochs"] if stages.bqpo else []) + \
        ([f"E2E-OQP {stages.e2e.epochs} epochs on {stages.e2e_nsamples} x {stages.e2e_seqlen} tokens"] if stages.e2e else [])
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
                             group_size: int | None, sparsity: float | None, calib: str = "coqa",
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
    save_method(model, report, out, source=source, overwrite=overwrite)
    return {"settings": report.settings(), "bits_per_weight": report.bits_per_weight, "seconds": report.seconds}
