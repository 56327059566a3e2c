"""The lean packed layout (format version 2): the storage format of the accuracy and engine issues.

Version 1 (:mod:`gqsa.format`) spends 40 bits of metadata on every kept group (int16 column
index, fp16 scale, uint8 zero): 2.5 bits per kept weight at G = 16, so W4 S50 costs 3.3 bits per
weight. Version 2 keeps the codes and the CSR order of the kept groups and stores the rest as:

==============  ==========================  ===================================================
tensor          shape, dtype                meaning
==============  ==========================  ===================================================
codes           [nnz, G*bits/8] uint8       as version 1, CSR order (row by row, groups ascending)
mask            [ceil(N*K/G/8)] uint8       one bit per group, row-major, little-endian: bit i
                                            of the stream says whether group i % (K/G) of row
                                            i // (K/G) is kept
row_scale       [N] float16                 the largest scale of row r (its scale factor)
scale_codes     [nnz] uint8                 c: scale = row_scale * 2^(-(255 - c) * SPAN / 255)
zeros           [ceil(nnz/8)*bits] uint8    the zero points as a bits-wide little-endian stream
==============  ==========================  ===================================================

Row pointers and column indices are not stored: both follow from the mask (popcount prefix
sums), so the kernels' plans (which use 32-bit words per row, :func:`mask_words`) and
:func:`to_v1` derive them at load. The mask is one stream over the whole layer, not words per
row: with K/G = 36 groups a row (SmolLM2's 576 inputs), per-row words would cost 64 bits a row. The scale code is
logarithmic: the scales of one row span at most 4.9 octaves on SmolLM2 (median 1.1, p99 2.2;
measured on the W4 S50 G16 demo model), and a log grid has the same relative precision for
small and large scales, which a linear 8-bit grid under the row maximum does not.
``SPAN_OCTAVES`` below the row's largest scale are covered in 255 equal steps; a smaller scale is
clamped to the bottom of the grid (``encode_scales`` reports how many).

Bits per weight of a layer [N, K] at sparsity S, group G and b bits:
``(1 - S) * (b + (8 + b) / G) + 1 / G + 16 / K`` (codes and scale/zero per kept group, mask bit
per group, fp16 factor per row): W4 S50 G16 at K = 4096 is 2.442 (version 1: 3.3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from gqsa.format import (
    PackedGQS,
    keep_mask,
    pack_codes,
    row_of_groups,
    tensor_bytes,
    unpack_codes,
)

FORMAT_V2 = 2
SPAN_OCTAVES = 6.0  # range of the scale grid below each row's largest scale
SCALE_LEVELS = 255  # the top code; codes 0..255
TENSOR_NAMES_V2 = ("codes", "mask", "row_scale", "scale_codes", "zeros")


@dataclass
class PackedGQSv2:
    """The version-2 tensors of one layer and the shape facts needed to read them."""

    codes: torch.Tensor
    mask: torch.Tensor
    row_scale: torch.Tensor
    scale_codes: torch.Tensor
    zeros: torch.Tensor
    out_features: int
    in_features: int
    group_size: int
    bits: int

    @property
    def nnz(self) -> int:
        """Number of kept groups."""
        return int(self.scale_codes.numel())

    def nbytes(self) -> int:
        """Bytes of every stored tensor (codes, mask, row factors, scale codes, zero points)."""
        return tensor_bytes(self, TENSOR_NAMES_V2)

    def bits_per_weight(self) -> float:
        """Stored bits per weight of the dense layer, every tensor counted."""
        return 8 * self.nbytes() / (self.out_features * self.in_features)


def pack_mask(keep: torch.Tensor) -> torch.Tensor:
    """Kept-group mask [N, K/G] bool -> the stored bit stream [ceil(N*K/G/8)] uint8."""
    flat = keep.reshape(-1).to(torch.uint8)
    flat = torch.nn.functional.pad(flat, (0, -flat.numel() % 8)).view(-1, 8)
    return (flat << torch.arange(8, dtype=torch.uint8, device=keep.device)).sum(-1).to(torch.uint8)


def unpack_mask(stream: torch.Tensor, n: int, groups_per_row: int) -> torch.Tensor:
    """Inverse of :func:`pack_mask`: bit stream -> keep [n, groups_per_row] bool."""
    bits = (stream.unsqueeze(-1) >> torch.arange(8, dtype=torch.uint8, device=stream.device)) & 1
    return bits.reshape(-1)[: n * groups_per_row].reshape(n, groups_per_row).bool()


def mask_words(keep: torch.Tensor) -> torch.Tensor:
    """Kept-group mask [N, K/G] bool -> words [N, ceil(K/G/32)] int32 (bit j = group 32 w + j)."""
    n, ng = keep.shape
    nw = max(1, math.ceil(ng / 32))
    bits = torch.zeros(n, nw * 32, dtype=torch.int64, device=keep.device)
    bits[:, :ng] = keep.to(torch.int64)
    words = (bits.view(n, nw, 32) << torch.arange(32, device=keep.device)).sum(-1)
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def mask_keep(words: torch.Tensor, groups_per_row: int) -> torch.Tensor:
    """Inverse of :func:`mask_words`: words [N, NW] int32 -> keep [N, groups_per_row] bool."""
    shifts = torch.arange(32, device=words.device, dtype=torch.int64)
    bits = (words.to(torch.int64).unsqueeze(-1) >> shifts) & 1
    return bits.reshape(words.shape[0], -1)[:, :groups_per_row].bool()


def encode_scales(scales: torch.Tensor, rows: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Scales [nnz] (positive float) of groups in rows [nnz] int64 -> (row_scale [N] float16,
    scale_codes [nnz] uint8, number of scales clamped to the bottom of their row's grid).

    The row factor is the row's largest scale rounded up to float16, so no code exceeds 255."""
    s = scales.float().clamp_min(torch.finfo(torch.float16).tiny)
    top = torch.full((n,), torch.finfo(torch.float16).tiny, device=s.device).scatter_reduce(0, rows, s, "amax")
    row_scale = _round_up_fp16(top)
    steps = -torch.log2(s / row_scale.float()[rows]) * (SCALE_LEVELS / SPAN_OCTAVES)
    clamped = int((steps > SCALE_LEVELS + 0.5).sum())
    codes = (SCALE_LEVELS - torch.round(steps)).clamp(0, SCALE_LEVELS).to(torch.uint8)
    return row_scale, codes, clamped


