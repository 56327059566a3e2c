"""Splitting one packed GQS layer across tensor-parallel ranks (Megatron-LM's column and row split).

``y = x W^T`` with W [N, K] splits two ways (Shoeybi et al. 2019, sec. 3):

- **column-parallel** (``colwise``): rank r holds output rows ``[r*N/P, (r+1)*N/P)``. In CSR
  order those rows' kept groups are one contiguous run, so the shard is a slice of ``codes``,
  ``col_idx``, ``scales`` and ``zeros`` and a re-based slice of ``row_ptr``. Its output is
  this rank's slice of y's last dimension.
- **row-parallel** (``rowwise``): rank r holds input columns ``[r*K/P, (r+1)*K/P)``, cut on
  group boundaries (column groups ``[r*ng/P, (r+1)*ng/P)`` with ng = K/G). It keeps the kept
  groups whose column-group index falls in that range, re-bases their int16 ``col_idx`` by
  ``-r*ng/P`` and rebuilds ``row_ptr``. Its output is a partial sum: the ranks' outputs
  all-reduced (summed) give y; a bias is added once (rank 0 holds it).

Within a row, kept groups are stored in ascending column-group order, so a row's groups that
fall in one rank's range are also one contiguous run: reading a row-parallel shard from a file
takes one contiguous read per row (:func:`read_rowwise`).

A lean folder (format version 2 or 3, :mod:`gqsa.format_v2`) stores a mask instead of
``col_idx``/``row_ptr``: its readers (:func:`read_colwise_v2`, :func:`read_rowwise_v2`) read the
small tensors whole to derive the version-1 index, then only the shard's codes.

The in-memory functions are the oracle; the file readers must give the same tensors.
"""

from __future__ import annotations

import torch

from gqsa.format import PackedGQS, row_of_groups
from gqsa.format_v2 import FORMAT_V3, STORED_TENSORS, from_stored

PACKED_1D = ("col_idx", "scales", "zeros")  # per kept group, like the rows of codes


def shard_range(size: int, rank: int, world_size: int, what: str) -> tuple[int, int]:
    """This rank's ``[start, stop)`` of ``size`` equal parts; a ValueError names ``what`` when
    ``world_size`` does not divide ``size``."""
    if size % world_size:
        raise ValueError(f"{what} ({size}) is not divisible by the world size {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside the world size {world_size}")
    part = size // world_size
    return rank * part, (rank + 1) * part


def colwise(p: PackedGQS, rank: int, world_size: int, name: str = "layer") -> PackedGQS:
    """Rank ``rank``'s column-parallel shard of ``p``: out_features N/P, same in_features."""
    r0, r1 = shard_range(p.out_features, rank, world_size, f"out_features of {name!r}")
    a, b = int(p.row_ptr[r0]), int(p.row_ptr[r1])
    return PackedGQS(p.codes[a:b], p.col_idx[a:b], p.row_ptr[r0:r1 + 1] - p.row_ptr[r0], p.scales[a:b],
                     p.zeros[a:b], r1 - r0, p.in_features, p.group_size, p.bits)


