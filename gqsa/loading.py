"""Opening a model folder for gqsa: original or compressed, local or from a hub.

``smollm2`` is an alias for the offline default model (built from a PyPI package by
:func:`gqsa.assets.smollm2_path`); any other name goes to ``from_pretrained`` (a local
folder, or a hub id for users who have a hub).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer

DEFAULT_MODEL = "smollm2"


def resolve_model(name: str) -> str:
    """Local path of the ``smollm2`` alias; anything else unchanged."""
    if name == DEFAULT_MODEL:
        from gqsa.assets import smollm2_path
        return str(smollm2_path())
    return name


def is_compressed(path: str) -> bool:
    """True for a local folder whose config.json has a gqsa quantization_config."""
    cfg = Path(path) / "config.json"
    if not cfg.exists():
        return False
    qc = json.loads(cfg.read_text()).get("quantization_config") or {}
    return qc.get("quant_method") == "gqsa"


def pick_device(device: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` -> float32 on CPU (fast and exact there), float16 on GPU."""
    if dtype == "auto":
        return torch.float32 if device.type == "cpu" else torch.float16
    if dtype not in ("float32", "float16", "bfloat16"):
        raise ValueError(f"dtype must be auto, float32, float16 or bfloat16, got {dtype!r}")
    return getattr(torch, dtype)


def load_model(name: str, device: torch.device, dtype: torch.dtype, trust_remote_code: bool = False) -> nn.Module:
    """A causal LM from a folder or hub id, compressed (via :func:`gqsa.load`) or not."""
    path = resolve_model(name)
    if is_compressed(path):
        from gqsa.hf import load
        return load(path, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code)
    return model.to(device).eval()


def load_tokenizer(name: str, trust_remote_code: bool = False):
    """The tokenizer saved beside the model."""
    return AutoTokenizer.from_pretrained(resolve_model(name), trust_remote_code=trust_remote_code)
