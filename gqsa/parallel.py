"""Tensor-parallel loading of a saved gqsa folder: each rank reads only its shards.

Run one process per device (``torchrun --nproc-per-node P script.py``) and in each::

    device = gqsa.parallel.init_distributed()      # NCCL on GPUs, gloo on CPU
    model = gqsa.parallel.load_tp("out", device=device)
    logits = model(ids.to(device)).logits           # the same on every rank

The placement is the model's own ``config.base_model_tp_plan`` (LLaMA, Qwen2, Mistral: q/k/v
and gate/up ``colwise``, o and down ``rowwise``), as transformers' tensor parallelism uses it.
Each planned layer becomes a normal :class:`~gqsa.layer.GQSLinear` (or ``nn.Linear``, for a
layer left dense) holding this rank's shard (:mod:`gqsa.shard`), with its own kernel plan on
GPU. A row-parallel layer's partial output is all-reduced by a forward hook (as gpt-fast's
``tp.py`` does); its bias lives on rank 0 only, so it is added once. Everything outside the
plan (embeddings, norms, ``lm_head``) is replicated. Attention heads split evenly across ranks:
the attention modules of these families infer the head count from the projections' width, and
``model._tp_size`` tells ``generate`` to size a static cache per rank as transformers' TP does.
"""

from __future__ import annotations

import os
import re
from contextlib import ExitStack

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
from safetensors import safe_open
from torch import nn

from gqsa.hf import expand_layers, load_state, open_compressed, validate_layers
from gqsa.layer import GQSLinear
from gqsa.models import set_submodule
from gqsa.shard import read_colwise, read_colwise_v2, read_rowwise, read_rowwise_v2, rowwise_groups, shard_range

STYLES = ("colwise", "rowwise")
HEAD_ATTRS = ("num_heads", "num_key_value_heads")  # attention attributes some families keep per module


def resolve_plan(model: nn.Module) -> dict[str, str]:
    """Module name -> ``colwise``/``rowwise`` for every module of ``model`` that its config's
    ``base_model_tp_plan`` names (patterns like ``layers.*.self_attn.q_proj``, relative to the
    base model)."""
    patterns = dict(getattr(model.config, "base_model_tp_plan", None) or {})
    if not patterns:
        raise ValueError(f"{type(model).__name__} has no base_model_tp_plan; pass plan={{module: style}}")
    prefix = model.base_model_prefix + "."
    plan = {}
    for name, _ in model.named_modules():
        wildcard = re.sub(r"\.\d+(\.|$)", lambda m: ".*" + m.group(1), name.removeprefix(prefix))
        if wildcard in patterns:
            plan[name] = patterns[wildcard]
    return plan


def check_world_size(model: nn.Module, plan: dict[str, str], world_size: int) -> None:
    """Raise a ValueError naming the constraint when ``world_size`` cannot split the model:
    attention heads, KV heads, a column-parallel layer's rows, a row-parallel layer's column
    groups (GQSLinear) or columns (nn.Linear)."""
    text = model.config.get_text_config()
    for attr in ("num_attention_heads", "num_key_value_heads"):
        if getattr(text, attr, None) is not None:
            shard_range(getattr(text, attr), 0, world_size, f"{attr} of the model")
    for name, style in plan.items():
        if style not in STYLES:
            raise ValueError(f"tensor-parallel style {style!r} of {name!r} is not supported (only {STYLES})")
        m = model.get_submodule(name)
        if style == "colwise":
            shard_range(m.out_features, 0, world_size, f"out_features of {name!r}")
        elif isinstance(m, GQSLinear):
            rowwise_groups(m.in_features, m.group_size, 0, world_size, name)
        else:
            shard_range(m.in_features, 0, world_size, f"in_features of {name!r}")


def load_shards(path: str | os.PathLike, rank: int, world_size: int, device: torch.device | str = "cpu",
                dtype: torch.dtype | None = None, plan: dict[str, str] | None = None,
                verify: bool = True) -> nn.Module:
    """Rank ``rank``'s part of the compressed folder ``path``: the planned layers replaced by
    their shards, everything else whole. No communication: the all-reduces are wired by
    :func:`load_tp`. ``dtype`` is that of the dense parts (default: the saved one). The folder
    is checked as :func:`gqsa.load` checks it (``verify``: the sha256 of its weight files, read
    whole by every rank) and every shard is validated."""
    model, qc, dtype, weight_files = open_compressed(path, dtype, verify=verify)
    plan = resolve_plan(model) if plan is None else plan
    check_world_size(model, plan, world_size)
    with ExitStack() as stack:
        files = [stack.enter_context(safe_open(f, framework="pt", device=str(device)))
                 for f in weight_files]
        where = {k: f for f in files for k in f.keys()}
        for name, style in plan.items():
            shard = _read_shard(model.get_submodule(name), style, where, name, rank, world_size, dtype)
            set_submodule(model, name, shard)
        planned = tuple(n + "." for n in plan)
        state = {k: f.get_tensor(k) for k, f in where.items() if not k.startswith(planned)}
    load_state(model, state, dtype)
    expand_layers(model)  # compressed layers outside the plan, whole
    validate_layers(model)
    _split_heads(model, world_size)
    model.config.quantization_config = qc
    return model.eval()


