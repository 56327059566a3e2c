"""BQPO: block-wise training of the kept weights and quantization parameters of one block.

GQSA (arXiv 2412.17560) follows the one-shot prune + quantize solve of each decoder block
with a block-wise optimization; we do it as EfficientQAT's Block-AP (arXiv 2407.11062,
sec. 3.2) and OmniQuant do. With the keep masks fixed, every GQSLinear of the block is
swapped for a :class:`FakeQuantLinear` holding a float weight W [N, K], per-group scales s
and zero points z [N, K/G]; its weight is

    q     = clamp(round(W / s0) + z0, 0, 2^b - 1)        (the integer codes)
    W_hat = keep * (q - round(z)) * fp16(s)

where ``round`` and ``fp16`` (the float16 rounding of the stored scale) are straight-through
estimators (Bengio et al. 2013: identity gradient) and s0, z0 are the one-shot scale and
zero point, held fixed. AdamW minimises the MSE between the block's output and a target;
then each layer is packed again with the SAME mask (:func:`gqsa.format.pack_layer`), from
exactly the q, round(z), fp16(s) of the forward pass.

Why s0, z0 and not the trained s, z inside the rounding (Block-AP writes round(W / s) + z):
W starts on the grid (below), where the straight-through gradient of s through
round(W / s) cancels its direct effect (d/ds [round(W/s) s] = round(W/s) - W/s = 0), and
once W has moved the remainder is rounding noise. Measured on SmolLM2-135M block 1 (W4 S50
G16, 16 x 256 tokens, 2 epochs, Block-AP learning rates): the block's output MSE went up,
2.19 -> 2.23; with the codes taken at s0, z0 the gradients of s and z are their exact
effect at fixed codes, (q - z) and -s, and the MSE went down, 2.19 -> 2.09. The codes still
move, through W (in weight units, so that Block-AP's learning rates apply), and never
because s or z moved.

Inputs and targets. Block i is trained on the *compressed* model's own inputs (outputs of
compressed blocks 0..i-1: the pipeline's ``inputs``) against the *full-precision chain*
(dense block i applied to the dense model's inputs of block i; the pipeline carries that
chain with ``run_blocks(..., fp_targets=True)``; :func:`gqsa.compress` sets it from the config). That is Block-AP's choice (``quant_inps``
against ``fp_inps``) and OmniQuant's: the target is what the FP model computes at this
depth, so block i learns to undo the error that blocks < i left in its inputs too, not only
its own rounding error. The cost: one more [n, L, d] tensor and one dense block forward per
block. With ``fp_targets=False`` the pipeline passes the local target (dense block i applied
to the compressed inputs), which only fixes block i's own error; the log records which.

The initial W is the one-shot result expressed back as floats, W0 = (q - z0) * s0, so that
round(W0 / s0) + z0 reproduces the codes exactly: before training the fake-quant block equals
the packed one. (Block-AP starts from the FP weights; here they would throw away the
one-shot solver's error compensation.)
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from gqsa.config import BQPOConfig
from gqsa.format import pack_layer, unpack_codes, unpack_layer
from gqsa.layer import GQSLinear
from gqsa.models import set_submodule
from gqsa.pipeline import block_device, fit_batch

MIN_SCALE = 1e-6  # keeps w / s finite; far below any scale a real group gets



def ste(x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``fn(x)`` in the forward pass, identity gradient in the backward pass."""
    return x + (fn(x) - x).detach()


def as_stored_scale(s: torch.Tensor) -> torch.Tensor:
    """The scale as the packed format stores it: clamped positive and rounded to float16."""
    return s.clamp_min(MIN_SCALE).to(torch.float16).to(s.dtype)


