"""Opening a model folder for gqsa: original or compressed, local or from a hub.

``smollm2`` is an alias for the offline default model (built from a PyPI package by
:func:`gqsa.assets.smollm2_path`); any other name goes to ``from_pretrained`` (a local
folder, or a hub id for users who have a hub).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer

DEFAULT_MODEL = "smollm2"


def resolve_model(name: str) -> str:
    """Local path of the ``smollm2`` alias; an existing folder or a hub-id-like name unchanged.

    A name that is neither an existing folder nor of the hub's ``owner/name`` form is a
    FileNotFoundError saying the folder does not exist.
    """
    if name == DEFAULT_MODEL:
        from gqsa.assets import smollm2_path
        return str(smollm2_path())
    if Path(name).is_dir():
        return name
    if Path(name).exists():
        raise ValueError(f"{name} is a file, not a model folder")
    if not looks_like_hub_id(name):
        raise FileNotFoundError(f"model folder {name} does not exist (and it is not of the form owner/name of a "
                                f"hub id; the offline default model is 'smollm2')")
    return name


def looks_like_hub_id(name: str) -> bool:
    """``owner/name`` with the hub's characters, not a path that starts with ``.``, ``/`` or ``~``."""
    return re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", name) is not None and not name.startswith(".")


def is_compressed(path: str) -> bool:
    """True for a local folder whose config.json has a gqsa quantization_config."""
    cfg = Path(path) / "config.json"
    if not cfg.exists():
        return False
    qc = json.loads(cfg.read_text()).get("quantization_config") or {}
    return qc.get("quant_method") == "gqsa"


def pick_device(device: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cpu``, ``cuda`` and ``cuda:N`` as given,
    checked: a CUDA device this machine lacks is a ValueError saying why."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if re.fullmatch(r"cpu|cuda(:\d+)?", device) is None:
        raise ValueError(f"unknown device {device!r}: use cpu, cuda, cuda:N or auto")
    d = torch.device(device)
    if d.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is built without CUDA" if torch.version.cuda is None else "no GPU is visible"
            raise ValueError(f"--device {device}: CUDA is not available ({why}); use --device cpu")
        if d.index is not None and d.index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here")
    return d


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` -> float32 on CPU (fast and exact there), float16 on GPU."""
    if dtype == "auto":
        return torch.float32 if device.type == "cpu" else torch.float16
    if dtype not in ("float32", "float16", "bfloat16"):
        raise ValueError(f"dtype must be auto, float32, float16 or bfloat16, got {dtype!r}")
    return getattr(torch, dtype)


def load_model(name: str, device: torch.device, dtype: torch.dtype, trust_remote_code: bool = False,
               verify: bool = True) -> nn.Module:
    """A causal LM from a folder or hub id, compressed (via :func:`gqsa.load`) or not.

    Safetensors only; a load that leaves any weight missing or unexpected (a gqsa folder whose
    ``quantization_config`` was removed, a checkpoint of another architecture) is a ValueError,
    never a model with randomly initialised layers. ``verify``: check the sha256 that gqsa
    recorded when it saved the folder, if it did.
    """
    path = resolve_model(name)
    if is_compressed(path):
        from gqsa.hf import load
        return load(path, device=device, dtype=dtype, trust_remote_code=trust_remote_code, verify=verify)
    if Path(path).is_dir():
        from gqsa.hf import verify_checksums, weight_files
        weight_files(path)
        if verify:
            verify_checksums(path)
    model, info = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code,
                                                       use_safetensors=True, output_loading_info=True)
    _refuse_incomplete(path, info)
    return model.to(device).eval()


def _refuse_incomplete(path: str, info: dict) -> None:
    """Raise unless ``from_pretrained`` filled every weight from the checkpoint."""
    missing, unexpected = list(info.get("missing_keys") or []), list(info.get("unexpected_keys") or [])
    mismatched = list(info.get("mismatched_keys") or [])
    if not (missing or unexpected or mismatched):
        return
    packed = [k for k in unexpected if k.rsplit(".", 1)[-1] in ("codes", "col_idx", "row_ptr")]
    hint = (" It holds packed gqsa tensors, but its config.json has no gqsa quantization_config: restore that "
            "entry (or re-save the folder with gqsa)." if packed else "")
    raise ValueError(f"{path} does not fill the model: missing {sorted(missing)[:4]}, unexpected "
                     f"{sorted(unexpected)[:4]}, mismatched {[k[0] if isinstance(k, tuple) else k for k in mismatched][:4]}"
                     f" ({len(missing)}/{len(unexpected)}/{len(mismatched)} in all); refusing to run randomly "
                     f"initialised weights.{hint}")


def load_tokenizer(name: str, trust_remote_code: bool = False):
    """The tokenizer saved beside the model."""
    return AutoTokenizer.from_pretrained(resolve_model(name), trust_remote_code=trust_remote_code)