def _read_shard(m: nn.Module, style: str, where: dict, name: str, rank: int, world_size: int,
                dtype: torch.dtype) -> nn.Module:
    """The shard of one planned layer (GQSLinear or nn.Linear), read from the open files."""
    prefix = name + "."
    bias = where[prefix + "bias"].get_slice(prefix + "bias") if prefix + "bias" in where else None
    if style == "colwise":
        r0, r1 = shard_range(m.out_features, rank, world_size, f"out_features of {name!r}")
        bias = None if bias is None else bias[r0:r1].to(dtype)
    else:  # rowwise: the bias is added once, after the all-reduce, by rank 0's shard
        bias = None if bias is None or rank != 0 else bias[:].to(dtype)
    if isinstance(m, GQSLinear):
        f = where[prefix + "codes"]
        args = (f, prefix, m.out_features, m.in_features, m.group_size, m.bits, rank, world_size)
        if m.storage == 1:
            packed = {"colwise": read_colwise, "rowwise": read_rowwise}[style](*args)
        else:  # a lean folder, version 2 or 3
            packed = {"colwise": read_colwise_v2, "rowwise": read_rowwise_v2}[style](*args, version=m.storage)
        return GQSLinear.from_packed(packed, bias)
    w = where[prefix + "weight"].get_slice(prefix + "weight")
    if style == "colwise":
        w = w[r0:r1]
    else:
        c0, c1 = shard_range(m.in_features, rank, world_size, f"in_features of {name!r}")
        w = w[:, c0:c1]
    lin = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None, device="meta")
    lin.weight = nn.Parameter(w.to(dtype), requires_grad=False)
    if bias is not None:
        lin.bias = nn.Parameter(bias, requires_grad=False)
    return lin


def _split_heads(model: nn.Module, world_size: int) -> None:
    """Per-rank head counts: ``model._tp_size`` (read by ``generate`` for a static cache, as in
    transformers' TP) and the head attributes that some attention modules keep."""
    model._tp_size = world_size
    for m in model.modules():
        for attr in HEAD_ATTRS:
            if isinstance(getattr(m, attr, None), int) and hasattr(m, "head_dim"):
                setattr(m, attr, getattr(m, attr) // world_size)


def wire_all_reduce(model: nn.Module, plan: dict[str, str], group: dist.ProcessGroup) -> int:
    """Sum the outputs of the row-parallel layers over ``group`` (a forward hook on each);
    returns the number of hooks."""
    def all_reduce(_module, _inputs, output):
        return funcol.wait_tensor(funcol.all_reduce(output, "sum", group))

    rows = [name for name, style in plan.items() if style == "rowwise"]
    for name in rows:
        model.get_submodule(name).register_forward_hook(all_reduce)
    return len(rows)


def load_tp(path: str | os.PathLike, group=None, device: torch.device | str | None = None,
            dtype: torch.dtype | None = None, plan: dict[str, str] | None = None, verify: bool = True) -> nn.Module:
    """This rank's tensor-parallel model of the compressed folder ``path``.

    Args:
        group: a ``ProcessGroup`` or 1-D ``DeviceMesh`` (default: the world group); the
            process group must be initialized (:func:`init_distributed`).
        device: where this rank's shards go (default: ``cuda:LOCAL_RANK`` when CUDA is there, else cpu).
        plan: module name -> ``colwise``/``rowwise`` (default: :func:`resolve_plan`).
        verify: check the folder's sha256 record (see :func:`load_shards`).
    Returns:
        the model; its forward gives the full logits on every rank.
    """
    if not dist.is_initialized():
        raise ValueError("torch.distributed is not initialized; call gqsa.parallel.init_distributed() first")
    group = group.get_group() if hasattr(group, "get_group") else (group or dist.group.WORLD)
    rank, world_size = dist.get_rank(group), dist.get_world_size(group)
    device = torch.device(device) if device is not None else default_device()
    model = load_shards(path, rank, world_size, device, dtype, plan, verify)
    wire_all_reduce(model, resolve_plan(model) if plan is None else plan, group)
    return model


def default_device() -> torch.device:
    """``cuda:LOCAL_RANK`` when CUDA is available (torchrun sets LOCAL_RANK), else cpu."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def init_distributed() -> torch.device:
    """Initialize the default process group from torchrun's environment: NCCL on GPUs, gloo
    on CPU. Returns this rank's device."""
    device = default_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device