class FakeQuantLinear(nn.Module):
    """Trainable stand-in for one GQSLinear during BQPO.

    Holds ``weight`` [N, K], ``scale`` and ``zero`` [N, K/G] (float32 parameters), the
    one-shot ``scale0``/``zero0`` [N, K/G] that define the codes, the fixed ``keep`` mask
    [N, K/G] bool and the frozen ``bias`` [N] (or None). Pruned groups have weight 0,
    scale 1, zero 0 and stay pruned.
    """

    def __init__(self, layer: GQSLinear):
        super().__init__()
        p = layer.packed()
        n, k, g = p.out_features, p.in_features, p.group_size
        self.out_features, self.in_features, self.group_size, self.bits = n, k, g, p.bits
        q, keep, scale, zero = unpack_layer(p, torch.float32, fill_scale=1.0)
        self.weight = nn.Parameter(((q - zero[..., None]) * scale[..., None]).reshape(n, k))
        self.scale, self.zero = nn.Parameter(scale), nn.Parameter(zero.clone())
        self.register_buffer("scale0", scale.clone())
        self.register_buffer("zero0", zero)
        self.register_buffer("keep", keep)
        self.register_buffer("bias", None if layer.bias is None else layer.bias.detach().clone())

    def _grid(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Codes [N, K/G, G], stored scale and rounded zero [N, K/G, 1], all through STEs."""
        maxq = (1 << self.bits) - 1
        w = self.weight.view(self.out_features, -1, self.group_size)
        q = torch.clamp(ste(w / self.scale0.unsqueeze(-1), torch.round) + self.zero0.unsqueeze(-1), 0, maxq)
        s = ste(self.scale, as_stored_scale).unsqueeze(-1)
        z = ste(self.zero, lambda t: t.round().clamp(0, maxq)).unsqueeze(-1)
        return q, s, z

    def quant_weight(self) -> torch.Tensor:
        """The fake-quantized weight W_hat [N, K] (float32), differentiable through the STEs."""
        q, s, z = self._grid()
        return ((q - z) * s * self.keep.unsqueeze(-1)).reshape(self.out_features, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.quant_weight()
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, w.to(x.dtype), bias)

    @torch.no_grad()
    def to_gqs(self) -> GQSLinear:
        """Pack the trained layer into a GQSLinear with the same keep mask (on this layer's device)."""
        q, s, z = self._grid()
        packed = pack_layer(q.reshape(self.out_features, self.in_features), self.keep, s.squeeze(-1),
                            z.squeeze(-1), self.group_size, self.bits)
        return GQSLinear.from_packed(packed, self.bias).to(self.keep.device)


def swap_in_fake_quant(block: nn.Module) -> dict[str, tuple[GQSLinear, FakeQuantLinear]]:
    """Replace every GQSLinear of ``block`` by a FakeQuantLinear; returns {name: (old, new)}."""
    swapped = {}
    for name, m in list(block.named_modules()):
        if isinstance(m, GQSLinear):
            fq = FakeQuantLinear(m)
            set_submodule(block, name, fq)
            swapped[name] = (m, fq)
    return swapped


def _block_out(block: nn.Module, x: torch.Tensor, kwargs: dict) -> torch.Tensor:
    out = block(x, **fit_batch(kwargs, x.shape[0]))
    return out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def block_mse(block: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, kwargs: dict,
              batch_size: int = 8) -> float:
    """Mean squared error (float32) between ``block(inputs)`` and ``targets``, both [n, L, d]
    (on the block's device or, streamed, in CPU memory: each batch is moved to the block)."""
    total, device = 0.0, block_device(block, inputs.device)
    for i in range(0, inputs.shape[0], batch_size):
        out = _block_out(block, inputs[i:i + batch_size].to(device), kwargs)
        total += float((out.float() - targets[i:i + batch_size].to(device).float()).pow(2).sum())
    return total / targets.numel()


def _param_groups(fqs: list[FakeQuantLinear], config: BQPOConfig) -> list[dict]:
    """AdamW parameter groups (weights, scales, zeros); a group with lr 0 is frozen."""
    groups = []
    for attr, lr in (("weight", config.lr_weight), ("scale", config.lr_scale), ("zero", config.lr_zero)):
        params = [getattr(fq, attr) for fq in fqs]
        for p in params:
            p.requires_grad_(lr > 0)
        if lr > 0:
            groups.append({"params": params, "lr": lr, "name": attr})
    return groups


def cosine_factor(total_steps: int, min_lr_factor: float) -> Callable[[int], float]:
    """LR multiplier of step t: cosine from 1 down to 1 / min_lr_factor over ``total_steps``."""
    floor = 1.0 / min_lr_factor
    return lambda t: floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(t, total_steps) / max(1, total_steps)))


def _freeze_rest(block: nn.Module, trainable: set[int]) -> list[tuple[nn.Parameter, bool, torch.dtype]]:
    """Freeze every other parameter of the block and hold it in float32 for the training
    (mixed dtypes would break F.linear without autocast); returns what to restore."""
    state = []
    for p in block.parameters():
        if id(p) not in trainable:
            state.append((p, p.requires_grad, p.dtype))
            p.requires_grad_(False)
            p.data = p.data.float()
    return state


def _restore(state: list[tuple[nn.Parameter, bool, torch.dtype]]) -> None:
    for p, requires_grad, dtype in state:
        p.data = p.data.to(dtype)
        p.requires_grad_(requires_grad)


