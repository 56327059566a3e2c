"""GQSAConfig: what to compress and how, validated on construction.

The config is a small frozen dataclass. It is written as JSON into the
``quantization_config`` of a saved model's ``config.json`` and read back from
there, so every field must be JSON-serializable.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from gqsa.format import SUPPORTED_BITS, SUPPORTED_GROUP_SIZES

CONFIG_VERSION = 1
BALANCES = ("row", "layer")
SALIENCIES = ("obs", "wanda")
MASKS = ("adaptive", "static")
ALLOCATIONS = ("uniform", "owl", "owl-linear")
ACT_ORDER_GRIDS = ("compensated", "original")
# What a config saved before these options existed did (their defaults changed when they came).
LEGACY = {"allocation": "uniform", "act_order": False, "act_order_grids": "original"}


@dataclass(frozen=True)
class BQPOConfig:
    """Settings of BQPO; defaults follow EfficientQAT Block-AP for 4-bit (w4g128 script).

    Attributes:
        epochs: passes over the calibration sequences per block (Block-AP: 2).
        batch_size: sequences per optimizer step (Block-AP: 2).
        lr_weight: AdamW learning rate of the kept float weights, which set the codes
            (Block-AP: 1e-5 at 4 bits, 2e-5 at 2-3 bits; 0 freezes them and the codes). Block-AP
            runs 4096 sequences x 2 epochs / batch 2 = 4096 steps; with far fewer steps (a CPU
            budget) larger rates are needed, see docs/stages.md.
        lr_scale: learning rate of the per-group scales (Block-AP ``quant_lr``: 1e-4).
        lr_zero: learning rate of the zero points, trained as floats and rounded (STE) in
            the forward pass and at pack time (Block-AP trains them with ``quant_lr``; 0 freezes).
        weight_decay: AdamW weight decay (Block-AP: 0).
        min_lr_factor: cosine schedule from lr down to lr / min_lr_factor (Block-AP: 20).
        max_grad_norm: gradient clipping (0: none).
        fp_targets: train against the full-precision chain's outputs (see :mod:`gqsa.train.bqpo`).
        amp: bfloat16 autocast on CUDA (the master weights stay float32); CPU is always float32.
        keep_best: if the trained block's output MSE is worse than the one-shot block's,
            keep the one-shot layers (logged as ``reverted``).
        seed: seed of the batch order (block i uses ``seed + i``).
    """

    epochs: int = 2
    batch_size: int = 2
    lr_weight: float = 1e-5
    lr_scale: float = 1e-4
    lr_zero: float = 1e-4
    weight_decay: float = 0.0
    min_lr_factor: float = 20.0
    max_grad_norm: float = 0.3
    fp_targets: bool = True
    amp: bool = True
    keep_best: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        require(isinstance(self.epochs, int) and self.epochs >= 1, f"epochs must be an int >= 1, got {self.epochs!r}")
        require(isinstance(self.batch_size, int) and self.batch_size >= 1,
               f"batch_size must be an int >= 1, got {self.batch_size!r}")
        for name in ("lr_weight", "lr_scale", "lr_zero", "weight_decay", "max_grad_norm"):
            value = getattr(self, name)
            require(isinstance(value, (int, float)) and math.isfinite(value) and value >= 0,
                   f"{name} must be a finite number >= 0, got {value!r}")
        require(self.lr_weight > 0 or self.lr_scale > 0 or self.lr_zero > 0,
               "at least one of lr_weight, lr_scale, lr_zero must be > 0 (else there is nothing to train)")
        require(isinstance(self.min_lr_factor, (int, float)) and self.min_lr_factor >= 1,
               f"min_lr_factor must be >= 1, got {self.min_lr_factor!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class E2EConfig:
    """Settings of E2E-OQP; defaults follow EfficientQAT E2E-QP (Llama-2 w4g128 script).

    Attributes:
        epochs: passes over the training windows (EfficientQAT: 1).
        lr: AdamW learning rate of the scales (EfficientQAT: 1e-5 at 4 bits, 2e-5 at 2-3 bits).
        batch_size: windows per forward pass (EfficientQAT: 4).
        grad_accum: forward passes per optimizer step (EfficientQAT: 8, so 32 windows a step).
        train_zeros: also train the zero points (float master, rounded with an STE); off by
            default, as in EfficientQAT: integer zero points move only in whole steps.
        lr_zero: learning rate of the zero points when trained.
        weight_decay: AdamW weight decay (EfficientQAT: 0).
        max_grad_norm: gradient clipping (EfficientQAT: 0.3; 0: none).
        warmup_ratio: fraction of the steps with a linear warmup before the cosine decay to 0.
        gradient_checkpointing: recompute each block's activations in the backward pass.
        amp: bfloat16 autocast on CUDA (scales stay float32; a float16 model trains in float32 and
            returns in float16: :mod:`gqsa.train.e2e`); CPU is always float32.
        seed: seed of the window order.
        distill: weight a of a distillation term: the loss is (1 - a) * LM loss + a * T^2 *
            KL(teacher || student) of the token distributions at temperature T, the teacher being
            the dense model (:func:`gqsa.compress` keeps a copy of it; 0, the default: LM loss only,
            as EfficientQAT).
        temperature: T of the distillation term.
    """

    epochs: int = 1
    lr: float = 1e-5
    batch_size: int = 4
    grad_accum: int = 8
    train_zeros: bool = False
    lr_zero: float = 1e-4
    weight_decay: float = 0.0
    max_grad_norm: float = 0.3
    warmup_ratio: float = 0.03
    gradient_checkpointing: bool = True
    amp: bool = True
    seed: int = 0
    distill: float = 0.0
    temperature: float = 1.0

    def __post_init__(self) -> None:
        require(isinstance(self.distill, (int, float)) and 0 <= self.distill <= 1,
                f"distill must be in [0, 1], got {self.distill!r}")
        require(isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature) and self.temperature > 0,
                f"temperature must be a finite number > 0, got {self.temperature!r}")
        for name in ("epochs", "batch_size", "grad_accum"):
            value = getattr(self, name)
            require(isinstance(value, int) and value >= 1, f"{name} must be an int >= 1, got {value!r}")
        for name in ("lr", "lr_zero"):
            value = getattr(self, name)
            require(isinstance(value, (int, float)) and math.isfinite(value) and value > 0,
                   f"{name} must be a finite number > 0, got {value!r}")
        for name in ("weight_decay", "max_grad_norm"):
            value = getattr(self, name)
            require(isinstance(value, (int, float)) and math.isfinite(value) and value >= 0,
                   f"{name} must be a finite number >= 0, got {value!r}")
        require(isinstance(self.warmup_ratio, (int, float)) and 0 <= self.warmup_ratio < 1,
               f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class GQSAConfig:
    """Settings of one GQSA compression.

    Attributes:
        group_size: G, the number of consecutive input weights in a group.
        sparsity: fraction of groups pruned in each layer (row: in each row), in [0, 1).
        bits: bits per kept weight, one of 2, 3, 4, 8.
        sym: symmetric quantization (zero point fixed at the middle of the grid).
        balance: ``row`` keeps the same number of groups in every output row (even work per
            row); ``layer`` ranks all groups of a layer together (rows get different counts).
        saliency: ``obs`` (second-order, loss increase of removing a group, from H^-1) or
            ``wanda`` (|w| * ||x|| summed over the group).
        skip: module-name suffixes that stay dense (``lm_head`` by default).
        damp: Hessian dampening, as a fraction of the mean of its diagonal.
        block_size: columns processed together in the lazy-batch joint update.
        clip_search: search a shrink of each group's range that minimises its rounding error.
        mask: ``static`` (default) chooses the whole mask up front from the original weights
            (any balance and saliency); ``adaptive`` chooses the groups of each lazy block of
            columns as the joint update reaches it, scoring the already-updated weights
            (SparseGPT's adaptive selection; needs ``balance="row"`` and ``saliency="obs"``).
            Measured on SmolLM2 at W4 S50 it lowered one-shot perplexity (docs/oneshot.md), but
            on synthetic layers it is not reliably better, so it is not the default yet.
        bqpo: run BQPO after each block's one-shot solve (:class:`BQPOConfig`); None: off.
        e2e: run E2E-OQP on the whole compressed model afterwards (:class:`E2EConfig`); None: off.
        sparsity_ramp: r in [0, 1]: spread the sparsity over depth, linearly from
            ``sparsity * (1 - r)`` in the first block to ``sparsity * (1 + r)`` in the last, so
            the mean over blocks (and, for equal blocks, the model's size) stays ``sparsity``.
            Early blocks are the most sensitive to group pruning (docs/oneshot.md). 0 (default):
            every block at ``sparsity``.
        allocation: how the sparsity budget is spread over the linears. ``owl`` (default): each
            block's sparsity from its share of outlier weights on the calibration data (OWL, Yin
            et al. 2024), more outliers -> denser (measured better than uniform in every setting
            tried, docs/oneshot.md); ``owl-linear``: the same per linear (each projection its
            own); ``uniform``: every linear at ``sparsity``. Both OWL variants keep
            exactly the uniform run's count of kept groups, so the size is unchanged
            (:mod:`gqsa.allocation`). The result is written to ``layer_sparsity``.
        allocation_strength: OWL's lambda: the sparsities span ``sparsity`` +- this.
        bits_per_weight: a size budget instead of ``sparsity``: the stored bits per weight of the
            compressed linears (format v3, every tensor counted as :mod:`gqsa.size` counts it)
            that the allocation must hit; it chooses the number of kept groups for that size,
            within half a step of one group per row of one linear (one group with
            ``balance="layer"``; on SmolLM2 at most 0.0004 bits; the target tolerance is 0.01),
            and spreads them as ``allocation`` says (uniform: equal densities). ``sparsity`` is
            then replaced by the resulting mean. None (default): off.
        layer_sparsity: per-linear sparsity by full module name (``model.layers.3.mlp.down_proj``),
            overriding ``sparsity`` there; filled in by the allocation (so a saved folder says
            what each layer got) or given by hand.
        protect_ratio: r > 0 keeps, in every row, the groups of the input channels whose
            calibration RMS is above r times the layer's median channel RMS (massive
            activations, found from the data of each layer); they count against the row's
            budget, so the size is unchanged. 0 (default): off.
        act_order: take the columns by decreasing Hessian diagonal in the joint update, with each
            group's scale and zero fixed up front from the original weights (GPTQ's act-order
            with static groups; :func:`gqsa.solver.prune_quant.prune_quantize_act_order`). The
            stored layout is unchanged. Needs ``mask="static"``. None (default): on with the static
            mask, off with the adaptive one (docs/oneshot.md); False: left to right, each group's
            grid found when the sweep reaches it.
        act_order_grids: where act-order's static grids come from: ``compensated`` (default) from
            the weights after a pruning-only pass of the same sweep (the kept weights as the
            compensation moved them), ``original`` from the weights before it (GPTQ's static
            groups; the only choice before 2026-12-02). One more sweep per layer; measured in
            docs/oneshot.md.
    """

    group_size: int = 16
    sparsity: float = 0.5
    bits: int = 4
    sym: bool = False
    balance: str = "row"
    saliency: str = "obs"
    skip: tuple[str, ...] = ("lm_head",)
    damp: float = 0.01
    block_size: int = 128
    clip_search: bool = True
    mask: str = "static"
    sparsity_ramp: float = 0.0
    allocation: str = "owl"
    allocation_strength: float = 0.08
    bits_per_weight: float | None = None
    layer_sparsity: dict[str, float] | None = None
    protect_ratio: float = 0.0
    act_order: bool | None = None
    act_order_grids: str = "compensated"
    bqpo: BQPOConfig | None = None
    e2e: E2EConfig | None = None
    version: int = field(default=CONFIG_VERSION)

    def __post_init__(self) -> None:
        object.__setattr__(self, "skip", tuple(self.skip))
        if self.act_order is None:
            object.__setattr__(self, "act_order", self.mask == "static")
        for name, cls in (("bqpo", BQPOConfig), ("e2e", E2EConfig)):  # from JSON: a dict
            if isinstance(getattr(self, name), dict):
                object.__setattr__(self, name, cls(**getattr(self, name)))
            require(getattr(self, name) is None or isinstance(getattr(self, name), cls),
                    f"{name} must be a {cls.__name__} or None, got {getattr(self, name)!r}")
        require(isinstance(self.group_size, int) and self.group_size in SUPPORTED_GROUP_SIZES,
               f"group_size must be one of {SUPPORTED_GROUP_SIZES}, got {self.group_size!r}")
        require(isinstance(self.sparsity, (int, float)) and 0.0 <= self.sparsity < 1.0,
               f"sparsity must be in [0, 1), got {self.sparsity!r}")
        require(self.bits in SUPPORTED_BITS, f"bits must be one of {SUPPORTED_BITS}, got {self.bits!r}")
        require(self.balance in BALANCES, f"balance must be one of {BALANCES}, got {self.balance!r}")
        require(self.saliency in SALIENCIES, f"saliency must be one of {SALIENCIES}, got {self.saliency!r}")
        require(self.mask in MASKS, f"mask must be one of {MASKS}, got {self.mask!r}")
        require(self.mask == "static" or (self.balance == "row" and self.saliency == "obs"),
               f"mask='adaptive' needs balance='row' and saliency='obs' (got balance={self.balance!r}, "
               f"saliency={self.saliency!r}); pass mask='static'")
        require(isinstance(self.sparsity_ramp, (int, float)) and 0.0 <= self.sparsity_ramp <= 1.0,
               f"sparsity_ramp must be in [0, 1], got {self.sparsity_ramp!r}")
        require(self.sparsity * (1 + self.sparsity_ramp) < 1.0,
               f"sparsity {self.sparsity} with sparsity_ramp {self.sparsity_ramp} would prune every group of "
               f"the last blocks (sparsity * (1 + ramp) must stay below 1)")
        require(self.allocation in ALLOCATIONS, f"allocation must be one of {ALLOCATIONS}, got {self.allocation!r}")
        require(isinstance(self.allocation_strength, (int, float)) and 0.0 <= self.allocation_strength < 0.5,
                f"allocation_strength must be in [0, 0.5), got {self.allocation_strength!r}")
        require(self.allocation == "uniform" or not self.sparsity_ramp,
                f"allocation={self.allocation!r} chooses each layer's sparsity itself: with sparsity_ramp pass "
                f"allocation='uniform' (CLI: --allocation uniform)")
        require(self.bits_per_weight is None or (isinstance(self.bits_per_weight, (int, float))
                                                 and 0 < self.bits_per_weight < 16),
                f"bits_per_weight must be in (0, 16) or None, got {self.bits_per_weight!r}")
        require(self.bits_per_weight is None or not self.sparsity_ramp,
                "bits_per_weight sets each layer's sparsity itself: it does not combine with sparsity_ramp")
        require(self.layer_sparsity is None or (isinstance(self.layer_sparsity, dict) and all(
            isinstance(v, (int, float)) and 0.0 <= v < 1.0 for v in self.layer_sparsity.values())),
                "layer_sparsity must map module names to sparsities in [0, 1)")
        require(isinstance(self.protect_ratio, (int, float)) and (self.protect_ratio == 0 or self.protect_ratio > 1),
                f"protect_ratio must be 0 (off) or above 1, got {self.protect_ratio!r}")
        require(not self.act_order or self.mask == "static",
                "act_order needs mask='static' (the adaptive mask follows the left-to-right column blocks): "
                "pass act_order=False with mask='adaptive' (CLI: --act-order off)")
        require(self.act_order_grids in ACT_ORDER_GRIDS,
                f"act_order_grids must be one of {ACT_ORDER_GRIDS}, got {self.act_order_grids!r}")
        require(0.0 < self.damp < 1.0, f"damp must be in (0, 1), got {self.damp!r}")
        require(self.block_size > 0 and self.block_size % self.group_size == 0,
               f"block_size must be a positive multiple of group_size, got {self.block_size!r}")
        require(self.version == CONFIG_VERSION,
               f"config version {self.version} is not supported by this gqsa (knows {CONFIG_VERSION})")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict, with ``quant_method`` so transformers can route it to gqsa (the stage
        configs as nested dicts, or None)."""
        d = dataclasses.asdict(self)
        d["skip"] = list(self.skip)
        return {"quant_method": "gqsa", **d}

    def for_oneshot(self) -> GQSAConfig:
        """This config without the training stages."""
        return dataclasses.replace(self, bqpo=None, e2e=None)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GQSAConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise a ValueError naming them. A key that
        configs saved before its option existed lack takes the behaviour of that time
        (:data:`LEGACY`), not today's default."""
        d = {**LEGACY, **{k: v for k, v in d.items() if k not in ("quant_method", "layers", "format_version", "stages")}}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        require(not unknown, f"unknown GQSAConfig keys {unknown}; known keys are {sorted(known)}")
        return cls(**d)

    def block_sparsity(self, index: int, num_blocks: int) -> float:
        """Sparsity of block ``index`` of ``num_blocks`` under :attr:`sparsity_ramp`."""
        require(0 <= index < num_blocks, f"block index {index} outside [0, {num_blocks})")
        if num_blocks == 1 or not self.sparsity_ramp:
            return float(self.sparsity)
        t = 2.0 * index / (num_blocks - 1) - 1.0  # -1 at the first block, +1 at the last
        return float(self.sparsity * (1.0 + self.sparsity_ramp * t))

    def for_block(self, index: int, num_blocks: int) -> GQSAConfig:
        """This config with block ``index``'s sparsity and no ramp: what the layer solver sees."""
        return dataclasses.replace(self, sparsity=self.block_sparsity(index, num_blocks), sparsity_ramp=0.0)

    def for_layer(self, name: str) -> GQSAConfig:
        """This config with linear ``name``'s own sparsity, when ``layer_sparsity`` names it."""
        if self.layer_sparsity and name in self.layer_sparsity:
            return dataclasses.replace(self, sparsity=float(self.layer_sparsity[name]), sparsity_ramp=0.0)
        return self

    def skips(self, name: str) -> bool:
        """True when module ``name`` stays dense."""
        return any(name == s or name.endswith("." + s) for s in self.skip)


def unmatched_skips(skip: tuple[str, ...], names: list[str]) -> list[str]:
    """The entries of ``skip`` (module names or their last parts) that name none of ``names``."""
    return [s for s in skip if not any(n == s or n.endswith("." + s) for n in names)]


def require(ok: bool, message: str) -> None:
    """Raise ValueError(message) unless ``ok``: the validation step of every config dataclass."""
    if not ok:
        raise ValueError(message)
