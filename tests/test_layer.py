import torch

from gqsa.format import dequantize, pack_layer
from gqsa.layer import GQSLinear


def _random_layer(n=24, k=64, g=16, bits=4, bias=True, seed=0):
    torch.manual_seed(seed)
    q = torch.randint(0, 2**bits, (n, k)).float()
    keep = torch.rand(n, k // g) > 0.5
    p = pack_layer(q, keep, torch.rand(n, k // g) + 0.01, torch.randint(0, 2**bits, (n, k // g)).float(), g, bits)
    return GQSLinear.from_packed(p, torch.randn(n) if bias else None), p


def test_reference_forward_equals_dense_matmul_of_dequantized_weight():
    layer, p = _random_layer()
    x = torch.randn(3, 5, 64)
    expected = x @ dequantize(p).T + layer.bias
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_half_inputs_give_half_outputs_close_to_fp32():
    layer, p = _random_layer(bias=False)
    x = torch.randn(4, 64)
    y = layer(x.half())
    assert y.dtype == torch.float16
    torch.testing.assert_close(y.float(), x.half().float() @ dequantize(p).T, rtol=2e-3, atol=2e-3)


def test_state_dict_holds_exactly_the_packed_tensors():
    layer, _ = _random_layer()
    assert set(layer.state_dict()) == {"codes", "col_idx", "row_ptr", "scales", "zeros", "bias"}
    empty = GQSLinear(64, 24, layer.nnz, 16, 4, bias=True, dtype=torch.float32)
    empty.load_state_dict(layer.state_dict())
    x = torch.randn(2, 64)
    assert torch.equal(empty(x), layer(x))


def test_dtype_casts_move_but_never_cast_the_packed_scales():
    """``model.to(torch.bfloat16)`` must not round the format's float16 scales (the bias follows)."""
    from gqsa.layer import GQSLinear
    layer = GQSLinear(32, 8, 4, bias=True)
    layer.scales.copy_(torch.tensor([1.0009765625, 0.3, 2.5, 7.1], dtype=torch.float16))
    before = layer.scales.clone()
    for cast in (lambda m: m.to(torch.bfloat16), lambda m: m.float(), lambda m: m.half()):
        cast(layer)
        assert layer.scales.dtype == torch.float16 and torch.equal(layer.scales, before)
    assert layer.to(torch.bfloat16).bias.dtype == torch.bfloat16
    assert layer.to("meta").scales.device.type == "meta"


def test_prepare_kernels_builds_every_layer_plan_and_no_plan_warns():
    import pytest

    import gqsa
    from gqsa.kernels import ops
    model = torch.nn.Sequential(_random_layer()[0], torch.nn.ReLU(), _random_layer(n=64, seed=1)[0])
    assert all(m.kernel_plan() is None for m in model if isinstance(m, GQSLinear))
    assert gqsa.prepare_kernels(model) == 2
    assert all(m.kernel_plan() is not None for m in model if isinstance(m, GQSLinear))
    layer, p = _random_layer(bias=False)
    x = torch.randn(4, layer.in_features)
    with pytest.warns(RuntimeWarning, match="prepare_kernels"):
        y = ops.run(x, p, None, None, "rows")  # what a CUDA call without a plan takes for M > 2
    torch.testing.assert_close(y, x @ dequantize(p, torch.float32).T)