def _train(block: nn.Module, fqs: list[FakeQuantLinear], inputs: torch.Tensor, targets: torch.Tensor,
           kwargs: dict, config: BQPOConfig, seed: int, bar: tqdm) -> list[float]:
    """AdamW on the fake-quant parameters against MSE(block(inputs), targets), both [n, L, d].
    Returns the mean training loss of each epoch."""
    groups = _param_groups(fqs, config)
    params = [p for g in groups for p in g["params"]]
    opt = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    n, bs = inputs.shape[0], config.batch_size
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_factor(config.epochs * math.ceil(n / bs),
                                                                 config.min_lr_factor))
    device = fqs[0].weight.device
    amp = config.amp and device.type == "cuda"
    gen = torch.Generator().manual_seed(seed)
    epoch_losses = []
    for _ in range(config.epochs):
        perm, total = torch.randperm(n, generator=gen), 0.0
        for j in range(0, n, bs):
            idx = perm[j:j + bs].to(inputs.device)
            x, y = inputs[idx].to(device, torch.float32), targets[idx].to(device, torch.float32)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                out = _block_out(block, x, kwargs)
            loss = F.mse_loss(out.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if config.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            opt.step()
            sched.step()
            value = loss.item()  # one device sync per step, for the log and the bar
            total += value * len(idx)
            bar.update()
            bar.set_postfix(loss=f"{value:.3e}")
        epoch_losses.append(total / n)
    return epoch_losses


def _codes_changed(swapped: dict[str, tuple[GQSLinear, GQSLinear]]) -> float:
    """Fraction of kept weights whose integer code differs between old and new layers."""
    changed = total = 0
    for old, new in swapped.values():
        a = unpack_codes(old.codes, old.bits, old.group_size)
        b = unpack_codes(new.codes, new.bits, new.group_size)
        changed, total = changed + int((a != b).sum()), total + a.numel()
    return changed / max(1, total)


def train_block(block: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, kwargs: dict,
                config: BQPOConfig, seed: int = 0, desc: str = "bqpo", progress: bool = True) -> dict[str, Any]:
    """Run BQPO on one compressed block, in place; its GQSLinear layers are replaced by
    re-packed ones with the same masks.

    Args:
        block: a decoder block whose linears are GQSLinear (on the compute device).
        inputs: [n, L, d] hidden states entering the block (compressed chain).
        targets: [n, L, d] the outputs to match (see the module doc for which).
        kwargs: the keyword arguments the model passes to its blocks.
    Returns:
        A JSON-able log: output MSE before/after, per-epoch training loss, code changes, time.
    """
    t0 = time.perf_counter()
    before = block_mse(block, inputs, targets, kwargs, config.batch_size)
    swapped = swap_in_fake_quant(block)
    if not swapped:
        return {"skipped": "no GQSLinear in this block", "mse_before": before}
    fqs = [fq for _, fq in swapped.values()]
    state = _freeze_rest(block, {id(p) for fq in fqs for p in fq.parameters()})
    steps = config.epochs * math.ceil(inputs.shape[0] / config.batch_size)
    try:
        with tqdm(total=steps, desc=desc, disable=not progress, leave=False) as bar:
            epoch_losses = _train(block, fqs, inputs, targets, kwargs, config, seed, bar)
    except BaseException:
        for name, (old, _) in swapped.items():
            set_submodule(block, name, old)
        raise
    finally:
        _restore(state)
    packed = {name: (old, fq.to_gqs()) for name, (old, fq) in swapped.items()}
    for name, (_, new) in packed.items():
        set_submodule(block, name, new)
    trained = block_mse(block, inputs, targets, kwargs, config.batch_size)
    reverted = config.keep_best and trained > before
    if reverted:
        for name, (old, _) in packed.items():
            set_submodule(block, name, old)
    log = {"mse_before": before, "mse_after": before if reverted else trained, "mse_trained": trained,
           "reverted": reverted, "epoch_losses": epoch_losses, "steps": steps,
           "codes_changed": _codes_changed(packed), "fp_targets": config.fp_targets,
           "seconds": time.perf_counter() - t0}
    if progress:
        tqdm.write(f"{desc}: output MSE {before:.4e} -> {trained:.4e}" + (" (reverted)" if reverted else ""))
    return log


def bqpo_hook(config: BQPOConfig, progress: bool = True) -> Callable[[int, nn.Module, torch.Tensor, torch.Tensor, dict],
                                                                     dict[str, Any]]:
    """An ``after_block`` hook for :func:`gqsa.pipeline.compress` that runs BQPO on block i
    (seed ``config.seed + i``) and returns ``{"bqpo": log}``. Pass
    ``fp_targets=config.fp_targets`` to ``compress`` as well."""
    def after_block(i: int, block: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                    kwargs: dict) -> dict[str, Any]:
        return {"bqpo": train_block(block, inputs, targets, kwargs, config, config.seed + i,
                                    f"bqpo block {i}", progress)}
    return after_block


def summarize(blocks: list[dict[str, Any]], config: BQPOConfig) -> dict[str, Any]:
    """The BQPO stage entry of a run's log, from the pipeline's per-block records."""
    logs = [b["after_block"]["bqpo"] for b in blocks if (b.get("after_block") or {}).get("bqpo")]
    trained = [lg for lg in logs if "mse_after" in lg and "skipped" not in lg]
    return {"config": config.to_dict(), "blocks": len(logs),
            "reverted_blocks": [b["index"] for b in blocks
                                if ((b.get("after_block") or {}).get("bqpo") or {}).get("reverted")],
            "mse_before": [lg["mse_before"] for lg in trained], "mse_after": [lg["mse_after"] for lg in trained],
            "codes_changed": [lg["codes_changed"] for lg in trained],
            "seconds": sum(lg.get("seconds", 0.0) for lg in logs)}
