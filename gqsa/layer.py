"""GQSLinear: an nn.Module holding one layer in the packed GQS format.

It replaces an ``nn.Linear`` inside a transformers model. In memory it holds the packed
tensors of :mod:`gqsa.format` version 1 (``codes``, ``col_idx``, ``row_ptr``, ``scales``,
``zeros``, optional ``bias``), which the kernels read; its state dict is those. Folders store
the lean version 3 (:mod:`gqsa.format_v2`): :func:`gqsa.hf.save_compressed` writes it, and a layer
built for loading a lean folder (``storage=3``, or 2 for an older one) holds the stored tensors
until :meth:`GQSLinear.expand_storage` turns them into version 1. The forward pass dispatches on
device: the pure-PyTorch reference on CPU, the GPU kernels (when present) on CUDA.
"""

from __future__ import annotations

import torch
from torch import nn

from gqsa.format import TENSOR_NAMES, PackedGQS, check_shape
from gqsa.format_v2 import FORMAT_V3, LEAN_VERSIONS, STORED_TENSORS, from_stored, from_v1, to_v1, v2_shapes
from gqsa.kernels.plan import PLAN_TENSORS, KernelPlan, build_plan


class GQSLinear(nn.Module):
    """A linear layer with group-sparse, group-quantized weights.

    Args:
        in_features, out_features: as nn.Linear (K and N).
        nnz: number of kept groups (fixes the shapes of the packed buffers).
        group_size, bits: G and b.
        bias: whether the layer has a bias.
        dtype: dtype of the bias.
        storage: 1 (default): the version-1 buffers the kernels read. 3 (or 2): empty buffers of
            the lean tensors a folder of that format version stores, to be loaded into and then
            expanded (:meth:`expand_storage`); such a layer cannot run before that.
    """

    def __init__(self, in_features: int, out_features: int, nnz: int, group_size: int = 16, bits: int = 4,
                 bias: bool = False, dtype: torch.dtype = torch.float16, device: torch.device | str | None = None,
                 storage: int = 1):
        super().__init__()
        check_shape(out_features, in_features, group_size)
        self.in_features, self.out_features = in_features, out_features
        self.group_size, self.bits = group_size, bits
        kw = {"device": device}
        if storage == 1:
            self.register_buffer("codes", torch.zeros(nnz, group_size * bits // 8, dtype=torch.uint8, **kw))
            self.register_buffer("col_idx", torch.zeros(nnz, dtype=torch.int16, **kw))
            self.register_buffer("row_ptr", torch.zeros(out_features + 1, dtype=torch.int32, **kw))
            self.register_buffer("scales", torch.ones(nnz, dtype=torch.float16, **kw))
            self.register_buffer("zeros", torch.zeros(nnz, dtype=torch.uint8, **kw))
        elif storage in LEAN_VERSIONS:
            for name, (shape, dt) in v2_shapes(out_features, in_features, nnz, group_size, bits, storage).items():
                self.register_buffer(name, torch.zeros(shape, dtype=dt, **kw))
        else:
            raise ValueError(f"storage must be 1, 2 or 3 (a format version), got {storage!r}")
        self.storage = storage
        self.register_buffer("bias", torch.zeros(out_features, dtype=dtype, **kw) if bias else None)
        # GPU kernel metadata derived from the packed tensors (gqsa.kernels.plan); never saved.
        for name in PLAN_TENSORS:
            self.register_buffer(name, None, persistent=False)
        self.schedule = "rows"
        self.plan_lens = (0, 0)  # (longest row, common row length) in kept groups
        self.register_load_state_dict_post_hook(_drop_kernel_plan)

    @classmethod
    def from_packed(cls, packed: PackedGQS, bias: torch.Tensor | None = None) -> "GQSLinear":
        """Build a layer around packed tensors (moved to the bias's device, if any)."""
        device = None if bias is None else bias.device
        dtype = torch.float16 if bias is None else bias.dtype
        layer = cls(packed.in_features, packed.out_features, packed.nnz, packed.group_size, packed.bits,
                    bias is not None, dtype, device="meta")
        for name in TENSOR_NAMES:
            setattr(layer, name, getattr(packed, name).to(device) if device else getattr(packed, name))
        if bias is not None:
            layer.bias = bias.detach().clone()
        return layer

    @property
    def nnz(self) -> int:
        return int(self.codes.shape[0])

    def expand_storage(self, name: str = "layer") -> None:
        """Turn the loaded lean tensors (``storage`` 2 or 3) into the version-1 buffers, validated
        (:func:`gqsa.format_v2.from_stored`); nothing to do on a version-1 layer."""
        if self.storage == 1:
            return
        stored = STORED_TENSORS[self.storage]
        packed = from_stored({t: self._buffers[t] for t in stored}, self.out_features, self.in_features,
                             self.group_size, self.bits, name, self.storage)
        for t in stored:
            del self._buffers[t]
        for t in TENSOR_NAMES:
            self.register_buffer(t, getattr(packed, t))
        self.storage = 1
        self.clear_kernel_plan()

    def _apply(self, fn, recurse: bool = True):
        """``.to(dtype)``, ``.half()``, ``.cuda()`` ... move the packed fp16 scales but never cast
        them: the format stores them as float16, and a cast to bfloat16 would lose precision
        (the bias follows the model's dtype as usual). Trainable scales (E2E-OQP's
        parametrization) are not a buffer and are left to the default."""
        scales = self._buffers.get("scales")
        if scales is None:
            return super()._apply(fn, recurse)
        del self._buffers["scales"]
        try:
            super()._apply(fn, recurse)
        finally:
            device = fn(scales[:0]).device  # where fn sends tensors; its dtype change is ignored
            self._buffers["scales"] = scales.to(device)
        return self

    def packed(self) -> PackedGQS:
        """The layer's tensors as a :class:`PackedGQS` (no copies)."""
        if self.storage != 1:
            raise RuntimeError(f"this GQSLinear still holds the stored version-{self.storage} tensors: call "
                               "expand_storage() after loading them (gqsa.load and from_pretrained do)")
        return PackedGQS(self.codes, self.col_idx, self.row_ptr, self.scales, self.zeros,
                         self.out_features, self.in_features, self.group_size, self.bits)

    def prepare_kernels(self, num_programs: int | None = None) -> None:
        """Derive the GPU kernels' metadata on the layer's device (call before CUDA graph capture
        or torch.compile; the first eager CUDA forward does it otherwise)."""
        from gqsa.kernels.dispatch import choose_schedule
        plan = build_plan(self.packed(), num_programs)
        for name in PLAN_TENSORS:
            setattr(self, name, getattr(plan, name))
        self.schedule = choose_schedule(self.row_ptr)
        self.plan_lens = (plan.max_row_len, plan.row_len)

    def clear_kernel_plan(self) -> None:
        """Drop the kernel metadata (stale once the packed tensors change)."""
        for name in PLAN_TENSORS:
            setattr(self, name, None)

    def kernel_plan(self) -> KernelPlan | None:
        if self.prog_rows is None:
            return None
        return KernelPlan(*(getattr(self, name) for name in PLAN_TENSORS), *self.plan_lens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from gqsa.kernels.ops import gqs_linear
        if x.is_cuda and self.prog_rows is None and not torch.compiler.is_compiling():
            self.prepare_kernels()
        return gqs_linear(x, self.packed(), self.bias, self.kernel_plan(), self.schedule)

    def extra_repr(self) -> str:
        kept = self.nnz / (self.out_features * (self.in_features // self.group_size))
        return (f"in_features={self.in_features}, out_features={self.out_features}, group_size={self.group_size}, "
                f"bits={self.bits}, kept={kept:.3f}, bias={self.bias is not None}"
                + ("" if self.storage == 1 else f", storage={self.storage} (not expanded)"))


def prepare_kernels(model: nn.Module) -> int:
    """Derive the GPU kernel metadata of every :class:`GQSLinear` in ``model`` (on its device);
    call after moving the model to CUDA and before ``torch.compile`` or CUDA graph capture, which
    cannot build it. Returns the number of layers prepared."""
    layers = [m for m in model.modules() if isinstance(m, GQSLinear)]
    for layer in layers:
        layer.prepare_kernels()
    return len(layers)


def roundtrip_model(model: nn.Module) -> dict[str, float | int]:
    """Put every GQSLinear of ``model`` through the stored format (version 3) in place
    (:func:`gqsa.format_v2.from_v1`, then :func:`~gqsa.format_v2.to_v1`: the scales move onto its
    grids, all else is exact), which is what saving and loading a folder does to them; returns the
    size accounting of version 1 and of the stored version over those layers
    (``stored_bits_per_weight``, ``format_version``, ``v1_bits_per_weight``, ``clamped_scales``)."""
    v1_bytes = stored_bytes = weights = clamped = 0
    for m in model.modules():
        if isinstance(m, GQSLinear):
            p = m.packed()
            lean, c = from_v1(p)
            m.scales = to_v1(lean).scales
            m.clear_kernel_plan()
            v1_bytes, stored_bytes, clamped = v1_bytes + p.nbytes(), stored_bytes + lean.nbytes(), clamped + c
            weights += m.in_features * m.out_features
    per_weight = 8 / max(weights, 1)
    return {"v1_bits_per_weight": v1_bytes * per_weight, "stored_bits_per_weight": stored_bytes * per_weight,
            "format_version": FORMAT_V3, "clamped_scales": clamped}


def _drop_kernel_plan(module: GQSLinear, incompatible_keys) -> None:
    """load_state_dict post-hook: new packed tensors make the kernel metadata stale."""
    module.clear_kernel_plan()
