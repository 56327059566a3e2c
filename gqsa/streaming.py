"""Streamed compression: a model that does not fit in memory, one decoder block at a time.

The model is built on the meta device (``AutoModelForCausalLM.from_config`` under
``torch.device("meta")``: shapes, no storage). Only the parts outside the decoder blocks
(embeddings, final norm, head) are loaded whole. The sequential driver
(:func:`gqsa.pipeline.run_blocks`, the same code path as in memory) asks a
:class:`StreamedBlocks` for block i right before its turn: its tensors are read by name from
a :class:`TensorSource` (the model folder's safetensors shards, or a synthetic generator),
the block is compressed and checkpointed (packed, in the checkpoint folder), and its tensors
are released back to the meta device. At the end the packed model is assembled from the
checkpoint (:func:`assemble`) and saved by :func:`gqsa.hf.save_compressed`.

Memory (docs/streaming.md): one dense block on the compute device at a time, the
calibration hidden states (on the GPU when they fit, else in pinned CPU memory:
:func:`place_hidden`), the embeddings and head in CPU memory; the packed model only at the
assembly.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Iterable, Protocol

import torch
from safetensors import SafetensorError, safe_open
from torch import nn
from transformers import AutoModelForCausalLM

from gqsa.hf import rebuild_meta_buffers, weight_files
from gqsa.models import find_blocks
from gqsa.train.checkpoint import BlockCheckpoint

GiB = 1 << 30


class TensorSource(Protocol):
    """A model's tensors by their state-dict names (``model.layers.3.mlp.up_proj.weight``)."""

    def keys(self) -> Iterable[str]:
        """Every tensor name the source holds."""

    def get(self, name: str) -> torch.Tensor:
        """The tensor ``name`` on the CPU (read or generated on demand; not kept by the source)."""


class SafetensorsSource:
    """The tensors of a local model folder's ``*.safetensors`` shards, read one at a time
    with ``safetensors.safe_open`` (memory-mapped: only the tensors asked for are read)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self._where: dict[str, Path] = {}
        for f in weight_files(self.folder):
            try:
                with safe_open(f, framework="pt") as st:
                    self._where.update({k: f for k in st.keys()})
            except (SafetensorError, OSError) as e:
                raise ValueError(f"{f} is truncated or not a safetensors file ({e})") from None

    def keys(self) -> Iterable[str]:
        return self._where.keys()

    def get(self, name: str) -> torch.Tensor:
        if name not in self._where:
            raise KeyError(f"{self.folder} holds no tensor {name}")
        with safe_open(self._where[name], framework="pt") as st:
            return st.get_tensor(name)


def skeleton(model_config, dtype: torch.dtype, trust_remote_code: bool = False) -> nn.Module:
    """The causal LM of ``model_config`` on the meta device (no storage), in ``dtype``."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config, dtype=dtype, trust_remote_code=trust_remote_code)
    return model.eval()


def check_names(model: nn.Module, source: TensorSource) -> None:
    """The source must fill every weight of ``model`` and hold nothing else (a tied head may be
    absent); ValueError naming what is missing or unexpected otherwise."""
    expected, held = set(model.state_dict()), set(source.keys())
    tied = {k for k in expected - held if _is_tied(model, k)}
    missing, unexpected = sorted(expected - held - tied), sorted(held - expected)
    if missing or unexpected:
        raise ValueError(f"the model's files do not fill the model: missing {missing[:4]}, unexpected "
                         f"{unexpected[:4]} ({len(missing)}/{len(unexpected)} in all); refusing to run randomly "
                         f"initialised weights")


def _is_tied(model: nn.Module, name: str) -> bool:
    """True for the output embedding's weight of a model that ties it to the input embedding."""
    out, inp = model.get_output_embeddings(), model.get_input_embeddings()
    owner = name.rpartition(".")[0]
    return out is not None and out.weight is inp.weight and model.get_submodule(owner) is out


def _state_from(source: TensorSource, names: Iterable[tuple[str, str]], dtype: torch.dtype,
                device: torch.device | str) -> dict[str, torch.Tensor]:
    """{key: source tensor ``name``} for (key, name) pairs, floating ones cast to ``dtype``."""
    state = {}
    for key, name in names:
        t = source.get(name)
        state[key] = t.to(device, dtype if t.is_floating_point() else t.dtype)
    return state


