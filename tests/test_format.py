import pytest
import torch

from gqsa.format import check_shape, dequantize, pack_codes, pack_layer, unpack_codes


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group_size", [8, 16, 32, 64, 128])
def test_codes_round_trip(bits, group_size):
    q = torch.randint(0, 2**bits, (11, group_size))
    packed = pack_codes(q, bits)
    assert packed.dtype == torch.uint8 and packed.shape == (11, group_size * bits // 8)
    assert torch.equal(unpack_codes(packed, bits, group_size).long(), q)


def test_bitstream_is_little_endian():
    q = torch.tensor([[1, 2, 3, 0, 0, 0, 0, 7]])  # 3-bit: 1 | 2<<3 | 3<<6 -> byte0 = 0b11010001
    assert pack_codes(q, 3)[0, 0].item() == 1 | (2 << 3) | ((3 << 6) & 0xFF)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_pack_layer_dequantizes_to_the_masked_weight(bits):
    n, k, g = 6, 64, 16
    q = torch.randint(0, 2**bits, (n, k)).float()
    keep = torch.rand(n, k // g) > 0.4
    keep[0] = False  # a row with nothing kept
    keep[1] = True   # a row with everything kept
    s = torch.rand(n, k // g) + 0.05
    z = torch.randint(0, 2**bits, (n, k // g)).float()
    p = pack_layer(q, keep, s, z, g, bits)
    assert p.nnz == int(keep.sum())
    assert p.row_ptr.tolist()[-1] == p.nnz and p.row_ptr[1].item() == 0
    expected = (q.reshape(n, k // g, g) - z[..., None]) * s.half().float()[..., None] * keep[..., None]
    assert torch.equal(dequantize(p), expected.reshape(n, k))


def test_codes_out_of_range_are_refused():
    q = torch.full((2, 16), 16.0)
    with pytest.raises(ValueError, match="out of range"):
        pack_layer(q, torch.ones(2, 1, dtype=torch.bool), torch.ones(2, 1), torch.zeros(2, 1), 16, 4)


def test_group_size_must_divide_in_features():
    with pytest.raises(ValueError, match="model.layers.0.mlp.down_proj"):
        check_shape(64, 72, 16, "model.layers.0.mlp.down_proj")
