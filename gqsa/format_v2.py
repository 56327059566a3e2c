"""The lean packed layout (format versions 2 and 3): the storage format of the accuracy and engine issues.

Version 1 (:mod:`gqsa.format`) spends 40 bits of metadata on every kept group (int16 column
index, fp16 scale, uint8 zero): 2.5 bits per kept weight at G = 16, so W4 S50 costs 3.3 bits per
weight. The lean layout keeps the codes and the CSR order of the kept groups and stores the rest
as (version 3, what folders are written in):

==============  ==========================  ===================================================
tensor          shape, dtype                meaning
==============  ==========================  ===================================================
codes           [nnz, G*bits/8] uint8       as version 1, CSR order (row by row, groups ascending)
mask            [ceil(N*K/G/8)] uint8       one bit per group, row-major, little-endian: bit i
                                            of the stream says whether group i % (K/G) of row
                                            i // (K/G) is kept
layer_scale     [1] float32                 the layer's largest scale
row_code        [N] uint8                   r: row factor f = layer_scale * 2^(-(255 - r) * 30 / 255),
                                            rounded up to cover the row's largest scale
scale_codes     [nnz] uint8                 c: scale = f * 2^(-(255 - c) * 6 / 255)
zeros           [ceil(nnz/8)*bits] uint8    the zero points as a bits-wide little-endian stream
==============  ==========================  ===================================================

Version 2 stored the row factor as ``row_scale`` [N] float16 (the row's largest scale, rounded up
to float16) instead of ``layer_scale`` and ``row_code``; its folders still load, exactly as they
were written (:func:`from_stored` with ``version=2``).

Row pointers and column indices are not stored: both follow from the mask (popcount prefix
sums), so the kernels' plans (which use 32-bit words per row, :func:`mask_words`) and
:func:`to_v1` derive them at load. The mask is one stream over the whole layer, not words per
row: with K/G = 36 groups a row (SmolLM2's 576 inputs), per-row words would cost 64 bits a row. The scale code is
logarithmic: the scales of one row span at most 4.9 octaves on SmolLM2 (median 1.1, p99 2.2;
measured on the W4 S50 G16 demo model), and a log grid has the same relative precision for
small and large scales, which a linear 8-bit grid under the row maximum does not.
``SPAN_OCTAVES`` below the row's factor are covered in 255 equal steps; a smaller scale is
clamped to the bottom of the grid (``encode_scales`` reports how many). The row factor's own
grid (``ROW_SPAN_OCTAVES`` = 30 below the layer's largest scale in 255 steps) has a step of
exactly ``ROW_STEP`` = 5 group steps (0.118 octave): every decoded scale is then a point of one
grid per layer, so loading a folder and saving it again gives the same tensors (the step must
be an odd number of group steps for that: see :func:`encode_rows`). The factor is rounded up, so
the row's largest scale sits at most one row step below the top of its group grid: the group
scales keep their 8-bit precision, and only scales more than 5.88 octaves below their row's
largest can be clamped that were not in version 2.

Bits per weight of a layer [N, K] at sparsity S, group G and b bits:
``(1 - S) * (b + (8 + b) / G) + 1 / G + 8 / K + 32 / (N K)`` (codes and scale/zero per kept group,
mask bit per group, 8-bit code per row, fp32 factor per layer): W4 S50 G16 at K = 4096 is 2.4395
(version 2: 2.4414, version 1: 3.3).
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
FORMAT_V3 = 3
LEAN_VERSIONS = (FORMAT_V2, FORMAT_V3)
SPAN_OCTAVES = 6.0  # range of the scale grid below each row's factor
SCALE_LEVELS = 255  # the top code; codes 0..255
ROW_STEP = 5  # the row-factor grid's step in group-grid steps (odd: see encode_rows)
ROW_SPAN_OCTAVES = SPAN_OCTAVES * ROW_STEP  # range of the row-factor grid below the layer's largest scale
TENSOR_NAMES_V3 = ("codes", "mask", "layer_scale", "row_code", "scale_codes", "zeros")
TENSOR_NAMES_V2 = ("codes", "mask", "row_scale", "scale_codes", "zeros")
STORED_TENSORS = {FORMAT_V2: TENSOR_NAMES_V2, FORMAT_V3: TENSOR_NAMES_V3}  # by format version


@dataclass
class PackedGQSv2:
    """The lean (version 3) tensors of one layer and the shape facts needed to read them."""

    codes: torch.Tensor
    mask: torch.Tensor
    layer_scale: torch.Tensor
    row_code: torch.Tensor
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

    def row_factors(self) -> torch.Tensor:
        """The row factors [N] float32 (:func:`decode_rows`)."""
        return decode_rows(self.layer_scale, self.row_code)

    def nbytes(self) -> int:
        """Bytes of every stored tensor (codes, mask, layer and row factors, scale codes, zero points)."""
        return tensor_bytes(self, TENSOR_NAMES_V3)

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


def encode_rows(top: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Each row's largest scale [N] (float32, positive; an empty row any positive value) ->
    (layer_scale [1] float32, row_code [N] uint8, number of rows clamped to the grid's bottom).

    The layer factor is the largest of them, exactly. With x = log2(layer_scale / top) in group
    steps, a row takes row step k = floor((x + 1/2) / ROW_STEP): its factor is the smallest row-grid
    point at most half a group step below its largest scale (which then still takes group code
    255 at the grid's precision). A largest scale that is itself a group-grid point j (what a
    loaded folder holds) gets k = floor(j / ROW_STEP) back, the k it came from, so a second
    encoding changes nothing; an odd ROW_STEP keeps (j + 1/2) / ROW_STEP away from the integers
    by at least 1 / (2 ROW_STEP), beyond float16 rounding."""
    layer_scale = top.max().reshape(1).float()
    x = torch.log2(layer_scale / top) * (SCALE_LEVELS / SPAN_OCTAVES)
    k = torch.floor((x + 0.5) / ROW_STEP)
    clamped = int((k > SCALE_LEVELS).sum())
    return layer_scale, (SCALE_LEVELS - k).clamp(0, SCALE_LEVELS).to(torch.uint8), clamped


