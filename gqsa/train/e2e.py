"""E2E-OQP: end-to-end training of the quantization scales of a compressed model.

GQSA's last stage, done as EfficientQAT's E2E-QP (arXiv 2407.11062, sec. 3.3): the integer
codes and the keep masks stay frozen, and only the per-group scales s (optionally also the
zero points z) of the real GQSLinear layers are trained, on the next-token loss over token
windows [n, L], with AdamW, gradient checkpointing and a warmup + cosine schedule.

How the packed layers become trainable without a second layer class: for the duration of
the training each GQSLinear's ``scales`` buffer (float16 [nnz]) is replaced by a float32
``nn.Parameter`` (the master copy) seen through a ``torch.nn.utils.parametrize``
parametrization that rounds it to float16 with a straight-through estimator, so that every
forward pass uses exactly the values that will be stored. Trained zeros work alike (float32
master, rounded and clamped to [0, 2^b - 1] with an STE). :mod:`gqsa.kernels.dispatch` sends
such layers to the differentiable reference (dequantize + matmul; the GPU kernels have no
backward). Afterwards ``scales`` is a float16 buffer and ``zeros`` a uint8 buffer again,
under the same names, so the saved state dict has the same keys, shapes and dtypes; the
``codes``, ``col_idx`` and ``row_ptr`` buffers are never written.

Memory: the packed model, nnz float32 scales with two AdamW moments (12 bytes per kept
group), one block's activations at a time (gradient checkpointing) plus the checkpointed
block inputs, and one dequantized [N, K] weight at a time on the reference path.

Precision: on CUDA the forward passes run under bfloat16 autocast (``E2EConfig.amp``) with the
model in float32 (or bfloat16). A float16 model is trained in float32 and returned in float16
(its dense parts are not trained, so the round trip is exact); this costs twice the memory of
its dense parts during the stage. Training it in float16 does not work on SmolLM2: its float16
gradients overflow (its massive activations), so every optimizer step was skipped, both with
GradScaler's default first scale and with one fitted on the first micro-batch (H200, 2026-12-02,
W4 S50 G16, 64 windows: perplexity unchanged to the last digit, 615.755 and 838.764).
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from tqdm.auto import tqdm

from gqsa.config import E2EConfig
from gqsa.layer import GQSLinear
from gqsa.pipeline import peak_memory
from gqsa.train.bqpo import as_stored_scale, ste


class _StoredScale(nn.Module):
    """Parametrization: the float32 master scale as float16 will store it (STE)."""

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return ste(s, as_stored_scale)


class _IntegerZero(nn.Module):
    """Parametrization: the float32 master zero point rounded and clamped to the grid (STE)."""

    def __init__(self, bits: int):
        super().__init__()
        self.maxq = (1 << bits) - 1

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return ste(z, lambda t: t.round().clamp(0, self.maxq))


def make_trainable(layers: list[GQSLinear], train_zeros: bool) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Turn each layer's ``scales`` (and ``zeros``) into a parametrized float32 master
    parameter; returns the scale and zero-point parameters."""
    scales, zeros = [], []
    for layer in layers:
        layer.scales = nn.Parameter(layer.scales.detach().float())
        parametrize.register_parametrization(layer, "scales", _StoredScale())
        scales.append(layer.parametrizations.scales.original)
        if train_zeros:
            layer.zeros = nn.Parameter(layer.zeros.detach().float())
            parametrize.register_parametrization(layer, "zeros", _IntegerZero(layer.bits))
            zeros.append(layer.parametrizations.zeros.original)
    return scales, zeros


def make_frozen(layers: list[GQSLinear]) -> None:
    """Inverse of :func:`make_trainable`: store the trained values as the float16 ``scales``
    and uint8 ``zeros`` buffers, under their usual names."""
    for layer in layers:
        for name, dtype in (("scales", torch.float16), ("zeros", torch.uint8)):
            if parametrize.is_parametrized(layer, name):
                with torch.no_grad():
                    value = getattr(layer, name).detach().to(dtype)
                parametrize.remove_parametrizations(layer, name, leave_parametrized=False)
                delattr(layer, name)
                layer.register_buffer(name, value)


