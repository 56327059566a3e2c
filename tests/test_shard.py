import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from gqsa.format import TENSOR_NAMES, PackedGQS, dequantize, pack_layer
from gqsa.shard import colwise, read_colwise, read_rowwise, rowwise


def _random_layer(n=8, k=128, g=16, bits=4, seed=0) -> PackedGQS:
    gen = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 2**bits, (n, k), generator=gen).float()
    keep = torch.rand(n, k // g, generator=gen) > 0.5
    keep[0] = False  # a row with nothing kept
    keep[1] = True   # a row with everything kept
    keep[2, : k // g // 2] = False  # a row whose first half (rank 0's, for P=2) is empty
    s = torch.rand(n, k // g, generator=gen) + 0.05
    z = torch.randint(0, 2**bits, (n, k // g), generator=gen).float()
    return pack_layer(q, keep, s, z, g, bits)


def _same(a: PackedGQS, b: PackedGQS) -> None:
    for name in TENSOR_NAMES:
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert (a.out_features, a.in_features) == (b.out_features, b.in_features)


@pytest.mark.parametrize("bits", [3, 4])
@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_colwise_shard_is_the_dense_rows(world_size, bits):
    p = _random_layer(bits=bits)
    dense = dequantize(p)
    rows = p.out_features // world_size
    for rank in range(world_size):
        shard = colwise(p, rank, world_size)
        assert shard.row_ptr[0] == 0 and shard.row_ptr[-1] == shard.nnz
        assert torch.equal(dequantize(shard), dense[rank * rows:(rank + 1) * rows])


@pytest.mark.parametrize("bits", [3, 4])
@pytest.mark.parametrize("world_size", [1, 2, 4, 8])
def test_rowwise_shard_is_the_dense_columns(world_size, bits):
    p = _random_layer(bits=bits)
    dense = dequantize(p)
    cols = p.in_features // world_size
    nnz = 0
    for rank in range(world_size):
        shard = rowwise(p, rank, world_size)
        assert shard.col_idx.dtype == torch.int16 and int(shard.col_idx.max()) < cols // p.group_size
        assert torch.equal(dequantize(shard), dense[:, rank * cols:(rank + 1) * cols])
        nnz += shard.nnz
    assert nnz == p.nnz  # every kept group lands on exactly one rank


def test_bad_world_sizes_name_the_constraint():
    p = _random_layer(n=6, k=64)  # 6 rows, 4 column groups
    with pytest.raises(ValueError, match=r"out_features of 'q' \(6\) is not divisible by the world size 4"):
        colwise(p, 0, 4, name="q")
    with pytest.raises(ValueError, match=r"column groups per row of 'o'.*\(4\) is not divisible by the world size 3"):
        rowwise(p, 0, 3, name="o")
    with pytest.raises(ValueError, match="rank 2 is outside"):
        colwise(p, 2, 2)


@pytest.mark.parametrize("world_size", [2, 4])
def test_reading_shards_from_a_file_gives_the_in_memory_shards(tmp_path, world_size):
    p = _random_layer(bits=3, seed=3)
    save_file({f"layer.{n}": getattr(p, n) for n in TENSOR_NAMES}, tmp_path / "m.safetensors")
    shape = (p.out_features, p.in_features, p.group_size, p.bits)
    with safe_open(tmp_path / "m.safetensors", framework="pt") as f:
        for rank in range(world_size):
            _same(read_colwise(f, "layer.", *shape, rank, world_size), colwise(p, rank, world_size))
            _same(read_rowwise(f, "layer.", *shape, rank, world_size), rowwise(p, rank, world_size))


@pytest.mark.parametrize("world_size", [2, 4])
def test_reading_shards_from_a_lean_file_gives_the_in_memory_shards(tmp_path, world_size):
    """A folder stores the lean format (mask, not indices): the readers derive the index and read the codes' slices."""
    from gqsa.format_v2 import from_v1, to_stored, to_v1
    from gqsa.shard import read_colwise_v2, read_rowwise_v2

    p = to_v1(from_v1(_random_layer(bits=4, seed=5))[0])  # the layer as a folder gives it back
    save_file({f"layer.{n}": t.contiguous() for n, t in to_stored(p).items()}, tmp_path / "m.safetensors")
    shape = (p.out_features, p.in_features, p.group_size, p.bits)
    with safe_open(tmp_path / "m.safetensors", framework="pt") as f:
        for rank in range(world_size):
            _same(read_colwise_v2(f, "layer.", *shape, rank, world_size), colwise(p, rank, world_size))
            _same(read_rowwise_v2(f, "layer.", *shape, rank, world_size), rowwise(p, rank, world_size))


@pytest.mark.parametrize("world_size", [2, 4])
def test_reading_shards_from_a_version_2_folder_decodes_its_fp16_row_factors(tmp_path, world_size):
    """A folder written in format version 2 (``row_scale`` [N] fp16 instead of ``layer_scale`` and
    ``row_code``): each rank's shard equals the shard of the whole layer decoded as version 2."""
    import torch

    from gqsa.format_v2 import from_stored, from_v1
    from gqsa.shard import read_colwise_v2, read_rowwise_v2

    v3, _ = from_v1(_random_layer(bits=4, seed=6))
    row_scale = v3.row_factors().to(torch.float16) * 1.5  # any positive fp16 factors
    stored = {"codes": v3.codes, "mask": v3.mask, "row_scale": row_scale, "scale_codes": v3.scale_codes,
              "zeros": v3.zeros}
    save_file({f"layer.{n}": t.contiguous() for n, t in stored.items()}, tmp_path / "m.safetensors")
    shape = (v3.out_features, v3.in_features, v3.group_size, v3.bits)
    p = from_stored(stored, *shape, version=2)
    with safe_open(tmp_path / "m.safetensors", framework="pt") as f:
        for rank in range(world_size):
            _same(read_colwise_v2(f, "layer.", *shape, rank, world_size, version=2), colwise(p, rank, world_size))
            _same(read_rowwise_v2(f, "layer.", *shape, rank, world_size, version=2), rowwise(p, rank, world_size))