def load_outside(model: nn.Module, source: TensorSource, dtype: torch.dtype,
                 device: torch.device | str = "cpu") -> None:
    """Load every tensor outside the decoder blocks (embeddings, norms, head) onto ``device``;
    the blocks stay on the meta device. Ties the head, rebuilds rotary buffers."""
    blocks_name, _ = find_blocks(model)
    held = set(source.keys())
    names = [(k, k) for k in model.state_dict() if not k.startswith(blocks_name + ".") and k in held]
    model.load_state_dict(_state_from(source, names, dtype, device), strict=False, assign=True)
    model.tie_weights()
    rebuild_meta_buffers(model, torch.device(device))


class StreamedBlocks:
    """The :class:`gqsa.pipeline.BlockSource` of a skeleton model: block i's dense tensors
    from ``source`` when the driver needs it, released once it is finished.

    ``materialised`` is the number of blocks holding storage right now (at most one while
    the driver runs); ``peak_materialised`` its maximum over the run."""

    def __init__(self, model: nn.Module, source: TensorSource, dtype: torch.dtype):
        self.prefix, self.blocks = find_blocks(model)
        self.source, self.dtype = source, dtype
        self.peak_materialised = 0

    @property
    def materialised(self) -> int:
        return sum(any(not t.is_meta for t in b.state_dict().values()) for b in self.blocks)

    def load(self, i: int, block: nn.Module, device: torch.device) -> nn.Module:
        names = [(k, f"{self.prefix}.{i}.{k}") for k in block.state_dict()]
        block.load_state_dict(_state_from(self.source, names, self.dtype, device), strict=True, assign=True)
        rebuild_meta_buffers(block, device)  # non-persistent buffers inside a block (older rotary layouts)
        self.peak_materialised = max(self.peak_materialised, self.materialised)
        return block

    def release(self, i: int, block: nn.Module) -> None:
        block.to("meta")


def assemble(model: nn.Module, checkpoint: BlockCheckpoint) -> nn.Module:
    """Fill the skeleton's (meta) blocks with the finished blocks of ``checkpoint``, on the CPU:
    the packed model, ready for E2E-OQP or :func:`gqsa.hf.save_compressed`."""
    _, blocks = find_blocks(model)
    if checkpoint.finished() != len(blocks):
        raise ValueError(f"{checkpoint.folder} holds {checkpoint.finished()} of {len(blocks)} blocks")
    for i, block in enumerate(blocks):
        checkpoint.restore(i, block)
    return model


def place_hidden(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, copies: int,
                 reserve_bytes: int, say: bool = True) -> tuple[torch.device, bool]:
    """Where the calibration hidden states live: ``(device, pinned)``.

    ``copies`` tensors of ``shape`` are alive at once (the compressed chain, its next outputs,
    the target, the dense chain with BQPO's full-precision targets). On a CUDA device they
    stay there when they and ``reserve_bytes`` (the block, its Hessians, the solver's
    working memory) fit in 90 % of its free memory, else they go to pinned CPU memory; on a
    CPU device, CPU memory. The choice is printed on stderr."""
    need = copies * torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
    what = f"{copies} x {list(shape)} {str(dtype).replace('torch.', '')} = {need / GiB:.2f} GiB"
    if device.type != "cuda":
        place, why = (torch.device("cpu"), False), "CPU memory"
    else:
        free = torch.cuda.mem_get_info(device)[0]
        fits = need + reserve_bytes <= 0.9 * free
        place = (device, False) if fits else (torch.device("cpu"), True)
        why = (f"{device} ({free / GiB:.1f} GiB free)" if fits else
               f"pinned CPU memory ({device} has {free / GiB:.1f} GiB free, needs {(need + reserve_bytes) / GiB:.1f})")
    if say:
        print(f"gqsa: calibration hidden states {what} in {why}", file=sys.stderr, flush=True)
    return place


def block_reserve_bytes(model: nn.Module, dtype: torch.dtype) -> int:
    """What one block needs besides the hidden states: its dense weights, the float32
    Hessians of its linears, and a dense float32 copy of its largest weight for the solver."""
    _, blocks = find_blocks(model)
    block = blocks[0]
    weights = sum(p.numel() for p in block.parameters()) * torch.empty((), dtype=dtype).element_size()
    linears = [m for m in block.modules() if isinstance(m, nn.Linear)]
    hessians = sum(m.in_features ** 2 * 4 for m in linears)
    largest = max((m.weight.numel() * 4 for m in linears), default=0)
    return weights + hessians + 4 * largest
