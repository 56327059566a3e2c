import pytest
import torch

from gqsa.baselines import BaselineConfig, gptq_layer, rtn_layer
from gqsa.baselines.gptq import group_index
from gqsa.solver.prune_quant import output_error

from .synthetic import dequantize_result, make_layer


@pytest.mark.parametrize("bits, group_size", [(4, 128), (3, 128), (2, 64)])
@pytest.mark.parametrize("act_order", ["off", "static", "group"])
def test_gptq_beats_rtn_with_margin(layer, bits, group_size, act_order):
    W, acc = layer
    cfg = BaselineConfig("gptq", bits=bits, group_size=group_size, act_order=act_order)
    res = gptq_layer(W, acc, cfg)
    rtn = rtn_layer(W, acc, BaselineConfig("rtn", bits=bits, group_size=group_size))
    assert res.codes.min() >= 0 and res.codes.max() <= 2 ** bits - 1
    torch.testing.assert_close(dequantize_result(res, group_size, group_index(acc.H, cfg)), res.weight)
    assert res.keep.all()
    e_gptq, e_rtn = output_error(W, res.weight, acc.H), output_error(W, rtn.weight, acc.H)
    assert e_gptq < 0.5 * e_rtn, (e_gptq, e_rtn)


def test_short_last_group_and_dead_inputs():
    W, acc = make_layer(n=64, k=192)  # group 128: the last group has 64 columns
    acc.H[:, 5] = 0
    acc.H[5, :] = 0  # input 5 never fired
    res = gptq_layer(W, acc, BaselineConfig("gptq", bits=3, group_size=128))
    assert res.scales.shape == (64, 2)
    assert (res.weight[:, 5] == 0).all()
    torch.testing.assert_close(dequantize_result(res, 128), res.weight)


def test_weight_is_not_modified(layer):
    W, acc = layer
    before = W.clone()
    gptq_layer(W, acc, BaselineConfig("gptq", bits=2, group_size=64))
    assert torch.equal(W, before)


def test_act_order_defaults_and_old_bool_configs():
    assert BaselineConfig("gptq").act_order == "static"
    assert BaselineConfig("sparsegpt", pattern="2:4").act_order == "off"
    assert BaselineConfig("gptq", act_order=True).act_order == "static"
    assert BaselineConfig("gptq", act_order=False).act_order == "off"
    assert BaselineConfig("gptq").clip_search is True and BaselineConfig("rtn").clip_search is False
    with pytest.raises(ValueError, match="act_order must be one of"):
        BaselineConfig("gptq", act_order="desc")


def test_group_act_order_groups_follow_the_hessian_order():
    """With act_order="group" the columns of one group are the G with the largest H_ii, then the
    next G, ...: not contiguous columns; with "static" they are."""
    _, acc = make_layer(n=32, k=256)
    cfg = BaselineConfig("gptq", bits=3, group_size=64, act_order="group")
    g_idx = group_index(acc.H, cfg)
    d = torch.diag(acc.H)
    assert torch.equal(torch.bincount(g_idx), torch.full((4,), 64))
    assert d[g_idx == 0].min() >= d[g_idx == 1].max()
    static = BaselineConfig("gptq", bits=3, group_size=64, act_order="static")
    assert torch.equal(group_index(acc.H, static), torch.arange(256) // 64)


def test_static_act_order_keeps_the_grids_of_the_original_weights():
    """"static": every group's scale/zero are RTN's on the original weights (fixed up front)."""
    W, acc = make_layer(n=32, k=256)
    res = gptq_layer(W, acc, BaselineConfig("gptq", bits=3, group_size=64, act_order="static", clip_search=True))
    rtn = rtn_layer(W, acc, BaselineConfig("rtn", bits=3, group_size=64, clip_search=True))
    torch.testing.assert_close(res.scales, rtn.scales)
    torch.testing.assert_close(res.zeros, rtn.zeros)


def test_clip_search_lowers_the_error_of_the_fixed_grids():
    W, acc = make_layer(n=64, k=256)
    plain = BaselineConfig("gptq", bits=2, group_size=64, act_order="static", clip_search=False)
    clip = BaselineConfig("gptq", bits=2, group_size=64, act_order="static", clip_search=True)
    r_plain, r_clip = gptq_layer(W, acc, plain), gptq_layer(W, acc, clip)
    assert not torch.equal(r_plain.scales, r_clip.scales)
    assert (r_clip.scales <= r_plain.scales + 1e-6).all()  # a clip only shrinks the range


def test_log8_scales_are_what_gqsa_would_store_and_the_sweep_rounds_to_them():
    """scale_format="log8": the fixed grids are gqsa's stored scales (one fp16 factor a row, an
    8-bit log code a group), the codes and weight follow them, and the error stays near fp16's."""
    from gqsa.format_v2 import SPAN_OCTAVES, snap_scales
    W, acc = make_layer(n=64, k=256)
    fp16 = gptq_layer(W, acc, BaselineConfig("gptq", bits=3, group_size=64, act_order="static"))
    log8 = gptq_layer(W, acc, BaselineConfig("gptq", bits=3, group_size=64, act_order="static", scale_format="log8"))
    torch.testing.assert_close(log8.scales, snap_scales(fp16.scales), rtol=0, atol=0)
    assert not torch.equal(log8.scales, fp16.scales)
    rel = (log8.scales / fp16.scales - 1).abs().max()
    assert rel <= 2 ** (SPAN_OCTAVES / 510) - 1 + 1e-6  # half a step of the log grid
    torch.testing.assert_close(dequantize_result(log8, 64), log8.weight)
    e16, e8 = output_error(W, fp16.weight, acc.H), output_error(W, log8.weight, acc.H)
    assert e8 < 1.05 * e16, (e8, e16)


@pytest.mark.parametrize("kw", [dict(method="gptq", act_order="off"), dict(method="gptq", act_order="group"),
                                dict(method="sparsegpt", pattern="2:4")])
def test_log8_scales_need_grids_fixed_up_front(kw):
    with pytest.raises(ValueError, match="log8"):
        BaselineConfig(bits=3, group_size=64, scale_format="log8", **kw)


def test_rtn_log8_rounds_to_the_snapped_grid(layer):
    from gqsa.format_v2 import snap_scales
    W, acc = layer
    plain = rtn_layer(W, acc, BaselineConfig("rtn", bits=4, group_size=128))
    log8 = rtn_layer(W, acc, BaselineConfig("rtn", bits=4, group_size=128, scale_format="log8"))
    torch.testing.assert_close(log8.scales, snap_scales(plain.scales), rtol=0, atol=0)
    torch.testing.assert_close(dequantize_result(log8, 128), log8.weight)
