"""GQSLinear: an nn.Module holding one layer in the packed GQS format.

It replaces an ``nn.Linear`` inside a transformers model. Its state dict holds the
packed tensors of :mod:`gqsa.format` (``codes``, ``col_idx``, ``row_ptr``, ``scales``,
``zeros``, optional ``bias``), so saving and loading go through safetensors as for any
module. The forward pass dispatches on device: the pure-PyTorch reference on CPU, the
GPU kernels (when present) on CUDA.
"""

from __future__ import annotations

import torch
from torch import nn

from gqsa.format import FORMAT_VERSION, TENSOR_NAMES, PackedGQS, check_shape
from gqsa.kernels.plan import PLAN_TENSORS, KernelPlan, build_plan


class GQSLinear(nn.Module):
    """A linear layer with group-sparse, group-quantized weights.

    Args:
        in_features, out_features: as nn.Linear (K and N).
        nnz: number of kept groups (fixes the shapes of the packed buffers).
        group_size, bits: G and b.
        bias: whether the layer has a bias.
        dtype: dtype of the bias.
    """

    format_version = FORMAT_VERSION

    def __init__(self, in_features: int, out_features: int, nnz: int, group_size: int = 16, bits: int = 4,
                 bias: bool = False, dtype: torch.dtype = torch.float16, device: torch.device | str | None = None):
        super().__init__()
        check_shape(out_features, in_features, group_size)
        self.in_features, self.out_features = in_features, out_features
        self.group_size, self.bits = group_size, bits
        kw = {"device": device}
        self.register_buffer("codes", torch.zeros(nnz, group_size * bits // 8, dtype=torch.uint8, **kw))
        self.register_buffer("col_idx", torch.zeros(nnz, dtype=torch.int16, **kw))
        self.register_buffer("row_ptr", torch.zeros(out_features + 1, dtype=torch.int32, **kw))
        self.register_buffer("scales", torch.ones(nnz, dtype=torch.float16, **kw))
        self.register_buffer("zeros", torch.zeros(nnz, dtype=torch.uint8, **kw))
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
        return int(self.col_idx.numel())

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
        return (f"in_features={self.in_features}, out_features={self.out_features}, group_size={self.group_size}, "
                f"bits={self.bits}, kept={self.packed().density:.3f}, bias={self.bias is not None}")


def prepare_kernels(model: nn.Module) -> int:
    """Derive the GPU kernel metadata of every :class:`GQSLinear` in ``model`` (on its device);
    call after moving the model to CUDA and before ``torch.compile`` or CUDA graph capture, which
    cannot build it. Returns the number of layers prepared."""
    layers = [m for m in model.modules() if isinstance(m, GQSLinear)]
    for layer in layers:
        layer.prepare_kernels()
    return len(layers)


def _drop_kernel_plan(module: GQSLinear, incompatible_keys) -> None:
    """load_state_dict post-hook: new packed tensors make the kernel metadata stale."""
    module.clear_kernel_plan()
