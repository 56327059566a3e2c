"""Saving and loading compressed models as normal transformers folders.

A saved folder holds safetensors shards, ``config.json`` with a ``quantization_config``
(``quant_method: gqsa``, the :class:`GQSAConfig`, the format version and the kept-group
count of every compressed layer), and the tokenizer/generation files of the source.

Two ways back: :func:`load` (ours, builds the model on the meta device, swaps in
GQSLinear layers and assigns the safetensors tensors), and, after ``import gqsa``,
``AutoModelForCausalLM.from_pretrained(path)`` through the quantizer registered in
:mod:`gqsa.hf_quantizer`. Weights are only ever read through safetensors.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

from gqsa.config import GQSAConfig
from gqsa.format import FORMAT_VERSION, SUPPORTED_FORMAT_VERSIONS, TENSOR_NAMES, validate_packed
from gqsa.format_v2 import STORED_TENSORS, to_stored
from gqsa.layer import GQSLinear
from gqsa.models import set_submodule

CHECKSUMS = "gqsa_checksums.json"

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json", "generation_config.json", "chat_template.jinja")


def quantization_dict(model: nn.Module, config: GQSAConfig, stages: dict[str, Any] | None = None,
                      version: int = 1) -> dict:
    """The ``quantization_config`` entry: config, format version, per-layer kept-group counts.

    ``version`` is that of the tensors the state dict it goes with holds: 1 for a model in memory
    (so that transformers' own ``save_pretrained`` writes a valid version-1 folder), 2 in what
    :func:`save_compressed` writes."""
    layers = {n: {"nnz": m.nnz, "bias": m.bias is not None}
              for n, m in model.named_modules() if isinstance(m, GQSLinear)}
    return {**config.to_dict(), "format_version": version, "layers": layers, "stages": stages or {}}


def save_compressed(model: nn.Module, out: str | os.PathLike, source: str | os.PathLike | None = None,
                    overwrite: bool = False, max_shard_size: str = "2GB", log: dict[str, Any] | None = None) -> Path:
    """Save a model that :func:`gqsa.compress` compressed, atomically, to ``out`` (see
    :func:`save_pretrained_atomic`); its config and stages come from the model (``compress``
    stored them), the per-layer kept-group counts from its layers. ``source``: the original
    model folder, whose tokenizer files are copied. ``log`` is written as ``gqsa_log.json``
    inside the same atomic step."""
    qc = getattr(model.config, "quantization_config", None)
    if not isinstance(qc, dict) or qc.get("quant_method") != "gqsa":
        raise ValueError("the model carries no gqsa quantization_config: compress it with gqsa.compress first")
    config, stages = GQSAConfig.from_dict(qc), qc.get("stages")
    files = {} if log is None else {"gqsa_log.json": json.dumps(log, indent=2, default=str)}
    model.config.quantization_config = quantization_dict(model, config, stages, FORMAT_VERSION)
    try:
        return save_pretrained_atomic(model, out, source, overwrite, max_shard_size, files, stored_state(model))
    finally:  # the model in memory holds version-1 tensors
        model.config.quantization_config = quantization_dict(model, config, stages)


def stored_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s state dict as a folder stores it: every GQSLinear's version-1 tensors replaced
    by its lean version-3 ones (:func:`gqsa.format_v2.to_stored`; the scales move onto its grids)."""
    state = model.state_dict()
    for name, m in model.named_modules():
        if isinstance(m, GQSLinear):
            for t in TENSOR_NAMES:
                del state[f"{name}.{t}"]
            state.update({f"{name}.{t}": v.contiguous() for t, v in to_stored(m.packed()).items()})
    return state


def save_pretrained_atomic(model: nn.Module, out: str | os.PathLike, source: str | os.PathLike | None = None,
                           overwrite: bool = False, max_shard_size: str = "2GB",
                           files: dict[str, str] | None = None, state_dict: dict | None = None) -> Path:
    """``model.save_pretrained(out)`` that never leaves a half-written folder.

    Everything is written into a temporary folder beside ``out`` and renamed into place
    at the end, so an interrupted save leaves no folder at ``out``. Tokenizer and
    generation files are copied from ``source`` (the original model folder) when given;
    ``files`` (name -> text) are written beside the weights; ``state_dict``, if given, is
    saved instead of the model's own.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (CLI: --overwrite) to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        model.save_pretrained(tmp, max_shard_size=max_shard_size, state_dict=state_dict)
        (tmp / CHECKSUMS).write_text(json.dumps({f.name: _sha256(f) for f in sorted(tmp.glob("*.safetensors"))},
                                                indent=2))
        _copy_tokenizer_files(source, tmp)
        for name, text in (files or {}).items():
            (tmp / name).write_text(text)
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def weight_files(path: str | os.PathLike) -> list[Path]:
    """The safetensors files of a local model folder; a clear error when there are none
    (gqsa never unpickles weights, so a folder with only ``.bin`` files is refused)."""
    path = Path(path)
    files = sorted(path.glob("*.safetensors"))
    if files:
        return files
    pickled = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt"))
    if pickled:
        raise ValueError(f"{path} holds only pickled weights ({', '.join(pickled[:3])}); gqsa reads safetensors only, "
                         f"as pickle files can run code. Convert it where you trust it: "
                         f"AutoModelForCausalLM.from_pretrained(folder).save_pretrained(new_folder)")
    raise ValueError(f"{path} holds no weight files (*.safetensors)")


def verify_checksums(path: str | os.PathLike) -> int:
    """Check every weight file against the sha256 recorded at save time (``gqsa_checksums.json``);
    returns the number of files checked (0 when the folder has no record, as for folders gqsa
    did not write). A ValueError names a damaged or changed file."""
    weight_files(path)
    record = Path(path) / CHECKSUMS
    if not record.exists():
        return 0
    expected = json.loads(record.read_text())
    for name, digest in expected.items():
        f = Path(path) / name
        if not f.exists():
            raise ValueError(f"{f} is missing (listed in {CHECKSUMS})")
        if _sha256(f) != digest:
            raise ValueError(f"{f} does not match the sha256 recorded when it was saved: the file is damaged or was "
                             f"changed (pass --no-verify / verify=False to load it anyway)")
    return len(expected)


def read_safetensors(files: list[Path], device: str = "cpu") -> dict[str, torch.Tensor]:
    """All tensors of ``files``; a truncated or non-safetensors file is a ValueError naming it."""
    state = {}
    for f in files:
        try:
            with safe_open(f, framework="pt", device=device) as st:
                state.update({k: st.get_tensor(k) for k in st.keys()})
        except (SafetensorError, OSError) as e:
            raise ValueError(f"{f} is truncated or not a safetensors file ({e})") from None
    return state


def _copy_tokenizer_files(source: str | os.PathLike | None, dest: Path) -> None:
    if source is None or not Path(source).is_dir():
        return
    for name in TOKENIZER_FILES:
        if (Path(source) / name).exists() and not (dest / name).exists():
            shutil.copy2(Path(source) / name, dest / name)


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move ``tmp`` to ``out``; an existing ``out`` is moved aside first and removed after."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_quantization_config(path: str | os.PathLike) -> dict:
    """The gqsa ``quantization_config`` of a saved folder, checked for method and version."""
    cfg_path = Path(path) / "config.json"
    if not cfg_path.exists():
        raise FileNotFoundError(f"{path} has no config.json: not a transformers model folder")
    qc = json.loads(cfg_path.read_text()).get("quantization_config")
    if not qc or qc.get("quant_method") != "gqsa":
        raise ValueError(f"{path} is not a gqsa-compressed model (quantization_config: {qc and qc.get('quant_method')})")
    check_format_version(qc)
    return qc


def check_format_version(qc: dict) -> None:
    """Raise a clear error for a packed-format version this gqsa cannot read."""
    version = qc.get("format_version")
    if version not in SUPPORTED_FORMAT_VERSIONS:
        raise ValueError(f"gqsa format version {version} is not supported (this gqsa reads versions "
                         f"{', '.join(map(str, SUPPORTED_FORMAT_VERSIONS))}); re-compress the model or install a "
                         f"matching gqsa")


def replace_with_gqs_layers(model: nn.Module, qc: dict, device: torch.device | str | None = None) -> None:
    """Swap the nn.Linear layers named in ``qc['layers']`` for empty GQSLinear layers holding the
    tensors of the folder's format version (versions 2 and 3: expand them after loading,
    :func:`expand_layers`)."""
    G, bits, storage = qc["group_size"], qc["bits"], qc["format_version"]
    dtype = getattr(model.config, "dtype", None) or torch.float16
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    for name, info in qc["layers"].items():
        lin = model.get_submodule(name)
        new = GQSLinear(lin.in_features, lin.out_features, info["nnz"], G, bits, info["bias"], dtype, device=device,
                        storage=storage)
        set_submodule(model, name, new)


def load(path: str | os.PathLike, device: torch.device | str = "cpu", dtype: torch.dtype | None = None,
         trust_remote_code: bool = False, verify: bool = True) -> nn.Module:
    """Load a gqsa-compressed folder as a transformers causal LM on ``device``.

    ``dtype`` is the dtype of the dense parts (embeddings, norms, skipped layers);
    default: the dtype saved in the config. ``verify``: check the weight files against the
    sha256 recorded at save time (reads every byte once; turn off for huge models you trust).
    Every packed layer is validated (:func:`gqsa.format.validate_packed`) and every weight of
    the model must come from the folder: anything missing or unexpected is a ValueError.
    """
    model, qc, dtype, files = open_compressed(path, dtype, trust_remote_code, verify)
    state = read_safetensors(files, str(device))
    _check_kept_counts(qc, state)
    load_state(model, state, dtype)
    expand_layers(model)
    validate_layers(model)
    model.config.quantization_config = {**qc, "format_version": 1}  # what its state dict now holds
    return model.eval()


def open_compressed(path: str | os.PathLike, dtype: torch.dtype | None = None, trust_remote_code: bool = False,
                    verify: bool = True) -> tuple[nn.Module, dict, torch.dtype, list[Path]]:
    """The first steps of every load of a gqsa folder: its quantization_config (method and
    version checked), its safetensors files (no pickles), their sha256 if ``verify``, and the
    model skeleton on the meta device with empty GQSLinear layers. Returns (model, qc, the
    dtype of the dense parts, the weight files)."""
    qc = read_quantization_config(path)
    files = weight_files(path)
    if verify:
        verify_checksums(path)
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    config.quantization_config = None
    dtype = dtype or config_dtype(config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
    replace_with_gqs_layers(model, qc, device="meta")
    return model, qc, dtype, files


def _check_kept_counts(qc: dict, state: dict[str, torch.Tensor]) -> None:
    """config.json's kept-group count of each layer against the stored tensors' shapes."""
    for name, info in qc["layers"].items():
        stored = state.get(f"{name}.codes")
        if stored is None:
            raise ValueError(f"{name}: the weight files hold no packed tensors for this layer "
                             f"(config.json lists it as compressed)")
        if stored.shape[0] != info["nnz"]:
            raise ValueError(f"{name}: config.json says {info['nnz']} kept groups, the weight files hold "
                             f"{stored.shape[0]}: config.json and the weights do not belong together")


def expand_layers(model: nn.Module) -> None:
    """:meth:`GQSLinear.expand_storage` on every layer loaded from a lean (version 2 or 3) folder."""
    for name, m in model.named_modules():
        if isinstance(m, GQSLinear):
            m.expand_storage(name)


def validate_layers(model: nn.Module) -> None:
    """:func:`gqsa.format.validate_packed` on every GQSLinear of ``model``."""
    for name, m in model.named_modules():
        if isinstance(m, GQSLinear):
            validate_packed(m.packed(), name)


def config_dtype(config) -> torch.dtype:
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or torch.float16
    return getattr(torch, dtype) if isinstance(dtype, str) else dtype


def load_state(model: nn.Module, state: dict[str, torch.Tensor], dtype: torch.dtype) -> None:
    """Assign saved tensors (floating dense ones cast to ``dtype``), tie weights, check completeness."""
    gqs_names = {f"{n}.{t}" for n, m in model.named_modules() if isinstance(m, GQSLinear)
                 for t in TENSOR_NAMES + sum(STORED_TENSORS.values(), ())}
    state = {k: (v.to(dtype) if v.is_floating_point() and k not in gqs_names else v) for k, v in state.items()}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as e:  # size mismatches
        raise ValueError(f"checkpoint does not match the model: {str(e).splitlines()[-1].strip()}") from None
    model.tie_weights()
    rebuild_meta_buffers(model, next(iter(state.values())).device)
    still_meta = [n for n, p in list(model.named_parameters()) + list(model.named_buffers()) if p.is_meta]
    if unexpected or still_meta:
        raise ValueError(f"checkpoint does not match the model: unexpected {unexpected[:5]}, missing {still_meta[:5]}")


def rebuild_meta_buffers(model: nn.Module, device: torch.device) -> None:
    """Rebuild modules whose non-persistent buffers (rotary ``inv_freq``) were made on the
    meta device: they hold no parameters and are constructed again from their config."""
    for name, m in list(model.named_modules()):
        own = list(m.named_buffers(recurse=False))
        if own and any(b.is_meta for _, b in own) and not list(m.parameters(recurse=False)) and hasattr(m, "config"):
            with torch.device(device):
                set_submodule(model, name, type(m)(config=m.config))
