"""One entry for every method: ``compress_method(model, "gptq", bits=3, calib=ids)``.

gqsa itself goes through :func:`gqsa.compress` (packed GQSLinear layers). The baselines go
through the same sequential driver (:func:`gqsa.pipeline.compress`) with their own per-layer
solver and ``dense=True`` (the layers stay nn.Linear, holding the pruned / fake-quantized
weight); RTN needs no data and, without ``calib``, is applied to the weights directly.
Everything shares the calibration windows, block discovery and skipping rules.
"""

from __future__ import annotations

import dataclasses

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gqsa.baselines.config import BaselineConfig
from gqsa.baselines.gptq import gptq_layer
from gqsa.baselines.rtn import rtn_layer
from gqsa.baselines.save import save_baseline
from gqsa.baselines.sparsegpt import sparsegpt_layer
from gqsa.baselines.wanda import wanda_layer
from gqsa.compression import compress
from gqsa.config import GQSAConfig
from gqsa.hf import save_compressed
from gqsa.models import find_blocks, find_linears
from gqsa.pipeline import run_blocks
from gqsa.size import BITS_CONVENTION, model_stats

ALL_METHODS = ("gqsa", "rtn", "gptq", "sparsegpt", "wanda")
SOLVERS = {"rtn": rtn_layer, "gptq": gptq_layer, "sparsegpt": sparsegpt_layer, "wanda": wanda_layer}
DEFAULT_PATTERN = {"gqsa": "group", "rtn": "dense", "gptq": "dense", "sparsegpt": "unstructured",
                   "wanda": "unstructured"}


@dataclass
class MethodReport:
    """What one ``compress_method`` call did.

    ``config`` is the :class:`GQSAConfig` (gqsa) or :class:`BaselineConfig` that was run;
    ``bits_per_weight`` (compressed linears) and ``accounting`` (:func:`gqsa.size.model_stats`
    without its per-layer list: whole-model bytes, bits over all linears, parts) follow
    :mod:`gqsa.size`; ``layers`` holds the driver's per-layer stats (name, shape, sparsity,
    rel_output_error, seconds).
    """

    method: str
    config: GQSAConfig | BaselineConfig
    bits_per_weight: float
    layers: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    accounting: dict[str, Any] = field(default_factory=dict)

    def settings(self) -> dict[str, Any]:
        """The config as JSON-ready dict, with the method name."""
        d = self.config.to_dict()
        d.pop("quant_method", None)
        return {**d, "method": self.method}

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "settings": self.settings(), "bits_per_weight": self.bits_per_weight,
                "bits_convention": BITS_CONVENTION, "accounting": self.accounting, "seconds": self.seconds,
                "layers": self.layers}


def make_config(method: str, pattern: str | None = None, bits: int | None = None, group_size: int | None = None,
                sparsity: float | None = None, **options: Any) -> GQSAConfig | BaselineConfig:
    """The config of ``method`` with per-method defaults: pattern as in ``DEFAULT_PATTERN``;
    gqsa: :class:`GQSAConfig`'s own defaults; baselines: bits 4 (16 = no quantization for
    sparsegpt/wanda), group size 128, sparsity 0.5 for unstructured patterns. ``options`` go
    to the config."""
    if method not in ALL_METHODS:
        raise ValueError(f"method must be one of {ALL_METHODS}, got {method!r}")
    pattern = pattern or DEFAULT_PATTERN[method]
    if method == "gqsa":
        if pattern != "group":
            raise ValueError(f"gqsa takes pattern 'group', got {pattern!r}")
        given = {"group_size": group_size, "sparsity": sparsity, "bits": bits}
        return GQSAConfig(**{k: v for k, v in given.items() if v is not None}, **options)
    if sparsity is None and pattern == "unstructured":
        sparsity = 0.5
    return BaselineConfig(method=method, pattern=pattern, sparsity=sparsity, bits=bits,
                          group_size=group_size or 128, **options)


def compress_method(model: nn.Module, method: str, pattern: str | None = None, bits: int | None = None,
                    group_size: int | None = None, sparsity: float | None = None,
                    calib: torch.Tensor | None = None, device: torch.device | str | None = None,
                    batch_size: int = 8, progress: bool = True, **options: Any) -> MethodReport:
    """Compress ``model`` in place with ``method``; returns a :class:`MethodReport`.

    Args:
        model: a transformers causal LM.
        method: ``gqsa``, ``rtn``, ``gptq``, ``sparsegpt`` or ``wanda``.
        pattern: ``group`` (gqsa), ``dense`` (rtn, gptq), ``unstructured`` or ``N:M`` such as
            ``2:4`` (sparsegpt, wanda); default per method.
        bits, group_size, sparsity: see :func:`make_config` for the defaults.
        calib: calibration token ids [n, L] int64; needed by all but rtn.
        device, batch_size, progress: as in :func:`gqsa.compress`.
        options: further config fields (``act_order``, ``sym``, ``damp``, ``block_size``,
            ``skip``; for gqsa also ``saliency``, ``balance``, ...).
    """
    config = make_config(method, pattern, bits, group_size, sparsity, **options)
    if calib is None and method != "rtn":
        raise ValueError(f"method {method!r} needs calibration data (calib)")
    t0 = time.perf_counter()
    kw = {"device": device, "batch_size": batch_size, "progress": progress}
    if method == "gqsa":
        layers = compress(model, config, calib, **kw).layers
        # a size budget chose the sparsity: report the mean it chose (the per-layer map is in the model's config)
        config = dataclasses.replace(config, sparsity=model.config.quantization_config["sparsity"])
    else:
        layers = (rtn_in_place(model, config) if calib is None
                  else run_blocks(model, config, calib, solve=SOLVERS[method], dense=True, **kw).layers)
    stats = model_stats(model, None if method == "gqsa" else config)
    stats.pop("layers")
    return MethodReport(method, config, stats["bits_per_weight"], layers, time.perf_counter() - t0, stats)


@torch.no_grad()
def rtn_in_place(model: nn.Module, config: BaselineConfig) -> list[dict[str, Any]]:
    """RTN of every (non-skipped) linear of the decoder blocks, without calibration data."""
    blocks_name, blocks = find_blocks(model)
    stats = []
    for i, block in enumerate(blocks):
        for name, lin in find_linears(block).items():
            full = f"{blocks_name}.{i}.{name}"
            if config.skips(full):
                continue
            t0 = time.perf_counter()
            lin.weight.data = rtn_layer(lin.weight, None, config).weight.to(lin.weight.dtype)
            stats.append({"name": full, "shape": [lin.out_features, lin.in_features], "sparsity": 0.0,
                          "seconds": time.perf_counter() - t0})
    return stats


def save_method(model: nn.Module, report: MethodReport, out: str | os.PathLike,
                source: str | os.PathLike | None = None, overwrite: bool = False,
                log: dict[str, Any] | None = None) -> Path:
    """Save a model compressed by :func:`compress_method`: a gqsa folder for gqsa, a dense
    transformers folder with a ``gqsa_baseline`` entry in config.json otherwise."""
    if isinstance(report.config, GQSAConfig):
        return save_compressed(model, out, source=source, overwrite=overwrite, log=log)
    description = {**report.settings(), "bits_per_weight": report.bits_per_weight,
                   "bits_per_weight_all_linears": report.accounting.get("bits_per_weight_all_linears"),
                   "model_bytes": report.accounting.get("model_bytes"), "bits_convention": BITS_CONVENTION}
    return save_baseline(model, out, description, source=source, overwrite=overwrite, log=log)
