"""The sequential driver: compress a causal LM block by block on calibration data.

As in GPTQ/SparseGPT, the calibration inputs of the first decoder block are captured
once; then for each block in turn: the Hessians of its linears are accumulated on the
block's inputs, each linear is solved (:func:`gqsa.solver.solve.solve_layer`) and replaced
by a :class:`~gqsa.layer.GQSLinear`, and the compressed block's outputs become the next
block's inputs. Only one block's activations and Hessians are alive at a time, and only
the block in work needs to sit on the compute device.

Later stages plug in through ``after_block`` (called with the block, its inputs, the
dense block's outputs and the block kwargs, after its one-shot compression; what it returns
goes into the block's record in the report) and ``start_block`` (resume).

Two chains of hidden states can be carried: the compressed model's own (always; it feeds
the Hessians and ``after_block``'s inputs) and, with ``fp_targets``, the dense model's, whose
block-i outputs are then what ``after_block`` gets as targets (EfficientQAT Block-AP; see
:mod:`gqsa.train.bqpo`). With a ``checkpoint`` (:class:`BlockStore`, e.g.
:class:`gqsa.train.checkpoint.BlockCheckpoint`) every finished block is saved before the
next one starts; a resumed run restores the finished blocks instead of compressing them
again and recomputes both chains through them (the dense chain before restoring each
block, the compressed chain after), so no hidden states are stored on disk.

With a ``blocks_source`` (:class:`BlockSource`, e.g. :class:`gqsa.streaming.StreamedBlocks`)
the blocks are not in memory at all: each is materialised from the model's files right
before its turn and released right after it is checkpointed (streamed compression,
docs/streaming.md). The hidden states can live on another device than the block in work
(``hidden_device``: pinned CPU memory when the GPU cannot hold them); every batch is moved
to the block's device and back, which changes no value.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from gqsa.config import GQSAConfig, unmatched_skips
from gqsa.format import check_shape, pack_layer
from gqsa.layer import GQSLinear
from gqsa.models import find_blocks, find_linears, set_submodule
from gqsa.solver.hessian import HessianAccumulator
from gqsa.solver.prune_quant import LayerResult, output_error
from gqsa.solver.solve import solve_layer

AfterBlock = Callable[[int, nn.Module, torch.Tensor, torch.Tensor, dict], "dict[str, Any] | None"]
LayerSolve = Callable[[torch.Tensor, HessianAccumulator, Any], LayerResult]


class BlockStore(Protocol):
    """Where finished blocks go (resume). ``record`` is the JSON-able block record
    ``{"index", "layers", "after_block", "seconds"}``."""

    def finished(self) -> int:
        """Number of blocks already finished (blocks 0..finished-1)."""

    def save(self, i: int, block: nn.Module, record: dict[str, Any]) -> None:
        """Persist finished block ``i`` (called in order, right after it is done)."""

    def restore(self, i: int, block: nn.Module) -> dict[str, Any]:
        """Load finished block ``i`` into ``block`` (its dense self) and return its record."""


class BlockSource(Protocol):
    """Where the blocks of a model whose blocks are not in memory come from (streaming)."""

    def load(self, i: int, block: nn.Module, device: torch.device) -> nn.Module:
        """Materialise the dense block ``i`` (its skeleton ``block``, on the meta device) on ``device``."""

    def release(self, i: int, block: nn.Module) -> None:
        """Free block ``i``'s tensors (back to the meta device) once it is finished."""


class _Captured(Exception):
    """Raised by the capture hook to stop the forward pass after block 0's inputs."""


@dataclass
class CompressReport:
    """What one compression did: per-layer stats and timings."""

    layers: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    peak_memory_bytes: int = 0
    blocks: list[dict[str, Any]] = field(default_factory=list)
    stages: dict[str, Any] = field(default_factory=dict)

    def add_block(self, record: dict[str, Any]) -> None:
        """Add one block's record (its layers also go to ``layers``)."""
        self.blocks.append(record)
        self.layers.extend(record["layers"])

    def to_dict(self) -> dict[str, Any]:
        return {"layers": self.layers, "seconds": self.seconds, "peak_memory_bytes": self.peak_memory_bytes,
                "blocks": self.blocks, "stages": self.stages}


def capture_block_inputs(model: nn.Module, first_block: nn.Module, calib: torch.Tensor,
                         device: torch.device, batch_size: int,
                         hidden_device: torch.device | None = None) -> tuple[torch.Tensor, dict]:
    """Hidden states [n, L, d] entering the first block (on ``hidden_device``, default
    ``device``), and the keyword arguments the model passes to every block (attention mask,
    rotary embeddings, ...), as captured from the first batch of ``batch_size`` sequences."""
    hidden, kwargs = [], {}

    def hook(_module, args, kw):
        x = (args[0] if args else kw["hidden_states"]).detach()
        hidden.append(x if hidden_device is None else x.to(hidden_device))
        if not kwargs:  # the first batch's; fit_batch adapts batch-sized tensors to other batches
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


