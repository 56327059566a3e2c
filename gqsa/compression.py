"""``gqsa.compress(model, config, calib)``: the whole GQSA compression as one verb.

One-shot joint prune + quantize of every block (:func:`gqsa.pipeline.run_blocks`), then, as
``config`` asks, BQPO on each block right after its solve (``config.bqpo``) and E2E-OQP on the
whole model (``config.e2e``); a non-uniform ``config.allocation`` first measures each linear's
sparsity on the dense model (:mod:`gqsa.allocation`). Finished blocks can be checkpointed and a run resumed. The config
is stored on the model (``model.config.quantization_config``), so ``gqsa.save_compressed(model,
out)`` needs nothing more.

``gqsa.compress_streamed(folder, config, calib, checkpoint=...)`` does the same for a model
that is never loaded whole: it reads one block at a time from the folder's safetensors
shards (:mod:`gqsa.streaming`, docs/streaming.md) and returns the assembled packed model.
"""

from __future__ import annotations

import copy
import os
import time
from typing import Any

import torch
from torch import nn

from gqsa import streaming
from gqsa.allocation import with_allocation
from gqsa.config import GQSAConfig
from gqsa.hf import quantization_dict
from gqsa.pipeline import CompressReport, run_blocks
from gqsa.streaming import TensorSource
from gqsa.train.bqpo import bqpo_hook, summarize
from gqsa.train.checkpoint import BlockCheckpoint, run_fingerprint
from gqsa.train.e2e import train_scales


def compress(model: nn.Module, config: GQSAConfig, calib: torch.Tensor, *, train_ids: torch.Tensor | None = None,
             device: torch.device | str | None = None, batch_size: int = 8, progress: bool = True,
             checkpoint: str | os.PathLike | None = None, resume: bool = False) -> CompressReport:
    """Compress ``model`` in place with GQSA and the training stages ``config`` names.

    Args:
        model: a transformers causal LM (its decoder blocks are found from the module tree).
        config: the :class:`GQSAConfig`; ``config.bqpo`` / ``config.e2e`` switch the stages on.
        calib: calibration token ids [n, L] int64 (the one-shot solve and BQPO).
        train_ids: E2E-OQP's training windows [n', L'] int64 (default: ``calib``).
        device: where blocks are computed (default: where the model's parameters are); blocks
            move there one at a time, and the model ends where it started.
        batch_size: calibration sequences per block forward.
        checkpoint: a folder for per-block checkpoints (None: none); ``resume`` continues the
            run found there (same model, config and data), else an unfinished one is an error.
    Returns:
        The :class:`~gqsa.pipeline.CompressReport`, with each stage's log in ``stages``.
    """
    home = next(model.parameters()).device
    device = torch.device(device) if device is not None else home
    t0 = time.perf_counter()
    config = with_allocation(model, config, calib, device, batch_size, progress)
    allocation_seconds = time.perf_counter() - t0
    teacher = copy.deepcopy(model) if config.e2e and config.e2e.distill else None  # the dense model, for E2E-OQP
    store = None
    if checkpoint is not None:
        store = BlockCheckpoint(checkpoint, run_fingerprint(model, config, calib), resume=resume)
    report = _block_stages(model, config, calib, device, batch_size, progress, store)
    _note_allocation(report, config, allocation_seconds)
    _finish(model, config, report, calib if train_ids is None else train_ids, device, progress, teacher)
    if config.e2e:
        model.to(home)
    return report


