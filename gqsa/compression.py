"""``gqsa.compress(model, config, calib)``: the whole GQSA compression as one verb.

One-shot joint prune + quantize of every block (:func:`gqsa.pipeline.run_blocks`), then, as
``config`` asks, BQPO on each block right after its solve (``config.bqpo``) and E2E-OQP on the
whole model (``config.e2e``). Finished blocks can be checkpointed and a run resumed. The config
is stored on the model (``model.config.quantization_config``), so ``gqsa.save_compressed(model,
out)`` needs nothing more.
"""

from __future__ import annotations

import copy
import os

import torch
from torch import nn

from gqsa.config import GQSAConfig
from gqsa.hf import quantization_dict
from gqsa.pipeline import CompressReport, run_blocks
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
    teacher = copy.deepcopy(model) if config.e2e and config.e2e.distill else None  # the dense model, for E2E-OQP
    store = None
    if checkpoint is not None:
        store = BlockCheckpoint(checkpoint, run_fingerprint(model, config, calib), resume=resume)
    hook = bqpo_hook(config.bqpo, progress) if config.bqpo else None
    report = run_blocks(model, config, calib, device=device, batch_size=batch_size, progress=progress,
                        after_block=hook, fp_targets=bool(config.bqpo and config.bqpo.fp_targets), checkpoint=store)
    report.stages["oneshot"] = {"seconds": report.seconds, "peak_memory_bytes": report.peak_memory_bytes}
    if config.bqpo:
        report.stages["bqpo"] = summarize(report.blocks, config.bqpo)
    if config.e2e:
        windows = calib if train_ids is None else train_ids
        report.stages["e2e_oqp"] = train_scales(model, windows, config.e2e, device, progress, teacher=teacher)
        model.to(home)
    model.config.quantization_config = quantization_dict(model, config, stages_ran(config))
    return report


def stages_ran(config: GQSAConfig) -> dict[str, object]:
    """The ``stages`` entry of a saved folder's quantization_config: stage name -> its config (or True)."""
    stages: dict[str, object] = {"oneshot": True}
    if config.bqpo:
        stages["bqpo"] = config.bqpo.to_dict()
    if config.e2e:
        stages["e2e_oqp"] = config.e2e.to_dict()
    return stages
