"""Finding decoder blocks and their linear layers in a transformers model.

No per-family table: the decoder blocks are the ``nn.ModuleList`` holding the most
parameters whose entries contain ``nn.Linear`` layers (``model.layers`` in LLaMA, Qwen2
and Mistral, ``model.decoder.layers`` in OPT).
"""

from __future__ import annotations

from torch import nn

from gqsa.layer import GQSLinear

TESTED_MODEL_TYPES = ("llama", "qwen2", "mistral", "opt")


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """Name and ModuleList of the decoder blocks; ValueError saying what was found otherwise."""
    best, best_size = None, 0
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) and all(_has_linear(m) for m in module):
            size = sum(p.numel() for p in module.parameters())
            if size > best_size:
                best, best_size = (name, module), size
    if best is None:
        kinds = sorted({type(m).__name__ for m in model.modules()})[:20]
        raise ValueError(f"no list of decoder blocks with nn.Linear layers found in {type(model).__name__}; "
                         f"module types present: {kinds}. gqsa supports decoder-only models whose blocks use "
                         f"nn.Linear (tested: {', '.join(TESTED_MODEL_TYPES)}).")
    return best


def _has_linear(module: nn.Module) -> bool:
    """True when ``module`` holds a dense or an already compressed linear layer."""
    return any(isinstance(m, (nn.Linear, GQSLinear)) for m in module.modules())


def find_linears(module: nn.Module) -> dict[str, nn.Linear]:
    """All nn.Linear layers inside ``module``, by their name relative to it."""
    return {n: m for n, m in module.named_modules() if isinstance(m, nn.Linear)}


def set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule at dotted path ``name`` of ``root``."""
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)