def rowwise_selection(col_idx: torch.Tensor, row_ptr: torch.Tensor, group_range: tuple[int, int]
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Which kept groups a row-parallel shard keeps, and its new row pointers.

    Args:
        col_idx: [nnz] int16 column-group indices; row_ptr: [N+1] int32.
        group_range: the rank's column groups ``[g0, g1)``.
    Returns:
        (positions [nnz_shard] int64 into the full layer's groups, in CSR order;
         row_ptr [N+1] int32 of the shard).
    """
    g0, g1 = group_range
    col = col_idx.to(torch.int64)
    positions = torch.nonzero((col >= g0) & (col < g1)).flatten()
    counts = torch.bincount(row_of_groups(row_ptr)[positions], minlength=row_ptr.numel() - 1)
    new_ptr = torch.zeros_like(row_ptr)
    new_ptr[1:] = torch.cumsum(counts, 0).to(row_ptr.dtype)
    return positions, new_ptr


def rowwise(p: PackedGQS, rank: int, world_size: int, name: str = "layer") -> PackedGQS:
    """Rank ``rank``'s row-parallel shard of ``p``: same out_features, in_features K/P."""
    g0, g1 = rowwise_groups(p.in_features, p.group_size, rank, world_size, name)
    pos, row_ptr = rowwise_selection(p.col_idx, p.row_ptr, (g0, g1))
    return PackedGQS(p.codes[pos], (p.col_idx[pos].to(torch.int32) - g0).to(torch.int16), row_ptr, p.scales[pos],
                     p.zeros[pos], p.out_features, (g1 - g0) * p.group_size, p.group_size, p.bits)


def rowwise_groups(in_features: int, group_size: int, rank: int, world_size: int, name: str = "layer"
                   ) -> tuple[int, int]:
    """The column groups ``[g0, g1)`` of a row-parallel shard; a ValueError when the groups
    per row do not split evenly (a shard boundary must fall between groups)."""
    return shard_range(in_features // group_size, rank, world_size,
                       f"column groups per row of {name!r} (in_features {in_features} / group_size {group_size})")


def read_colwise(f, prefix: str, out_features: int, in_features: int, group_size: int, bits: int,
                 rank: int, world_size: int) -> PackedGQS:
    """:func:`colwise` read straight from a ``safetensors.safe_open`` handle: contiguous slices
    only (``row_ptr[r0:r1+1]``, then groups ``row_ptr[r0]:row_ptr[r1]`` of every per-group tensor).
    ``prefix`` is the layer's state-dict name with a trailing dot."""
    r0, r1 = shard_range(out_features, rank, world_size, f"out_features of {prefix[:-1]!r}")
    row_ptr = f.get_slice(prefix + "row_ptr")[r0:r1 + 1]
    a, b = int(row_ptr[0]), int(row_ptr[-1])
    t = {n: f.get_slice(prefix + n)[a:b] for n in ("codes", *PACKED_1D)}
    return PackedGQS(t["codes"], t["col_idx"], row_ptr - row_ptr[0], t["scales"], t["zeros"],
                     r1 - r0, in_features, group_size, bits)


def read_index_v2(f, prefix: str, out_features: int, in_features: int, group_size: int, bits: int,
                  version: int = FORMAT_V3) -> PackedGQS:
    """A lean (``version`` 2 or 3) layer's version-1 view without its codes (a meta tensor of
    their shape): the mask, row factors, scale codes and zeros (about 1 bit of every 6 stored at
    W4 G16) are read whole and validated; the codes are then read as the shard needs them."""
    tensors = {n: f.get_tensor(prefix + n) for n in STORED_TENSORS[version] if n != "codes"}
    tensors["codes"] = torch.empty(f.get_slice(prefix + "codes").get_shape(), dtype=torch.uint8, device="meta")
    return from_stored(tensors, out_features, in_features, group_size, bits, prefix[:-1], version)


def read_colwise_v2(f, prefix: str, out_features: int, in_features: int, group_size: int, bits: int,
                    rank: int, world_size: int, version: int = FORMAT_V3) -> PackedGQS:
    """:func:`read_colwise` of a lean folder: the shard's codes are one contiguous slice."""
    full = read_index_v2(f, prefix, out_features, in_features, group_size, bits, version)
    shard = colwise(full, rank, world_size, prefix[:-1])
    r0, _ = shard_range(out_features, rank, world_size, f"out_features of {prefix[:-1]!r}")
    a = int(full.row_ptr[r0])
    shard.codes = f.get_slice(prefix + "codes")[a:a + shard.nnz]
    return shard


def read_rowwise_v2(f, prefix: str, out_features: int, in_features: int, group_size: int, bits: int,
                    rank: int, world_size: int, version: int = FORMAT_V3) -> PackedGQS:
    """:func:`read_rowwise` of a lean folder: the shard's codes as one contiguous run per row."""
    full = read_index_v2(f, prefix, out_features, in_features, group_size, bits, version)
    g0, g1 = rowwise_groups(in_features, group_size, rank, world_size, prefix[:-1])
    pos, row_ptr = rowwise_selection(full.col_idx, full.row_ptr, (g0, g1))
    shard = rowwise(full, rank, world_size, prefix[:-1])
    shard.codes = _read_runs(f.get_slice(prefix + "codes"), pos, row_ptr)
    return shard


def _read_runs(sl, pos: torch.Tensor, row_ptr: torch.Tensor) -> torch.Tensor:
    """Rows ``pos`` [nnz_shard] (CSR order, one contiguous run per row of ``row_ptr``) of a
    safetensors slice, read run by run."""
    nonempty = row_ptr[1:] > row_ptr[:-1]
    starts = pos[row_ptr[:-1][nonempty].to(torch.int64)].tolist()
    lens = (row_ptr[1:] - row_ptr[:-1])[nonempty].tolist()
    parts = [sl[s:s + k] for s, k in zip(starts, lens)]
    return torch.cat(parts) if parts else sl[0:0]


def read_rowwise(f, prefix: str, out_features: int, in_features: int, group_size: int, bits: int,
                 rank: int, world_size: int) -> PackedGQS:
    """:func:`rowwise` read from a ``safe_open`` handle. ``row_ptr`` and ``col_idx`` (2 bytes a
    group) are read whole to locate the shard's groups; ``codes``, ``scales`` and ``zeros`` are
    read as one contiguous run per row."""
    g0, g1 = rowwise_groups(in_features, group_size, rank, world_size, prefix[:-1])
    full_ptr = f.get_tensor(prefix + "row_ptr")
    col_idx = f.get_tensor(prefix + "col_idx")
    pos, row_ptr = rowwise_selection(col_idx, full_ptr, (g0, g1))
    t = {n: _read_runs(f.get_slice(prefix + n), pos, row_ptr) for n in ("codes", "scales", "zeros")}
    return PackedGQS(t["codes"], (col_idx[pos].to(torch.int32) - g0).to(torch.int16), row_ptr, t["scales"],
                     t["zeros"], out_features, (g1 - g0) * group_size, group_size, bits)
