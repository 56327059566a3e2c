"""The packed GQS layout of one compressed linear layer in memory (format version 1).

Folders store the lean version 3 (:mod:`gqsa.format_v2`), expanded to these tensors at load;
version-1 and version-2 folders still load.

A weight W of shape [N, K] (out_features x in_features) is cut into groups of G
consecutive input weights: K / G groups per row. Only kept groups are stored, in
CSR order over rows (row by row, column groups ascending within a row):

=========  ==========================  ============================================
tensor     shape, dtype                meaning
=========  ==========================  ============================================
codes      [nnz, G*bits/8] uint8       the group's G codes as a little-endian bit
                                       stream: code j occupies bits [j*b, j*b+b)
col_idx    [nnz] int16                 column-group index g of each kept group
                                       (its weights are W[r, g*G:(g+1)*G])
row_ptr    [N+1] int32                 kept groups of row r are row_ptr[r]:row_ptr[r+1]
scales     [nnz] float16               per-group scale s
zeros      [nnz] uint8                 per-group integer zero point z
=========  ==========================  ============================================

A kept weight dequantizes to ``(q - z) * s``; a pruned one is 0. G*bits is a
multiple of 8 for every supported G (8..128) and bits (2, 3, 4, 8), so a group
fills whole bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

FORMAT_VERSION = 3  # what folders are written in (gqsa.format_v2); layers in memory hold version 1's tensors
SUPPORTED_FORMAT_VERSIONS = (1, 2, 3)
TENSOR_NAMES = ("codes", "col_idx", "row_ptr", "scales", "zeros")
# What the format can hold: G * bits must fill whole bytes, and the kernels are built for these.
SUPPORTED_BITS = (2, 3, 4, 8)
SUPPORTED_GROUP_SIZES = (8, 16, 32, 64, 128)


@dataclass
class PackedGQS:
    """The packed tensors of one layer and the shape facts needed to read them."""

    codes: torch.Tensor
    col_idx: torch.Tensor
    row_ptr: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    out_features: int
    in_features: int
    group_size: int
    bits: int

    @property
    def nnz(self) -> int:
        """Number of kept groups."""
        return int(self.col_idx.numel())

    @property
    def density(self) -> float:
        """Fraction of the layer's groups that are kept (1 - sparsity)."""
        return self.nnz / max(1, self.out_features * (self.in_features // self.group_size))

    @property
    def sparsity(self) -> float:
        """Fraction of the layer's groups (and weights) that are pruned."""
        return 1.0 - self.density

    def nbytes(self) -> int:
        """Bytes of all packed tensors (codes, indices, row pointers, scales, zeros)."""
        return tensor_bytes(self, TENSOR_NAMES)


def tensor_bytes(obj: object, names: tuple[str, ...]) -> int:
    """Bytes of the tensors ``obj.<name>`` for each of ``names``."""
    return sum(getattr(obj, n).numel() * getattr(obj, n).element_size() for n in names)


def check_shape(out_features: int, in_features: int, group_size: int, name: str = "layer") -> None:
    """Raise a ValueError naming the layer when G does not divide its in_features."""
    if in_features % group_size != 0:
        raise ValueError(
            f"group_size {group_size} does not divide in_features {in_features} of {name!r}; "
            f"pick a group size that divides it or add {name.split('.')[-1]!r} to skip")
    if in_features // group_size > torch.iinfo(torch.int16).max:
        raise ValueError(f"{name!r} has {in_features // group_size} groups per row; the format holds at most 32767")


def pack_codes(q: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer codes [nnz, G] (values in [0, 2^bits)) into bytes [nnz, G*bits/8]."""
    nnz, g = q.shape
    q = q.to(torch.uint8)
    if 8 % bits == 0:  # 2, 4, 8 bits: whole codes per byte
        per = 8 // bits
        q = q.reshape(nnz, g // per, per).to(torch.int32)
        shifts = torch.arange(per, dtype=torch.int32, device=q.device) * bits
        return (q << shifts).sum(-1).to(torch.uint8)
    bit_idx = torch.arange(bits, device=q.device, dtype=torch.uint8)
    stream = ((q.unsqueeze(-1) >> bit_idx) & 1).reshape(nnz, g * bits // 8, 8).to(torch.int32)
    weights = 1 << torch.arange(8, dtype=torch.int32, device=q.device)
    return (stream * weights).sum(-1).to(torch.uint8)


def unpack_codes(packed: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: bytes [nnz, G*bits/8] -> codes [nnz, G] uint8."""
    nnz = packed.shape[0]
    if 8 % bits == 0:
        per = 8 // bits
        shifts = torch.arange(per, dtype=torch.uint8, device=packed.device) * bits
        q = (packed.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)
        return q.reshape(nnz, group_size)
    bit_idx = torch.arange(8, dtype=torch.uint8, device=packed.device)
    stream = ((packed.unsqueeze(-1) >> bit_idx) & 1).reshape(nnz, group_size, bits).to(torch.int32)
    weights = 1 << torch.arange(bits, dtype=torch.int32, device=packed.device)
    return (stream * weights).sum(-1).to(torch.uint8)


def pack_layer(q: torch.Tensor, keep: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
               group_size: int, bits: int) -> PackedGQS:
    """Pack a quantized layer.

    Args:
        q: integer codes [N, K] (any integer or float dtype holding integers in [0, 2^bits)).
        keep: kept-group mask [N, K/G] bool.
        scales: per-group scales [N, K/G] (float); only kept groups are stored.
        zeros: per-group integer zero points [N, K/G].
    """
    q, keep, scales, zeros = q.cpu(), keep.cpu(), scales.cpu(), zeros.cpu()  # packing is host work
    n, k = q.shape
    ng = k // group_size
    if keep.shape != (n, ng):
        raise ValueError(f"keep mask has shape {tuple(keep.shape)}, expected {(n, ng)}")
    maxq = (1 << bits) - 1
    qg = q.reshape(n, ng, group_size)[keep]
    if qg.numel() and (qg.min() < 0 or qg.max() > maxq):
        raise ValueError(f"codes out of range [0, {maxq}] for {bits}-bit packing")
    counts = keep.sum(1)
    row_ptr = torch.zeros(n + 1, dtype=torch.int32)
    row_ptr[1:] = torch.cumsum(counts, 0).to(torch.int32)
    col = torch.arange(ng).expand(n, ng)[keep]
    return PackedGQS(
        codes=pack_codes(qg.round().to(torch.uint8), bits),
        col_idx=col.to(torch.int16),
        row_ptr=row_ptr,
        scales=scales[keep].to(torch.float16),
        zeros=zeros[keep].round().clamp(0, maxq).to(torch.uint8),
        out_features=n, in_features=k, group_size=group_size, bits=bits)


def row_of_groups(row_ptr: torch.Tensor) -> torch.Tensor:
    """Row index [nnz] (int64) of each kept group, from CSR row pointers [N+1]."""
    counts = (row_ptr[1:] - row_ptr[:-1]).to(torch.int64)
    return torch.repeat_interleave(torch.arange(counts.numel(), device=row_ptr.device), counts)


class Unpacked(NamedTuple):
    """A packed layer on the dense group grid: the inverse of :func:`pack_layer`'s arguments.

    ``q`` [N, K/G, G] codes, ``keep`` [N, K/G] bool, ``scales`` and ``zeros`` [N, K/G]; pruned
    groups hold code 0, zero 0 and scale ``fill_scale``.
    """

    q: torch.Tensor
    keep: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor


def group_positions(p: PackedGQS) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, column-group) index [nnz] int64 of each kept group: where CSR order puts it."""
    return row_of_groups(p.row_ptr), p.col_idx.to(torch.int64)


def keep_mask(p: PackedGQS) -> torch.Tensor:
    """Kept-group mask [N, K/G] bool of a packed layer."""
    keep = torch.zeros(p.out_features, p.in_features // p.group_size, dtype=torch.bool, device=p.row_ptr.device)
    keep[group_positions(p)] = True
    return keep


def unpack_layer(p: PackedGQS, dtype: torch.dtype = torch.float32, fill_scale: float = 0.0) -> Unpacked:
    """Inverse of :func:`pack_layer`: codes, mask, scales and zeros on the dense group grid
    (float ``dtype``). Differentiable in ``p.scales`` and ``p.zeros`` when they require grad."""
    n, ng, g = p.out_features, p.in_features // p.group_size, p.group_size
    at, dev = group_positions(p), p.codes.device
    q = torch.zeros(n, ng, g, dtype=dtype, device=dev).index_put(at, unpack_codes(p.codes, p.bits, g).to(dtype))
    scales = torch.full((n, ng), fill_scale, dtype=dtype, device=dev).index_put(at, p.scales.to(dtype))
    zeros = torch.zeros(n, ng, dtype=dtype, device=dev).index_put(at, p.zeros.to(dtype))
    return Unpacked(q, keep_mask(p), scales, zeros)


def dequantize(p: PackedGQS, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Dense weight [N, K] of a packed layer, ``(q - z) * s``; pruned groups are 0.
    Differentiable in ``p.scales`` and ``p.zeros`` when they require grad (E2E-OQP)."""
    # On the kept groups only, then one scatter: the CPU reference calls this on every forward,
    # and the dense grid of unpack_layer costs twice the time at S50.
    q = unpack_codes(p.codes, p.bits, p.group_size).to(dtype)
    w = (q - p.zeros.to(dtype).unsqueeze(1)) * p.scales.to(dtype).unsqueeze(1)
    dense = torch.zeros(p.out_features, p.in_features // p.group_size, p.group_size, dtype=dtype, device=w.device)
    return dense.index_put(group_positions(p), w).reshape(p.out_features, p.in_features)


def validate_packed(p: PackedGQS, name: str = "layer") -> None:
    """Raise a ValueError naming the layer unless ``p`` is a well-formed packed layer.

    Checked: every tensor's dtype and shape, row pointers (start at 0, never decrease, end at
    nnz), column-group indices (in ``[0, K/G)``, strictly ascending within each row) and zero
    points (on the b-bit grid), and scales (finite). Damaged or hand-edited tensors fail here,
    at load, instead of reading out of bounds in a kernel or giving silently wrong outputs.
    """
    n, k, g, bits = p.out_features, p.in_features, p.group_size, p.bits
    nnz = int(p.col_idx.shape[0]) if p.col_idx.dim() == 1 else -1
    expect = {"codes": ((nnz, g * bits // 8), torch.uint8), "col_idx": ((nnz,), torch.int16),
              "row_ptr": ((n + 1,), torch.int32), "scales": ((nnz,), torch.float16), "zeros": ((nnz,), torch.uint8)}
    for t, (shape, dtype) in expect.items():
        got = getattr(p, t)
        if got.dtype != dtype or tuple(got.shape) != shape:
            raise ValueError(f"{name}: packed tensor {t!r} is {got.dtype} {tuple(got.shape)}, expected {dtype} {shape}")
    ptr, col = p.row_ptr.to(torch.int64), p.col_idx.to(torch.int64)
    if int(ptr[0]) != 0 or int(ptr[-1]) != nnz or bool((ptr[1:] < ptr[:-1]).any()):
        raise ValueError(f"{name}: row_ptr must rise from 0 to the kept-group count {nnz} without decreasing "
                         f"(starts at {int(ptr[0])}, ends at {int(ptr[-1])})")
    if nnz and (int(col.min()) < 0 or int(col.max()) >= k // g):
        raise ValueError(f"{name}: col_idx holds {int(col.min())}..{int(col.max())}, outside [0, {k // g}) "
                         f"(the layer has {k // g} groups per row)")
    same_row = row_of_groups(p.row_ptr)[1:] == row_of_groups(p.row_ptr)[:-1]
    if bool((same_row & (col[1:] <= col[:-1])).any()):
        raise ValueError(f"{name}: col_idx is not strictly ascending within a row (a group is stored twice or "
                         f"out of order)")
    if nnz and int(p.zeros.max()) > (1 << bits) - 1:
        raise ValueError(f"{name}: a zero point is {int(p.zeros.max())}, above the {bits}-bit grid's {(1 << bits) - 1}")
    if not bool(torch.isfinite(p.scales).all()):
        raise ValueError(f"{name}: a scale is not finite (NaN or inf)")
