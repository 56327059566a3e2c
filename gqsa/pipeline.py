"""The sequential driver: compress a causal LM block by block on calibration data.

As in GPTQ/SparseGPT, the calibration inputs of the first decoder block are captured
once; then for each block in turn: the Hessians of its linears are accumulated on the
block's inputs, each linear is solved (:func:`gqsa.solver.solve.solve_layer`) and replaced
by a :class:`~gqsa.layer.GQSLinear`, and the compressed block's outputs become the next
block's inputs. Only one block's activations and Hessians are alive at a time, and only
the block in work needs to sit on the compute device.

Later stages plug in through ``after_block`` (called with the block, its inputs, the
dense block's outputs and the block kwargs, after its one-shot compression) and
``start_block`` (resume).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from gqsa.config import GQSAConfig
from gqsa.format import check_shape, pack_layer
from gqsa.layer import GQSLinear
from gqsa.models import find_blocks, find_linears, set_submodule
from gqsa.solver.hessian import HessianAccumulator
from gqsa.solver.prune_quant import output_error
from gqsa.solver.solve import solve_layer

AfterBlock = Callable[[int, nn.Module, torch.Tensor, torch.Tensor, dict], None]


class _Captured(Exception):
    """Raised by the capture hook to stop the forward pass after block 0's inputs."""


@dataclass
class CompressReport:
    """What one compression did: per-layer stats and timings."""

    layers: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    peak_memory_bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"layers": self.layers, "seconds": self.seconds, "peak_memory_bytes": self.peak_memory_bytes}


def capture_block_inputs(model: nn.Module, first_block: nn.Module, calib: torch.Tensor,
                         device: torch.device, batch_size: int) -> tuple[torch.Tensor, dict]:
    """Hidden states [n, L, d] entering the first block, and the keyword arguments the
    model passes to every block (attention mask, rotary embeddings, ...)."""
    hidden, kwargs = [], {}

    def hook(_module, args, kw):
        hidden.append((args[0] if args else kw["hidden_states"]).detach())
        kwargs.update({k: v for k, v in kw.items() if k != "hidden_states"})
        raise _Captured

    handle = first_block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for i in range(0, calib.shape[0], batch_size):
            try:
                model(calib[i:i + batch_size].to(device), use_cache=False)
            except _Captured:
                pass
    finally:
        handle.remove()
    kwargs.pop("past_key_values", None)
    kwargs.pop("past_key_value", None)
    kwargs["use_cache"] = False
    return torch.cat(hidden), kwargs


@torch.no_grad()
def run_block(block: nn.Module, hidden: torch.Tensor, kwargs: dict, batch_size: int) -> torch.Tensor:
    """Block outputs [n, L, d] for inputs [n, L, d], in batches."""
    outs = []
    for i in range(0, hidden.shape[0], batch_size):
        out = block(hidden[i:i + batch_size], **kwargs)
        outs.append(out[0] if isinstance(out, tuple) else out)
    return torch.cat(outs)


def _accumulate_hessians(block: nn.Module, linears: dict[str, nn.Linear], hidden: torch.Tensor,
                         kwargs: dict, batch_size: int) -> tuple[dict[str, HessianAccumulator], torch.Tensor]:
    """Hessian accumulators of the block's linears, and the dense block's outputs."""
    accs = {n: HessianAccumulator(m.in_features, m.weight.device) for n, m in linears.items()}
    handles = [m.register_forward_hook(lambda _m, inp, _o, a=accs[n]: a.add_batch(inp[0].detach()))
               for n, m in linears.items()]
    try:
        outputs = run_block(block, hidden, kwargs, batch_size)
    finally:
        for h in handles:
            h.remove()
    return accs, outputs