def warmup_cosine(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """LR multiplier of step t: linear warmup from 1/(w+1) to 1 over the first w steps, then
    cosine decay to 0. The decay is HF's ``get_cosine_schedule_with_warmup`` (which
    EfficientQAT's trainer uses); HF's warmup starts at 0, which would waste the first step
    of a run that has only a few."""
    def factor(t: int) -> float:
        if t < warmup_steps:
            return (t + 1) / (warmup_steps + 1)
        progress = (t - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return factor


@torch.no_grad()
def mean_loss(model: nn.Module, windows: torch.Tensor, batch_size: int, device: torch.device) -> float:
    """Mean next-token loss (nats per predicted token) of ``model`` on windows [n, L] int64."""
    was_training = model.training
    model.eval()
    total = 0.0
    for i in range(0, windows.shape[0], batch_size):
        batch = windows[i:i + batch_size].to(device)
        total += float(model(input_ids=batch, labels=batch, use_cache=False).loss) * batch.shape[0]
    model.train(was_training)
    return total / windows.shape[0]


def _steps(n: int, config: E2EConfig) -> tuple[int, int]:
    """Forward passes per epoch and optimizer steps in all."""
    micro = math.ceil(n / config.batch_size)
    return micro, config.epochs * math.ceil(micro / config.grad_accum)


def autocast_dtype(model_dtype: torch.dtype, device: torch.device, amp: bool) -> torch.dtype | None:
    """The autocast dtype of E2E-OQP's forward passes, or None for none: bfloat16 on CUDA with
    ``amp`` (the model is then float32, or bfloat16 itself; a float16 model is trained in float32,
    see :func:`train_scales`), none on the CPU or with ``amp`` off."""
    if not amp or device.type != "cuda":
        return None
    return torch.bfloat16


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(teacher || student) per token (Hinton et al. 2015), logits [B, L, V] -> scalar."""
    t = temperature
    s = F.log_softmax(student.float().flatten(0, -2) / t, -1)
    p = F.log_softmax(teacher.float().flatten(0, -2) / t, -1)
    return F.kl_div(s, p, log_target=True, reduction="batchmean") * t * t


def _loss(model: nn.Module, batch: torch.Tensor, config: E2EConfig, teacher: nn.Module | None) -> torch.Tensor:
    """The training loss of one batch: the LM loss, mixed with the distillation term if asked."""
    out = model(input_ids=batch, labels=batch, use_cache=False)
    if not config.distill:
        return out.loss
    # a float16 teacher runs in its own dtype: float16 and bfloat16 tensors cannot meet in one autocast op
    # ("Unexpected floating ScalarType in at::autocast::prioritize")
    own = next(teacher.parameters()).dtype == torch.float16
    with torch.no_grad(), torch.autocast(batch.device.type, enabled=False) if own else contextlib.nullcontext():
        target = teacher(input_ids=batch, use_cache=False).logits
    return (1 - config.distill) * out.loss + config.distill * distill_loss(out.logits, target, config.temperature)


def _run_epochs(model: nn.Module, windows: torch.Tensor, groups: list[dict], config: E2EConfig,
                device: torch.device, progress: bool, amp_dtype: torch.dtype | None,
                teacher: nn.Module | None = None) -> list[float]:
    """The training loop; returns the loss of every optimizer step (mean over its windows)."""
    params = [p for g in groups for p in g["params"]]
    opt = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    micro, total = _steps(windows.shape[0], config)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(total, math.ceil(total * config.warmup_ratio)))
    gen = torch.Generator().manual_seed(config.seed)
    step_losses = []
    with tqdm(total=total, desc="e2e-oqp", disable=not progress) as bar:
        for _ in range(config.epochs):
            perm, acc = torch.randperm(windows.shape[0], generator=gen), torch.zeros((), device=device)
            for m in range(micro):
                first = m - m % config.grad_accum
                in_step = min(config.grad_accum, micro - first)  # forward passes in this step
                batch = windows[perm[m * config.batch_size:(m + 1) * config.batch_size]].to(device)
                with torch.autocast(device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
                    loss = _loss(model, batch, config, teacher)
                (loss / in_step).backward()
                acc += loss.detach().float() / in_step  # on the device: one sync per optimizer step
                if m - first + 1 == in_step:
                    if config.max_grad_norm > 0:
                        torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
                    opt.step()
                    sched.step()
                    opt.zero_grad(set_to_none=True)
                    step_losses.append(acc.item())
                    bar.update()
                    bar.set_postfix(loss=f"{step_losses[-1]:.4f}")
                    acc = torch.zeros((), device=device)
    return step_losses


def _freeze_all(model: nn.Module) -> list[tuple[nn.Parameter, bool]]:
    state = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in state:
        p.requires_grad_(False)
    return state


def train_scales(model: nn.Module, windows: torch.Tensor, config: E2EConfig = E2EConfig(),
                 device: torch.device | str | None = None, progress: bool = True,
                 evaluate: bool = True, teacher: nn.Module | None = None) -> dict[str, Any]:
    """Run E2E-OQP on a compressed model, in place.

    Args:
        model: a transformers causal LM holding GQSLinear layers (moved to ``device`` if given).
        windows: training token windows [n, L] int64 (e.g. ``gqsa.data.calibration_windows``).
        config: the :class:`E2EConfig`.
        evaluate: also measure the mean loss on ``windows`` before and after (two forward passes).
        teacher: the dense model, for ``config.distill`` > 0 (moved to ``device`` for the run and
            back); its logits are recomputed for every batch, so it costs a forward pass, not memory.
    Returns:
        A JSON-able log: losses (per step, before/after), steps, trainable count, time, peak memory.
    """
    layers = [m for m in model.modules() if isinstance(m, GQSLinear)]
    if not layers:
        raise ValueError("the model holds no GQSLinear layer: compress it before E2E-OQP")
    if config.distill and teacher is None:
        raise ValueError("E2EConfig.distill > 0 needs the dense model as teacher (gqsa.compress keeps one)")
    if windows.dim() != 2 or windows.shape[1] < 2 or windows.dtype != torch.int64:
        raise ValueError(f"windows must be int64 token ids [n, L] with L >= 2, got {tuple(windows.shape)} "
                         f"{windows.dtype}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    model_dtype = model.get_input_embeddings().weight.dtype
    amp_dtype = autocast_dtype(model_dtype, device, config.amp)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    before = mean_loss(model, windows, config.batch_size, device) if evaluate else None
    t_train = time.perf_counter()
    flags, was_training = _freeze_all(model), model.training
    had_checkpointing = getattr(model, "is_gradient_checkpointing", False)
    scales, zeros = make_trainable(layers, config.train_zeros)
    groups = [{"params": scales, "lr": config.lr}] + ([{"params": zeros, "lr": config.lr_zero}] if zeros else [])
    teacher_home = None if teacher is None else next(teacher.parameters()).device
    try:
        if model_dtype == torch.float16:  # train in float32 (module doc), back to float16 below
            model.float()
        if config.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        if teacher is not None:
            teacher.to(device).eval()
        step_losses = _run_epochs(model, windows, groups, config, device, progress, amp_dtype, teacher)
    finally:
        if config.gradient_checkpointing and not had_checkpointing:
            model.gradient_checkpointing_disable()
            model.disable_input_require_grads()
        model.train(was_training)
        make_frozen(layers)
        if model_dtype == torch.float16:
            model.half()
        if teacher is not None:
            teacher.to(teacher_home)
        for p, requires_grad in flags:
            p.requires_grad_(requires_grad)
    train_seconds = time.perf_counter() - t_train
    after = mean_loss(model, windows, config.batch_size, device) if evaluate else None
    return {"config": config.to_dict(), "windows": list(windows.shape), "steps": len(step_losses),
            "trainable_parameters": sum(p.numel() for g in groups for p in g["params"]),
            "loss_before": before, "loss_after": after, "step_losses": step_losses,
            "seconds": time.perf_counter() - t0, "train_seconds": train_seconds,
            "peak_memory_bytes": peak_memory(device),
            "peak_memory_kind": "cuda max allocated" if device.type == "cuda" else "process max RSS"}