def fit_batch(value: Any, b: int) -> Any:
    """Block kwargs for a batch of ``b`` sequences: every tensor whose first dimension is
    neither 1 nor ``b`` (captured from a batch of another size) cut to its first row, which
    broadcasts; dicts, lists and tuples recursively. Calibration windows are unpadded, so the
    rows of a captured mask or position tensor are all the same."""
    if isinstance(value, torch.Tensor):
        return value[:1] if value.dim() and value.shape[0] not in (1, b) else value
    if isinstance(value, dict):
        return {k: fit_batch(v, b) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(fit_batch(v, b) for v in value)
    return value


@torch.no_grad()
def run_block(block: nn.Module, hidden: torch.Tensor, kwargs: dict, batch_size: int) -> torch.Tensor:
    """Block outputs [n, L, d] for inputs [n, L, d], in batches, on the inputs' device (each
    batch goes to the block's device and back; pinned inputs give pinned outputs)."""
    device = block_device(block, hidden.device)
    outs = []
    for i in range(0, hidden.shape[0], batch_size):
        chunk = hidden[i:i + batch_size].to(device, non_blocking=True)
        out = block(chunk, **fit_batch(kwargs, chunk.shape[0]))
        outs.append((out[0] if isinstance(out, tuple) else out).to(hidden.device))
    out = torch.cat(outs)
    return out.pin_memory() if hidden.is_pinned() else out


def block_device(block: nn.Module, default: torch.device | None = None) -> torch.device:
    """The device of a block's first parameter or buffer (``default`` when it has none)."""
    first = next(itertools.chain(block.parameters(), block.buffers()), None)  # no state_dict built per call
    return default if first is None else first.device


def _accumulate_hessians(block: nn.Module, linears: dict[str, nn.Linear], hidden: torch.Tensor,
                         kwargs: dict, batch_size: int) -> tuple[dict[str, HessianAccumulator], torch.Tensor]:
    """Hessian accumulators of the block's linears, and the dense block's outputs.

    Linears that read the same input tensor (q/k/v, gate/up) share one accumulator: the same
    sums, accumulated once (at 70B shape 0.16 of the block's 0.65 PFLOP of Hessian products).
    """
    accs: dict[str, HessianAccumulator] = {}
    seen: dict[int, tuple[torch.Tensor, HessianAccumulator]] = {}  # this batch's inputs, held so ids stay unique

    def hook(name: str, in_features: int, device: torch.device):
        def add(_m, inp, _o) -> None:
            x = inp[0].detach()
            known = seen.get(id(inp[0]))
            if known is not None and accs.setdefault(name, known[1]) is known[1]:
                return  # this input is already in the shared accumulator
            acc = accs.setdefault(name, HessianAccumulator(in_features, device))
            acc.add_batch(x)
            seen[id(inp[0])] = (inp[0], acc)
        return add

    handles = [m.register_forward_hook(hook(n, m.in_features, m.weight.device)) for n, m in linears.items()]
    handles.append(block.register_forward_pre_hook(lambda *_: seen.clear()))  # a new batch
    try:
        outputs = run_block(block, hidden, kwargs, batch_size)
    finally:
        for h in handles:
            h.remove()
        seen.clear()
    for n, m in linears.items():  # a linear the forward never reached: an empty (all-dead) Hessian
        accs.setdefault(n, HessianAccumulator(m.in_features, m.weight.device))
    return accs, outputs


def compress_block(block: nn.Module, hidden: torch.Tensor, kwargs: dict, config: GQSAConfig,
                   prefix: str, batch_size: int, solve: LayerSolve = solve_layer,
                   dense: bool = False) -> tuple[list[dict[str, Any]], torch.Tensor]:
    """Compress every (non-skipped) linear of one block in place.

    ``solve(weight, acc, config)`` gives each layer's :class:`LayerResult`; with ``dense``
    the layer stays an nn.Linear holding ``LayerResult.weight`` (see :func:`install_layer`).
    Returns the per-layer stats and the dense (uncompressed) block outputs.
    """
    linears = {n: m for n, m in find_linears(block).items() if not config.skips(f"{prefix}.{n}")}
    for n, m in ({} if dense else linears).items():  # only the packed format needs G | in_features
        check_shape(m.out_features, m.in_features, config.group_size, f"{prefix}.{n}")
    accs, dense_out = _accumulate_hessians(block, linears, hidden, kwargs, batch_size)
    stats = []
    for name, lin in linears.items():
        t0 = time.perf_counter()
        layer_config = config.for_layer(f"{prefix}.{name}") if isinstance(config, GQSAConfig) else config
        res = solve(lin.weight, accs[name], layer_config)
        err = output_error(lin.weight.detach().float(), res.weight, accs[name].H)
        info = install_layer(block, name, lin, res, config, dense)
        stats.append({"name": f"{prefix}.{name}", "shape": [lin.out_features, lin.in_features], **info,
                      "rel_output_error": err, "seconds": time.perf_counter() - t0,
                      **({"protected_groups": res.protected} if getattr(res, "protected", 0) else {})})
        del accs[name]
    return stats, dense_out


def install_layer(block: nn.Module, name: str, lin: nn.Linear, res: LayerResult, config: GQSAConfig,
                  dense: bool) -> dict[str, Any]:
    """Put a solved layer into ``block``: a packed :class:`GQSLinear`, or, with ``dense``, the
    same nn.Linear with its weight overwritten by ``res.weight`` (fake quantization, for
    baselines whose pattern the packed format does not hold). Returns its sparsity stats."""
    if dense:
        lin.weight.data = res.weight.to(lin.weight.device, lin.weight.dtype)
        return {"sparsity": float((res.weight == 0).float().mean())}
    packed = pack_layer(res.codes, res.keep, res.scales, res.zeros, config.group_size, config.bits)
    new = GQSLinear.from_packed(packed, lin.bias)
    new.to(lin.weight.device)
    set_submodule(block, name, new)
    return {"nnz_groups": packed.nnz,
            "sparsity": packed.sparsity}


@dataclass(frozen=True)
class _BlockJob:
    """What every block of one ``compress`` call is compressed with."""

    config: GQSAConfig
    blocks_name: str
    batch_size: int
    solve: LayerSolve
    dense: bool
    after_block: AfterBlock | None
    checkpoint: BlockStore | None
    num_blocks: int = 1

    def block_config(self, index: int):
        """The config block ``index`` is solved with (a GQSA sparsity ramp gives each block its own)."""
        if isinstance(self.config, GQSAConfig):
            return self.config.for_block(index, self.num_blocks)
        return self.config


def _check_skips(model: nn.Module, config: Any) -> None:
    """A ``skip`` entry that names no module of ``model`` is a typo, not a no-op: ValueError."""
    unmatched = unmatched_skips(config.skip, [n for n, _ in model.named_modules()])
    if unmatched:
        raise ValueError(f"skip names {unmatched} match no module of the model (names are module paths or their "
                         f"last parts, such as lm_head, mlp.down_proj or model.layers.3.self_attn.o_proj)")


def run_blocks(model: nn.Module, config: GQSAConfig, calib: torch.Tensor, device: torch.device | str | None = None,
               batch_size: int = 8, progress: bool = True, after_block: AfterBlock | None = None,
               start_block: int = 0, solve: LayerSolve = solve_layer, dense: bool = False,
               fp_targets: bool = False, checkpoint: BlockStore | None = None,
               blocks_source: BlockSource | None = None, hidden_device: torch.device | None = None,
               pin_hidden: bool = False) -> CompressReport:
    """The sequential driver: solve ``model``'s blocks one by one, in place; returns a
    :class:`CompressReport`. Users call :func:`gqsa.compress`, which runs this with the
    training stages its config asks for; the baselines call it with their own solvers.

    Args:
        model: a transformers causal LM (its blocks are found from the module tree).
        config: the :class:`GQSAConfig`.
        calib: calibration token ids [n, L] int64.
        device: where blocks are computed (default: where the model's parameters are).
            Blocks are moved there one at a time and back afterwards.
        batch_size: calibration sequences per block forward.
        after_block: hook run after each block's one-shot compression (BQPO plugs in here),
            with grad enabled; it may return a JSON-able dict, kept in the block's record.
        start_block: blocks before it are taken as already compressed (resume).
        solve: the per-layer solver ``solve(weight, acc, config) -> LayerResult`` (baselines
            such as GPTQ or SparseGPT pass theirs, with their own config).
        dense: keep each layer an nn.Linear holding the solver's dequantized weight instead
            of packing it into a GQSLinear (for patterns the packed format does not hold).
        fp_targets: also carry the dense model's hidden states and give ``after_block`` the
            dense block's outputs on them as targets (instead of on the compressed inputs).
        checkpoint: save each finished block there; blocks it already holds are restored
            and not compressed again (resume). Exclusive with ``start_block``.
        blocks_source: materialises each block before its turn and releases it after
            (streaming; the model's blocks are then meta-device skeletons). Needs ``checkpoint``,
            where the finished blocks go.
        hidden_device: where the calibration hidden states live (default: ``device``);
            ``pin_hidden`` pins them (CPU hidden states for a CUDA device).
    """
    t0 = time.perf_counter()
    home = next(p.device for p in model.parameters() if not p.is_meta)
    device = torch.device(device) if device is not None else home
    if blocks_source is not None and checkpoint is None:
        raise ValueError("blocks_source needs a checkpoint: the finished blocks of a streamed run go there")
    _check_skips(model, config)
    blocks_name, blocks = find_blocks(model)
    start = _first_block(start_block, checkpoint, fp_targets, len(blocks))
    job = _BlockJob(config, blocks_name, batch_size, solve, dense, after_block, checkpoint, len(blocks))
    move_outside(model, blocks, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    report = CompressReport()
    with torch.no_grad():
        if blocks_source is None:
            blocks[0].to(device)
        hidden, kwargs = capture_block_inputs(model, blocks[0], calib, device, batch_size, hidden_device)
        hidden = hidden.pin_memory() if pin_hidden else hidden
        fp_hidden = hidden if fp_targets else None
        for i in tqdm(range(len(blocks)), desc="gqsa blocks", disable=not progress):
            block = blocks[i].to(device) if blocks_source is None else blocks_source.load(i, blocks[i], device)
            if i < start:
                hidden, fp_hidden = _replay_block(i, block, hidden, fp_hidden, kwargs, job, report)
            else:
                hidden, fp_hidden = _compress_next(i, block, hidden, fp_hidden, kwargs, job, report)
            if blocks_source is None:
                blocks[i].to(home)
            else:
                blocks_source.release(i, blocks[i])
    move_outside(model, blocks, home)
    report.seconds = time.perf_counter() - t0
    report.peak_memory_bytes = peak_memory(device)
    return report


def _first_block(start_block: int, checkpoint: BlockStore | None, fp_targets: bool, num_blocks: int) -> int:
    """The first block to compress, from ``start_block`` or the checkpoint's progress."""
    if checkpoint is None:
        if fp_targets and start_block:
            raise ValueError("fp_targets needs the dense blocks before start_block: resume through a "
                             "checkpoint instead of start_block")
        return start_block
    if start_block:
        raise ValueError("pass start_block or checkpoint, not both (the checkpoint knows where to resume)")
    done = checkpoint.finished()
    if done > num_blocks:
        raise ValueError(f"checkpoint holds {done} finished blocks but the model has {num_blocks}")
    return done


def _replay_block(i: int, block: nn.Module, hidden: torch.Tensor, fp_hidden: torch.Tensor | None, kwargs: dict,
                  job: _BlockJob, report: CompressReport) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Block ``i`` is already done: follow it on the dense chain while it is still dense,
    restore it from the checkpoint (if any), then follow it on the compressed chain."""
    if fp_hidden is not None:
        fp_hidden = run_block(block, fp_hidden, kwargs, job.batch_size)
    if job.checkpoint is not None:
        report.add_block({**job.checkpoint.restore(i, block), "restored": True})
    return run_block(block, hidden, kwargs, job.batch_size), fp_hidden


def _compress_next(i: int, block: nn.Module, hidden: torch.Tensor, fp_hidden: torch.Tensor | None, kwargs: dict,
                   job: _BlockJob, report: CompressReport) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Compress block ``i``, run ``after_block``, checkpoint it; returns both chains' next inputs."""
    t0 = time.perf_counter()
    # The dense chain must pass the block before it is compressed; on block 0 both chains coincide.
    separate = fp_hidden is not None and fp_hidden is not hidden
    fp_out = run_block(block, fp_hidden, kwargs, job.batch_size) if separate else None
    stats, dense_out = compress_block(block, hidden, kwargs, job.block_config(i), f"{job.blocks_name}.{i}",
                                      job.batch_size, job.solve, job.dense)
    target = dense_out if fp_out is None else fp_out
    del dense_out, fp_out  # one [n, L, d] target alive during the hook, not two
    extra = None
    if job.after_block is not None:
        with torch.enable_grad():
            extra = job.after_block(i, block, hidden, target, kwargs)
    record = {"index": i, "layers": stats, "after_block": extra, "seconds": time.perf_counter() - t0}
    if job.checkpoint is not None:
        job.checkpoint.save(i, block, record)
    report.add_block(record)
    next_fp = None if fp_hidden is None else target
    return run_block(block, hidden, kwargs, job.batch_size), next_fp


def move_outside(model: nn.Module, blocks: nn.ModuleList, device: torch.device) -> None:
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


def peak_memory(device: torch.device) -> int:
    """Peak memory of the process on ``device`` (CUDA allocator peak, or the CPU's max RSS)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    import resource
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
