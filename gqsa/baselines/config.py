"""BaselineConfig: the settings of one baseline compression (RTN, GPTQ, SparseGPT, Wanda).

Like :class:`gqsa.GQSAConfig`, a small frozen dataclass validated on construction. It is
written into the ``gqsa_baseline`` entry of a saved folder's ``config.json`` (not into
``quantization_config``: the saved weights are dense, and transformers loads them as such).

Patterns (which weights are zero):

- ``dense``: none (RTN, GPTQ);
- ``unstructured``: any ``sparsity`` fraction of the weights;
- ``N:M`` (e.g. ``2:4``): at most N nonzeros in every M consecutive input weights of a row
  (exactly N here), the layout of NVIDIA's sparse tensor cores.

Quantization is asymmetric min-max (optionally symmetric) per group of ``group_size``
consecutive input weights of a row; when ``group_size`` does not divide in_features the last
group of each row is shorter (as in the GPTQ code). ``bits = 16`` means no quantization.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from gqsa.config import require
from gqsa.format import SUPPORTED_BITS

BASELINE_VERSION = 1
METHODS = ("rtn", "gptq", "sparsegpt", "wanda")
QUANT_BITS = SUPPORTED_BITS
NO_QUANT = 16
# GPTQ column orders: "off" (left to right, each group's grid from the updated weights when its
# first column is reached), "static" (by decreasing Hessian diagonal, grids of the original
# contiguous groups fixed up front), "group" (by decreasing Hessian diagonal, a group is G
# consecutive columns of that order with its grid found on the fly: needs a per-column group
# index at inference, GPTQ's desc_act / llm-compressor's actorder="weight")
ACT_ORDERS = ("off", "static", "group")
# how a quantized baseline stores its group scales: "fp16" (one fp16 scale a group, as GPTQ,
# AutoGPTQ and llm-compressor save them) or "log8" (gqsa's version-2 scales: an 8-bit log code a
# group under one fp16 factor a row, gqsa.format_v2; the grids are snapped before the sweep, so
# the compensation sees the stored scales)
SCALE_FORMATS = ("fp16", "log8")
# method -> allowed pattern kinds ("nm" stands for any N:M)
PATTERNS = {"rtn": ("dense",), "gptq": ("dense",), "sparsegpt": ("unstructured", "nm"),
            "wanda": ("unstructured", "nm")}


def parse_nm(pattern: str) -> tuple[int, int] | None:
    """(N, M) of an ``"N:M"`` pattern with 0 < N < M, None for other patterns; ValueError if malformed."""
    if ":" not in pattern:
        return None
    n, _, m = pattern.partition(":")
    if not (n.isdigit() and m.isdigit() and 0 < int(n) < int(m)):
        raise ValueError(f"N:M pattern must have integers 0 < N < M, got {pattern!r}")
    return int(n), int(m)


@dataclass(frozen=True)
class BaselineConfig:
    """Settings of one baseline compression.

    Attributes:
        method: ``rtn``, ``gptq``, ``sparsegpt`` or ``wanda``.
        pattern: ``dense``, ``unstructured`` or ``N:M`` (see module doc).
        sparsity: fraction of weights pruned; for ``unstructured`` in (0, 1), for ``N:M`` it
            must be None or 1 - N/M, for ``dense`` None or 0.
        bits: bits per kept weight (2, 3, 4, 8), or 16 for no quantization; default 4 for
            rtn and gptq, 16 for sparsegpt and wanda.
        group_size: consecutive input weights sharing one scale and zero point.
        sym: symmetric quantization.
        act_order: GPTQ only: ``off``, ``static`` or ``group`` (see ``ACT_ORDERS``); default
            ``static`` for gptq (llm-compressor's default too; on SmolLM2 W3 g64 it gives
            perplexity 46.2 / 58.4 against 64.7 / 83.5 for ``off`` and 54.7 / 66.1 for
            ``group``, docs/results.md "Baseline implementations"), ``off`` for the others.
            True and False (format of older saved configs) read as ``static`` and ``off``.
        clip_search: pick each group's range shrink from ``gqsa.solver.quant.CLIP_GRID`` by
            its squared rounding error (False: plain min-max, llm-compressor's default
            observer); default True for gptq (with static act-order on SmolLM2 W3 g64:
            perplexity 38.0 / 47.6 against 46.2 / 58.4 with min-max), False for the others
            (not measured there).
        scale_format: ``fp16`` or ``log8`` (see ``SCALE_FORMATS``): ``log8`` gives a baseline
            gqsa's own 8-bit scale storage, so the two are compared at the same metadata cost;
            it needs grids fixed before the sweep (rtn, or gptq with ``act_order="static"``).
        damp: Hessian dampening, as a fraction of the mean of its diagonal (llm-compressor's
            ``dampening_frac`` 0.01 is the same quantity).
        block_size: columns per lazy-batch update (GPTQ) and per adaptive mask selection
            (SparseGPT); a multiple of ``group_size`` when quantizing with them.
        skip: module-name suffixes that stay dense.
    """

    method: str
    pattern: str = "dense"
    sparsity: float | None = None
    bits: int | None = None
    group_size: int = 128
    sym: bool = False
    act_order: str | None = None
    clip_search: bool | None = None
    scale_format: str = "fp16"
    damp: float = 0.01
    block_size: int = 128
    skip: tuple[str, ...] = ("lm_head",)
    version: int = BASELINE_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "skip", tuple(self.skip))
        if self.act_order is None or isinstance(self.act_order, bool):
            order = {True: "static", False: "off", None: "static" if self.method == "gptq" else "off"}
            object.__setattr__(self, "act_order", order[self.act_order])
        if self.clip_search is None:
            object.__setattr__(self, "clip_search", self.method == "gptq")
        if self.bits is None:
            object.__setattr__(self, "bits", NO_QUANT if self.method in ("sparsegpt", "wanda") else 4)
        require(self.method in METHODS, f"method must be one of {METHODS}, got {self.method!r}")
        nm = parse_nm(self.pattern)
        kind = "nm" if nm else self.pattern
        allowed = " or ".join(PATTERNS[self.method])
        require(kind in PATTERNS[self.method],
               f"method {self.method!r} takes pattern {allowed} (nm = N:M), got {self.pattern!r}")
        _check_sparsity(self.pattern, nm, self.sparsity)
        require(self.bits in QUANT_BITS or self.bits == NO_QUANT,
               f"bits must be one of {QUANT_BITS} or {NO_QUANT} (no quantization), got {self.bits!r}")
        require(self.method not in ("rtn", "gptq") or self.bits != NO_QUANT, f"{self.method} needs bits < 16")
        require(self.method != "wanda" or self.bits == NO_QUANT, "wanda prunes only: bits must be 16")
        require(isinstance(self.group_size, int) and self.group_size > 0,
               f"group_size must be a positive int, got {self.group_size!r}")
        require(0.0 < self.damp < 1.0, f"damp must be in (0, 1), got {self.damp!r}")
        require(self.act_order in ACT_ORDERS, f"act_order must be one of {ACT_ORDERS}, got {self.act_order!r}")
        require(self.act_order == "off" or self.method == "gptq", "act_order applies to gptq only")
        require(self.scale_format in SCALE_FORMATS,
               f"scale_format must be one of {SCALE_FORMATS}, got {self.scale_format!r}")
        fixed_grids = self.quantized and (self.method == "rtn" or self.act_order == "static")
        require(self.scale_format == "fp16" or fixed_grids,
               "scale_format 'log8' needs grids fixed before the sweep: rtn, or gptq with act_order 'static'")
        _check_block(self, nm)
        require(self.version == BASELINE_VERSION,
               f"baseline config version {self.version} is not supported (knows {BASELINE_VERSION})")

    @property
    def nm(self) -> tuple[int, int] | None:
        """(N, M) for an N:M pattern, else None."""
        return parse_nm(self.pattern)

    @property
    def target_sparsity(self) -> float:
        """Fraction of weights set to zero by the pattern."""
        nm = self.nm
        return 1 - nm[0] / nm[1] if nm else float(self.sparsity or 0.0)

    @property
    def quantized(self) -> bool:
        return self.bits != NO_QUANT

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the ``gqsa_baseline`` entry of config.json, without the accounting)."""
        d = dataclasses.asdict(self)
        d["skip"] = list(self.skip)
        return d

    def skips(self, name: str) -> bool:
        """True when module ``name`` stays dense."""
        return any(name == s or name.endswith("." + s) for s in self.skip)


