"""Saving baseline outputs as normal dense transformers folders.

RTN, GPTQ, SparseGPT and Wanda outputs are held as dense nn.Linear weights (zeros where
pruned, dequantized values where quantized: "fake quantization"), since the packed gqsa
format holds neither per-weight masks nor N:M patterns. They are saved as plain
safetensors checkpoints, so ``AutoModelForCausalLM.from_pretrained`` loads them as dense
models; ``config.json`` carries a ``gqsa_baseline`` entry describing the method (its
:class:`BaselineConfig` and the bits per weight a real deployment would store). It is
deliberately not a ``quantization_config``: transformers would try to route that to a
quantizer.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from torch import nn

from gqsa.baselines.config import BaselineConfig
from gqsa.hf import save_pretrained_atomic

CONFIG_KEY = "gqsa_baseline"


def save_baseline(model: nn.Module, out: str | os.PathLike, description: dict[str, Any],
                  source: str | os.PathLike | None = None, overwrite: bool = False,
                  max_shard_size: str = "2GB", log: dict[str, Any] | None = None) -> Path:
    """Save a dense (fake-quantized / pruned) model atomically to ``out`` with ``description``
    as the ``gqsa_baseline`` entry of its config.json; tokenizer files are copied from ``source``;
    ``log`` is written as ``gqsa_log.json`` in the same atomic step."""
    setattr(model.config, CONFIG_KEY, description)
    files = {} if log is None else {"gqsa_log.json": json.dumps(log, indent=2, default=str)}
    return save_pretrained_atomic(model, out, source, overwrite, max_shard_size, files)


def read_baseline(path: str | os.PathLike) -> dict[str, Any] | None:
    """The ``gqsa_baseline`` entry of a saved folder's config.json, or None when it has none."""
    cfg = Path(path) / "config.json"
    if not cfg.exists():
        raise FileNotFoundError(f"{path} has no config.json: not a transformers model folder")
    return json.loads(cfg.read_text()).get(CONFIG_KEY)


def baseline_config(description: dict[str, Any]) -> BaselineConfig:
    """The :class:`BaselineConfig` of a ``gqsa_baseline`` entry (its other keys, the recorded
    accounting, are left out)."""
    names = {f.name for f in dataclasses.fields(BaselineConfig)}
    return BaselineConfig(**{k: v for k, v in description.items() if k in names})