def decode_rows(layer_scale: torch.Tensor, row_code: torch.Tensor) -> torch.Tensor:
    """Row factors [N] float32 from the layer factor [1] and the rows' 8-bit codes [N]."""
    exponent = (row_code.to(torch.float32) - SCALE_LEVELS) * (ROW_SPAN_OCTAVES / SCALE_LEVELS)
    return layer_scale.float() * torch.exp2(exponent)


def encode_scales(scales: torch.Tensor, rows: torch.Tensor, n: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Scales [nnz] (positive float) of groups in rows [nnz] int64 of a layer with ``n`` rows ->
    (layer_scale [1] float32, row_code [N] uint8, scale_codes [nnz] uint8, number of scales and
    rows clamped to the bottom of their grid).

    Each scale is coded against its row's *decoded* factor, so decoding gives back the nearest
    grid point; a scale a hair above its factor (float32 rounding of the factor) takes code 255."""
    tiny = torch.finfo(torch.float16).tiny
    s = scales.float().clamp_min(tiny)
    top = torch.full((n,), tiny, device=s.device).scatter_reduce(0, rows, s, "amax")
    if rows.numel():  # rows without kept groups take the largest factor: never clamped, never read
        top = torch.where(torch.bincount(rows, minlength=n) > 0, top, top.max())
    layer_scale, row_code, clamped_rows = encode_rows(top)
    return (layer_scale, row_code, *_scale_codes(s, decode_rows(layer_scale, row_code), rows, clamped_rows))


def _scale_codes(s: torch.Tensor, factors: torch.Tensor, rows: torch.Tensor, clamped: int
                 ) -> tuple[torch.Tensor, int]:
    """8-bit log codes [nnz] of scales ``s`` under their rows' factors [N]; adds the clamped count."""
    steps = -torch.log2(s / factors[rows]) * (SCALE_LEVELS / SPAN_OCTAVES)
    clamped += int((steps > SCALE_LEVELS + 0.5).sum())
    return (SCALE_LEVELS - torch.round(steps)).clamp(0, SCALE_LEVELS).to(torch.uint8), clamped


def decode_scales(row_factor: torch.Tensor, scale_codes: torch.Tensor, rows: torch.Tensor,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Scales [nnz] of the groups in ``rows`` from their rows' factors [N] and their 8-bit codes."""
    exponent = (scale_codes.to(torch.float32) - SCALE_LEVELS) * (SPAN_OCTAVES / SCALE_LEVELS)
    return (row_factor.float()[rows] * torch.exp2(exponent)).to(dtype)


def snap_scales(scales: torch.Tensor) -> torch.Tensor:
    """Per-group scales [N, ng] (positive float) -> the values the lean format stores for them (an
    fp32 factor a layer, an 8-bit log code a row and a group), same shape and dtype. Used to give
    a baseline the same scale storage as gqsa (:class:`gqsa.baselines.BaselineConfig`
    ``scale_format="log8"``)."""
    n, ng = scales.shape
    rows = torch.arange(n, device=scales.device).repeat_interleave(ng)
    layer_scale, row_code, codes, _ = encode_scales(scales.reshape(-1), rows, n)
    return decode_scales(decode_rows(layer_scale, row_code), codes, rows).reshape(n, ng).to(scales.dtype)


def from_v1(p: PackedGQS) -> tuple[PackedGQSv2, int]:
    """Re-encode a version-1 layer in version 3; returns it and the number of clamped scales and
    rows. Codes, mask and zero points are carried exactly; scales move onto the 8-bit grids
    (relative error at most ``2^(SPAN_OCTAVES / 510) - 1``, 0.82 %, unless clamped)."""
    rows = row_of_groups(p.row_ptr)
    layer_scale, row_code, scale_codes, clamped = encode_scales(p.scales, rows, p.out_features)
    padded = torch.nn.functional.pad(p.zeros, (0, -p.nnz % 8))  # whole bytes at every bit width
    zeros = pack_codes(padded.reshape(1, -1), p.bits).reshape(-1)
    packed = PackedGQSv2(p.codes, pack_mask(keep_mask(p)), layer_scale, row_code, scale_codes, zeros,
                         p.out_features, p.in_features, p.group_size, p.bits)
    return packed, clamped


def to_v1(p: PackedGQSv2) -> PackedGQS:
    """The version-1 view of a version-3 layer (what the kernels and the reference read):
    column indices and row pointers from the mask, fp16 scales decoded, zero points unpacked."""
    return _expand(p.codes, p.mask, p.row_factors(), p.scale_codes, p.zeros, p.out_features, p.in_features,
                   p.group_size, p.bits)


def _expand(codes: torch.Tensor, mask: torch.Tensor, row_factor: torch.Tensor, scale_codes: torch.Tensor,
            zeros: torch.Tensor, n: int, k: int, g: int, bits: int) -> PackedGQS:
    """The version-1 layer of lean tensors whose row factors [N] float32 are decoded."""
    keep = unpack_mask(mask, n, k // g)
    counts = keep.sum(1)
    row_ptr = torch.zeros(n + 1, dtype=torch.int32, device=keep.device)
    row_ptr[1:] = torch.cumsum(counts, 0).to(torch.int32)
    col_idx = torch.arange(keep.shape[1], device=keep.device).expand_as(keep)[keep].to(torch.int16)
    nnz = int(counts.sum())
    zeros = unpack_codes(zeros.reshape(1, -1), bits, zeros.numel() * 8 // bits).reshape(-1)[:nnz]
    scales = decode_scales(row_factor, scale_codes, row_of_groups(row_ptr)).to(torch.float16)
    return PackedGQS(codes, col_idx, row_ptr, scales, zeros.to(torch.uint8), n, k, g, bits)


def v2_shapes(out_features: int, in_features: int, nnz: int, group_size: int, bits: int, version: int = FORMAT_V3
              ) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Shape and dtype of each stored tensor of a lean (``version`` 2 or 3) layer with ``nnz`` kept groups."""
    groups = out_features * (in_features // group_size)
    rows = ({"row_scale": ((out_features,), torch.float16)} if version == FORMAT_V2 else
            {"layer_scale": ((1,), torch.float32), "row_code": ((out_features,), torch.uint8)})
    return {"codes": ((nnz, group_size * bits // 8), torch.uint8), "mask": ((math.ceil(groups / 8),), torch.uint8),
            **rows, "scale_codes": ((nnz,), torch.uint8), "zeros": ((math.ceil(nnz / 8) * bits,), torch.uint8)}


def validate_stored(tensors: dict[str, torch.Tensor], out_features: int, in_features: int, group_size: int,
                    bits: int, version: int = FORMAT_V3, name: str = "layer") -> None:
    """Raise a ValueError naming the layer unless ``tensors`` are a well-formed lean layer of
    ``version``: every tensor's dtype and shape, the mask's kept-group count against the codes,
    no mask bit past the layer's groups, and a finite positive layer factor (version 3) or row
    factors (version 2). (Column order and zero points are exact by construction: the mask fixes
    the order, b-bit zeros cannot leave the grid; every 8-bit row code is a valid factor.)"""
    codes = tensors["codes"]
    nnz = int(codes.shape[0]) if codes.dim() == 2 else -1
    for t, (shape, dtype) in v2_shapes(out_features, in_features, nnz, group_size, bits, version).items():
        got = tensors[t]
        if got.dtype != dtype or tuple(got.shape) != shape:
            raise ValueError(f"{name}: packed tensor {t!r} is {got.dtype} {tuple(got.shape)}, expected {dtype} {shape}")
    groups = out_features * (in_features // group_size)
    mask = tensors["mask"]
    bits_ = ((mask.unsqueeze(-1) >> torch.arange(8, dtype=torch.uint8, device=mask.device)) & 1).reshape(-1)
    if int(bits_.sum()) != nnz or bool(bits_[groups:].any()):
        raise ValueError(f"{name}: the mask marks {int(bits_[:groups].sum())} kept groups (and "
                         f"{int(bits_[groups:].sum())} past the layer's {groups}), but the codes hold {nnz}")
    factor, what = ((tensors["row_scale"], "a row scale factor") if version == FORMAT_V2 else
                    (tensors["layer_scale"], "the layer scale factor"))
    if not bool((torch.isfinite(factor.float()) & (factor.float() > 0)).all()):
        raise ValueError(f"{name}: {what} is not a finite positive number")


def to_stored(p: PackedGQS) -> dict[str, torch.Tensor]:
    """The version-3 tensors a folder stores for a version-1 layer, by name."""
    v3, _ = from_v1(p)
    return {t: getattr(v3, t) for t in TENSOR_NAMES_V3}


def from_stored(tensors: dict[str, torch.Tensor], out_features: int, in_features: int, group_size: int, bits: int,
                name: str = "layer", version: int = FORMAT_V3) -> PackedGQS:
    """The version-1 layer (what the kernels and the reference read) of stored lean tensors of
    ``version`` (2 or 3), validated; a version-2 layer decodes with its own fp16 row factors."""
    validate_stored(tensors, out_features, in_features, group_size, bits, version, name)
    factors = (tensors["row_scale"].float() if version == FORMAT_V2 else
               decode_rows(tensors["layer_scale"], tensors["row_code"]))
    return _expand(tensors["codes"], tensors["mask"], factors, tensors["scale_codes"], tensors["zeros"],
                   out_features, in_features, group_size, bits)