def _check_sparsity(pattern: str, nm: tuple[int, int] | None, sparsity: float | None) -> None:
    if pattern == "unstructured":
        require(isinstance(sparsity, (int, float)) and 0.0 < sparsity < 1.0,
               f"unstructured pattern needs sparsity in (0, 1), got {sparsity!r}")
    elif nm:
        require(sparsity is None or abs(sparsity - (1 - nm[0] / nm[1])) < 1e-9,
               f"pattern {pattern} fixes sparsity at {1 - nm[0] / nm[1]}, got {sparsity!r}")
    else:
        require(not sparsity, f"pattern {pattern!r} prunes nothing, got sparsity {sparsity!r}")


def _check_block(cfg: BaselineConfig, nm: tuple[int, int] | None) -> None:
    require(cfg.block_size > 0, f"block_size must be positive, got {cfg.block_size!r}")
    if cfg.method in ("gptq", "sparsegpt") and cfg.quantized:
        require(cfg.block_size % cfg.group_size == 0,
               f"block_size {cfg.block_size} must be a multiple of group_size {cfg.group_size} "
               "(a quantization group is fixed inside one lazy block)")
    if nm:
        require(cfg.block_size % nm[1] == 0, f"block_size {cfg.block_size} must be a multiple of M = {nm[1]}")