def decode_scales(row_scale: torch.Tensor, scale_codes: torch.Tensor, rows: torch.Tensor,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Scales [nnz] of the groups in ``rows`` from their row factor and 8-bit codes."""
    exponent = (scale_codes.to(torch.float32) - SCALE_LEVELS) * (SPAN_OCTAVES / SCALE_LEVELS)
    return (row_scale.float()[rows] * torch.exp2(exponent)).to(dtype)


def snap_scales(scales: torch.Tensor) -> torch.Tensor:
    """Per-group scales [N, ng] (positive float) -> the values version 2 stores for them (one fp16
    factor a row, an 8-bit log code a group), same shape and dtype. Used to give a baseline the
    same scale storage as gqsa (:class:`gqsa.baselines.BaselineConfig` ``scale_format="log8"``)."""
    n, ng = scales.shape
    rows = torch.arange(n, device=scales.device).repeat_interleave(ng)
    row_scale, codes, _ = encode_scales(scales.reshape(-1), rows, n)
    return decode_scales(row_scale, codes, rows, torch.float32).reshape(n, ng).to(scales.dtype)


def _round_up_fp16(x: torch.Tensor) -> torch.Tensor:
    """float32 [N] -> the smallest float16 values >= x."""
    h = x.to(torch.float16)
    below = h.float() < x
    return torch.where(below, torch.nextafter(h, torch.full_like(h, math.inf)), h)


def from_v1(p: PackedGQS) -> tuple[PackedGQSv2, int]:
    """Re-encode a version-1 layer; returns it and the number of clamped scales. Codes, mask and
    zero points are carried exactly; scales move onto the 8-bit grid (relative error at most
    ``2^(SPAN_OCTAVES / 510) - 1``, 0.82 %, unless clamped)."""
    rows = row_of_groups(p.row_ptr)
    row_scale, scale_codes, clamped = encode_scales(p.scales, rows, p.out_features)
    padded = torch.nn.functional.pad(p.zeros, (0, -p.nnz % 8))  # whole bytes at every bit width
    zeros = pack_codes(padded.reshape(1, -1), p.bits).reshape(-1)
    packed = PackedGQSv2(p.codes, pack_mask(keep_mask(p)), row_scale, scale_codes, zeros,
                         p.out_features, p.in_features, p.group_size, p.bits)
    return packed, clamped


def to_v1(p: PackedGQSv2) -> PackedGQS:
    """The version-1 view of a version-2 layer (what the current kernels and the reference read):
    column indices and row pointers from the mask, fp16 scales decoded, zero points unpacked."""
    keep = unpack_mask(p.mask, p.out_features, p.in_features // p.group_size)
    counts = keep.sum(1)
    row_ptr = torch.zeros(p.out_features + 1, dtype=torch.int32, device=keep.device)
    row_ptr[1:] = torch.cumsum(counts, 0).to(torch.int32)
    col_idx = torch.arange(keep.shape[1], device=keep.device).expand_as(keep)[keep].to(torch.int16)
    nnz = int(counts.sum())
    zeros = unpack_codes(p.zeros.reshape(1, -1), p.bits, p.zeros.numel() * 8 // p.bits).reshape(-1)[:nnz]
    rows = row_of_groups(row_ptr)
    scales = decode_scales(p.row_scale, p.scale_codes, rows, torch.float32).to(torch.float16)
    return PackedGQS(p.codes, col_idx, row_ptr, scales, zeros.to(torch.uint8), p.out_features, p.in_features,
                     p.group_size, p.bits)



def v2_shapes(out_features: int, in_features: int, nnz: int, group_size: int, bits: int
              ) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Shape and dtype of each stored version-2 tensor of a layer with ``nnz`` kept groups."""
    groups = out_features * (in_features // group_size)
    return {"codes": ((nnz, group_size * bits // 8), torch.uint8), "mask": ((math.ceil(groups / 8),), torch.uint8),
            "row_scale": ((out_features,), torch.float16), "scale_codes": ((nnz,), torch.uint8),
            "zeros": ((math.ceil(nnz / 8) * bits,), torch.uint8)}


def validate_v2(p: PackedGQSv2, name: str = "layer") -> None:
    """Raise a ValueError naming the layer unless ``p`` is a well-formed version-2 layer: every
    tensor's dtype and shape, the mask's kept-group count against the codes, no mask bit past
    the layer's groups, and finite positive row factors. (Column order and zero points are
    exact by construction: the mask fixes the order, b-bit zeros cannot leave the grid.)"""
    nnz = int(p.codes.shape[0]) if p.codes.dim() == 2 else -1
    for t, (shape, dtype) in v2_shapes(p.out_features, p.in_features, nnz, p.group_size, p.bits).items():
        got = getattr(p, t)
        if got.dtype != dtype or tuple(got.shape) != shape:
            raise ValueError(f"{name}: packed tensor {t!r} is {got.dtype} {tuple(got.shape)}, expected {dtype} {shape}")
    groups = p.out_features * (p.in_features // p.group_size)
    bits = ((p.mask.unsqueeze(-1) >> torch.arange(8, dtype=torch.uint8, device=p.mask.device)) & 1).reshape(-1)
    if int(bits.sum()) != nnz or bool(bits[groups:].any()):
        raise ValueError(f"{name}: the mask marks {int(bits[:groups].sum())} kept groups (and "
                         f"{int(bits[groups:].sum())} past the layer's {groups}), but the codes hold {nnz}")
    rs = p.row_scale.float()
    if not bool((torch.isfinite(rs) & (rs > 0)).all()):
        raise ValueError(f"{name}: a row scale factor is not a finite positive number")


def to_stored(p: PackedGQS) -> dict[str, torch.Tensor]:
    """The version-2 tensors a folder stores for a version-1 layer, by name."""
    v2, _ = from_v1(p)
    return {t: getattr(v2, t) for t in TENSOR_NAMES_V2}


def from_stored(tensors: dict[str, torch.Tensor], out_features: int, in_features: int, group_size: int, bits: int,
                name: str = "layer") -> PackedGQS:
    """The version-1 layer (what the kernels and the reference read) of stored version-2 tensors, validated."""
    v2 = PackedGQSv2(*(tensors[t] for t in TENSOR_NAMES_V2), out_features, in_features, group_size, bits)
    validate_v2(v2, name)
    return to_v1(v2)