def compress_streamed(source: str | os.PathLike | TensorSource, config: GQSAConfig, calib: torch.Tensor, *,
                      checkpoint: str | os.PathLike, model_config=None, dtype: torch.dtype = torch.float32,
                      train_ids: torch.Tensor | None = None, device: torch.device | str = "cpu", batch_size: int = 8,
                      progress: bool = True, resume: bool = False) -> tuple[nn.Module, CompressReport]:
    """:func:`compress` for a model that is never loaded whole: one decoder block at a time.

    The model is built on the meta device, its embeddings, norms and head are loaded alone,
    and each block is read from ``source`` right before its turn, compressed by the same
    driver (:func:`gqsa.pipeline.run_blocks`) with the same stages, written packed to
    ``checkpoint`` and freed. The packed model is then assembled from the checkpoint (CPU
    memory: the packed size), E2E-OQP runs on it if ``config.e2e`` asks (it needs the whole
    packed model on ``device``), and it is returned for :func:`gqsa.save_compressed`. Same
    packed tensors as ``compress`` on the loaded model (tests/test_streaming.py).

    Args:
        source: a local model folder (config.json + ``*.safetensors`` shards), or a
            :class:`gqsa.streaming.TensorSource` with ``model_config`` (a transformers config).
        checkpoint: the folder for the finished blocks (required: they live there until the
            assembly); ``resume`` continues the run found there.
        dtype: the dtype blocks are computed in (the dense parts of the returned model too).
        device: where blocks are computed; the calibration hidden states stay there when they
            fit, else in pinned CPU memory (:func:`gqsa.streaming.place_hidden`, printed).
        calib, train_ids, batch_size, progress: as for :func:`compress`.
    Returns:
        The packed model (on the CPU, its config stored for ``save_compressed``) and the report.
    """
    device = torch.device(device)
    if config.e2e and config.e2e.distill:
        raise ValueError("E2E-OQP distillation needs the whole dense model in memory as its teacher, which streamed "
                         "compression never loads: compress without streaming (CLI: --no-stream)")
    tensors, model_config = _open_source(source, model_config)
    model = streaming.skeleton(model_config, dtype)
    streaming.check_names(model, tensors)
    streaming.load_outside(model, tensors, dtype, "cpu")
    blocks = streaming.StreamedBlocks(model, tensors, dtype)
    t0 = time.perf_counter()
    config = with_allocation(model, config, calib, device, batch_size, progress, blocks_source=blocks)
    allocation_seconds = time.perf_counter() - t0
    store = BlockCheckpoint(checkpoint, run_fingerprint(model, config, calib), resume=resume)
    fp = bool(config.bqpo and config.bqpo.fp_targets)
    hidden_on, pinned = streaming.place_hidden((*calib.shape, model.config.hidden_size), dtype, device, 3 + fp,
                                               streaming.block_reserve_bytes(model, dtype), progress)
    report = _block_stages(model, config, calib, device, batch_size, progress, store, blocks_source=blocks,
                           hidden_device=hidden_on, pin_hidden=pinned)
    report.stages["oneshot"]["materialised_blocks_peak"] = blocks.peak_materialised
    _note_allocation(report, config, allocation_seconds)
    streaming.assemble(model, store)
    _finish(model, config, report, calib if train_ids is None else train_ids, device, progress)
    model.to("cpu")
    return model, report


def _open_source(source, model_config) -> tuple[TensorSource, Any]:
    """The tensor source and transformers config of a folder or of a TensorSource."""
    if isinstance(source, (str, os.PathLike)):
        from transformers import AutoConfig
        return streaming.SafetensorsSource(source), model_config or AutoConfig.from_pretrained(source)
    if model_config is None:
        raise ValueError("a TensorSource needs model_config (the transformers config of the model it holds)")
    return source, model_config


def _block_stages(model: nn.Module, config: GQSAConfig, calib: torch.Tensor, device: torch.device,
                  batch_size: int, progress: bool, store: BlockCheckpoint | None, **stream: Any) -> CompressReport:
    """The per-block stages: one-shot, then BQPO on each block right after its solve."""
    hook = bqpo_hook(config.bqpo, progress) if config.bqpo else None
    report = run_blocks(model, config, calib, device=device, batch_size=batch_size, progress=progress,
                        after_block=hook, fp_targets=bool(config.bqpo and config.bqpo.fp_targets), checkpoint=store,
                        **stream)
    report.stages["oneshot"] = {"seconds": report.seconds, "peak_memory_bytes": report.peak_memory_bytes}
    if config.bqpo:
        report.stages["bqpo"] = summarize(report.blocks, config.bqpo)
    return report


def _note_allocation(report: CompressReport, config: GQSAConfig, seconds: float) -> None:
    """The allocation's pass over the dense blocks, in the report's stages (when it ran)."""
    if config.allocation != "uniform":
        report.stages["allocation"] = {"method": config.allocation, "strength": config.allocation_strength,
                                       "seconds": seconds}


def _finish(model: nn.Module, config: GQSAConfig, report: CompressReport, windows: torch.Tensor,
            device: torch.device, progress: bool, teacher: nn.Module | None = None) -> None:
    """E2E-OQP on the whole packed model (if asked), then the config stored on the model."""
    if config.e2e:
        report.stages["e2e_oqp"] = train_scales(model, windows, config.e2e, device, progress, teacher=teacher)
    model.config.quantization_config = quantization_dict(model, config, stages_ran(config))


def stages_ran(config: GQSAConfig) -> dict[str, object]:
    """The ``stages`` entry of a saved folder's quantization_config: stage name -> its config (or True)."""
    stages: dict[str, object] = {"oneshot": True}
    if config.bqpo:
        stages["bqpo"] = config.bqpo.to_dict()
    if config.e2e:
        stages["e2e_oqp"] = config.e2e.to_dict()
    return stages