def compress_block(block: nn.Module, hidden: torch.Tensor, kwargs: dict, config: GQSAConfig,
                   prefix: str, batch_size: int) -> tuple[list[dict[str, Any]], torch.Tensor]:
    """Compress every (non-skipped) linear of one block in place.

    Returns the per-layer stats and the dense (uncompressed) block outputs.
    """
    linears = {n: m for n, m in find_linears(block).items() if not config.skips(f"{prefix}.{n}")}
    for n, m in linears.items():
        check_shape(m.out_features, m.in_features, config.group_size, f"{prefix}.{n}")
    accs, dense_out = _accumulate_hessians(block, linears, hidden, kwargs, batch_size)
    stats = []
    for name, lin in linears.items():
        t0 = time.perf_counter()
        res = solve_layer(lin.weight, accs[name], config)
        packed = pack_layer(res.codes, res.keep, res.scales, res.zeros, config.group_size, config.bits)
        new = GQSLinear.from_packed(packed, lin.bias)
        new.to(lin.weight.device)
        err = output_error(lin.weight.detach().float(), res.weight, accs[name].H)
        set_submodule(block, name, new)
        stats.append({"name": f"{prefix}.{name}", "shape": [lin.out_features, lin.in_features],
                      "nnz_groups": packed.nnz, "sparsity": 1 - packed.nnz / (lin.out_features * lin.in_features
                                                                               // config.group_size),
                      "rel_output_error": err, "seconds": time.perf_counter() - t0})
        del accs[name]
    return stats, dense_out


def compress(model: nn.Module, config: GQSAConfig, calib: torch.Tensor, device: torch.device | str | None = None,
             batch_size: int = 8, progress: bool = True, after_block: AfterBlock | None = None,
             start_block: int = 0) -> CompressReport:
    """Compress ``model`` in place with GQSA; returns a :class:`CompressReport`.

    Args:
        model: a transformers causal LM (its blocks are found from the module tree).
        config: the :class:`GQSAConfig`.
        calib: calibration token ids [n, L] int64.
        device: where blocks are computed (default: where the model's parameters are).
            Blocks are moved there one at a time and back afterwards.
        batch_size: calibration sequences per block forward.
        after_block: hook run after each block's one-shot compression (BQPO plugs in here).
        start_block: blocks before it are taken as already compressed (resume).
    """
    t0 = time.perf_counter()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    blocks_name, blocks = find_blocks(model)
    home = next(blocks[0].parameters()).device
    _move_outside(model, blocks, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    report = CompressReport()
    with torch.no_grad():
        blocks[0].to(device)
        hidden, kwargs = capture_block_inputs(model, blocks[0], calib, device, batch_size)
        for i in tqdm(range(len(blocks)), desc="gqsa blocks", disable=not progress):
            block = blocks[i].to(device)
            if i < start_block:
                hidden = run_block(block, hidden, kwargs, batch_size)
            else:
                stats, dense_out = compress_block(block, hidden, kwargs, config, f"{blocks_name}.{i}", batch_size)
                report.layers.extend(stats)
                if after_block is not None:
                    with torch.enable_grad():
                        after_block(i, block, hidden, dense_out, kwargs)
                hidden = run_block(block, hidden, kwargs, batch_size)
                del dense_out
            blocks[i].to(home)
    _move_outside(model, blocks, home)
    report.seconds = time.perf_counter() - t0
    report.peak_memory_bytes = _peak_memory(device)
    return report


def _move_outside(model: nn.Module, blocks: nn.ModuleList, device: torch.device) -> None:
    """Move every parameter and buffer that is not inside a decoder block to ``device``."""
    inside = {id(m) for m in blocks.modules()}
    for m in model.modules():
        if id(m) in inside:
            continue
        for n, p in list(m.named_parameters(recurse=False)):
            p.data = p.data.to(device)
        for n, b in list(m.named_buffers(recurse=False)):
            if b is not None:
                m._buffers[n] = b.to(device)


def _peak_memory(device: torch.device) -> int:
    """Peak memory of the process on ``device`` (CUDA allocator peak, or the CPU's max RSS)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    import resource
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
