"""Sparsity allocation (OWL-style, same size as uniform) and data-driven protection."""

import dataclasses

import pytest
import torch
from tiny_models import tiny_model

from gqsa.allocation import allocate, measure_ratios, outlier_ratio
from gqsa.compression import compress
from gqsa.config import GQSAConfig
from gqsa.format import keep_mask
from gqsa.layer import GQSLinear
from gqsa.size import model_stats
from gqsa.solver.hessian import HessianAccumulator
from gqsa.solver.saliency import protected_groups
from gqsa.solver.solve import solve_layer


def _calib(n=4, length=32, seed=0):
    return torch.randint(0, 250, (n, length), generator=torch.Generator().manual_seed(seed))


def test_outlier_ratio_counts_weights_above_m_times_the_mean():
    w = torch.ones(4, 8)
    w[0, 0] = 100.0  # one outlier of 32 weights
    assert outlier_ratio(w, torch.ones(8)) == pytest.approx(1 / 32)
    sq = torch.ones(8)
    sq[3] = 1e4  # channel 3's ||x|| = 100: its 4 weights become outliers too
    assert outlier_ratio(w, sq) == pytest.approx(5 / 32)


def _ratios(values, rows=64, cols=256):
    return {f"model.layers.{i}.mlp.x": (r, rows, cols, i) for i, r in enumerate(values)}


@pytest.mark.parametrize("allocation", ["owl", "owl-linear"])
def test_allocation_keeps_the_uniform_size_and_gives_outliers_density(allocation):
    ratios = _ratios([0.001, 0.01, 0.02, 0.05, 0.002, 0.03])
    cfg = GQSAConfig(sparsity=0.5, allocation=allocation, allocation_strength=0.1)
    sp = allocate(ratios, cfg)
    order = sorted(sp, key=lambda n: ratios[n][0])
    assert [sp[n] for n in order] == sorted(sp.values(), reverse=True)  # more outliers, less sparse
    assert max(sp.values()) - min(sp.values()) == pytest.approx(0.2, abs=2 / 16)
    kept = sum(64 * round((1 - s) * 16) for s in sp.values())
    assert kept == 6 * 64 * 8  # exactly the uniform count of kept groups
    assert all(float(s * 16).is_integer() for s in sp.values())


def test_allocation_matches_an_uneven_budget_to_one_row_step():
    ratios = {"a": (0.01, 96, 576, 0), "b": (0.05, 576, 1536, 0), "c": (0.0, 1536, 576, 1), "d": (0.2, 64, 576, 1)}
    cfg = GQSAConfig(sparsity=0.37, allocation="owl-linear", allocation_strength=0.2)
    sp = allocate(ratios, cfg)
    groups = {n: r[2] // 16 for n, r in ratios.items()}
    kept = sum(r[1] * round((1 - sp[n]) * groups[n]) for n, r in ratios.items())
    uniform = sum(r[1] * (groups[n] - round(0.37 * groups[n])) for n, r in ratios.items())
    assert abs(kept - uniform) < min(r[1] for r in ratios.values())


def test_owl_allocation_on_a_model_is_stored_and_keeps_bits():
    calib = _calib()
    uniform, owl = tiny_model("llama", hidden=128, layers=3), tiny_model("llama", hidden=128, layers=3)
    compress(uniform, GQSAConfig(sparsity=0.5), calib, progress=False)
    cfg = GQSAConfig(sparsity=0.5, allocation="owl-linear", allocation_strength=0.15)
    compress(owl, cfg, calib, progress=False)
    stored = owl.config.quantization_config["layer_sparsity"]
    assert len(stored) == 21 and len(set(stored.values())) > 1
    for name, s in stored.items():
        layer = owl.get_submodule(name)
        assert isinstance(layer, GQSLinear)
        assert layer.packed().sparsity == pytest.approx(s)
    bu, bo = model_stats(uniform)["bits_per_weight"], model_stats(owl)["bits_per_weight"]
    assert abs(bu - bo) < 0.01


def test_measure_ratios_leaves_the_model_unchanged():
    model = tiny_model("qwen2")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ratios = measure_ratios(model, GQSAConfig(), _calib(), torch.device("cpu"), progress=False)
    assert len(ratios) == 14 and all(0 <= r[0] <= 1 for r in ratios.values())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_protected_groups_are_the_massive_channels():
    sq = torch.ones(64)
    sq[37] = 1e6  # RMS 1000x the median
    g = protected_groups(sq, 1, 50.0, 16)
    assert g.tolist() == [False, False, True, False]
    assert not protected_groups(sq, 1, 2000.0, 16).any()


@pytest.mark.parametrize("mask", ["static", "adaptive"])
def test_protection_keeps_the_massive_channel_group_in_every_row(mask):
    torch.manual_seed(0)
    x = torch.randn(512, 128)
    x[:, 70] *= 300.0  # a massive activation channel
    acc = HessianAccumulator(128)
    acc.add_batch(x)
    w = torch.randn(32, 128)
    w[:, 64:80] *= 1e-4  # tiny weights: without protection their group is pruned in most rows
    cfg = GQSAConfig(sparsity=0.5, mask=mask)
    off = solve_layer(w, acc, cfg)
    on = solve_layer(w, acc, dataclasses.replace(cfg, protect_ratio=50.0))
    assert on.protected == 1 and off.protected == 0
    assert bool(on.keep[:, 4].all()) and not bool(off.keep[:, 4].all())
    assert on.keep.sum() == off.keep.sum()  # inside the same per-row budget


def test_protected_groups_are_recorded_in_the_layer_stats():
    model = tiny_model("llama")
    report = compress(model, GQSAConfig(protect_ratio=1.5), _calib(), progress=False)
    layers = [rec for b in report.blocks for rec in b["layers"]]
    assert any(rec.get("protected_groups", 0) > 0 for rec in layers)
    for name, m in model.named_modules():
        if isinstance(m, GQSLinear):
            assert keep_mask(m.packed()).shape[0] == m.out_features


def test_config_rejects_bad_allocation_settings():
    with pytest.raises(ValueError, match="allocation must be one of"):
        GQSAConfig(allocation="random")
    with pytest.raises(ValueError, match="sparsity_ramp"):
        GQSAConfig(allocation="owl", sparsity_ramp=0.2)
    with pytest.raises(ValueError, match="protect_ratio"):
        GQSAConfig(protect_ratio=0.5)
    cfg = GQSAConfig(layer_sparsity={"model.layers.0.mlp.up_proj": 0.25})
    assert GQSAConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.for_layer("model.layers.0.mlp.up_proj").sparsity == 0.25
    assert cfg.for_layer("model.layers.1.mlp.up_proj").sparsity == 0.5


def _stored_bits(ratios, sp, cfg, biased=()):
    """Bits per weight of format v3 for the kept counts ``sp`` gives (as gqsa.size counts them)."""
    g, b = cfg.group_size, cfg.bits
    total = weights = 0
    for n, (_, rows, cols, _) in ratios.items():
        groups = cols // g
        nnz = rows * round((1 - sp[n]) * groups)
        total += nnz * g * b + 8 * -(-rows * groups // 8) + 8 * rows + 32 + nnz * 8 + 8 * b * -(-nnz // 8)
        total += 16 * rows * (n in biased)
        weights += rows * cols
    return total / weights


# SmolLM2-135M's seven linears of one block (GQA: k/v have 192 outputs), 30 blocks
_SMOL = {f"model.layers.{i}.{n}": (0.01 * ((i * 7 + j) % 5), rows, cols, i) for i in range(30)
         for j, (n, rows, cols) in enumerate([("q", 576, 576), ("k", 192, 576), ("v", 192, 576), ("o", 576, 576),
                                              ("gate", 1536, 576), ("up", 1536, 576), ("down", 576, 1536)])}


@pytest.mark.parametrize("allocation", ["uniform", "owl", "owl-linear"])
@pytest.mark.parametrize("bits, g, budget", [(2, 32, 2.28), (3, 32, 3.16), (4, 16, 2.45), (3, 64, 3.0)])
def test_a_bits_budget_is_hit_within_0_01(allocation, bits, g, budget):
    cfg = GQSAConfig(bits=bits, group_size=g, allocation=allocation, bits_per_weight=budget)
    sp = allocate(_SMOL, cfg, frozenset({"model.layers.0.q"}))
    assert abs(_stored_bits(_SMOL, sp, cfg, {"model.layers.0.q"}) - budget) < 0.01
    assert all(float(s * (_SMOL[n][2] // g)).is_integer() for n, s in sp.items())
    if allocation == "uniform":  # equal densities but for the single groups that hit the total
        assert max(sp.values()) - min(sp.values()) <= 1.5 / (576 // g)


def test_a_budget_outside_the_format_is_a_clear_error():
    with pytest.raises(ValueError, match="outside what W2 G32 can store"):
        allocate(_SMOL, GQSAConfig(bits=2, group_size=32, allocation="uniform", bits_per_weight=2.6), frozenset())
    with pytest.raises(ValueError, match="sparsity_ramp"):
        GQSAConfig(bits_per_weight=2.5, sparsity_ramp=0.2, allocation="uniform")


@pytest.mark.parametrize("allocation, balance", [("uniform", "row"), ("owl", "row"), ("owl", "layer")])
def test_compress_to_a_bits_budget(allocation, balance):
    model = tiny_model("qwen2", hidden=512, layers=2)  # q/k/v carry a bias, counted in the size
    cfg = GQSAConfig(bits=2, group_size=32, allocation=allocation, bits_per_weight=2.25, balance=balance)
    compress(model, cfg, _calib(), progress=False)
    assert abs(model_stats(model)["bits_per_weight"] - 2.25) < 0.01
    saved = model.config.quantization_config
    assert saved["bits_per_weight"] == 2.25 and 0 < saved["sparsity"] < 1 and len(saved["layer_sparsity"]) == 14


def test_layer_balance_counts_whole_groups_of_a_linear():
    """balance="layer": a linear's kept count is any whole number of its groups (not a multiple of its rows)."""
    cfg = GQSAConfig(bits=3, group_size=64, allocation="owl", bits_per_weight=3.16, balance="layer")
    sp = allocate(_SMOL, cfg, frozenset())
    total = {n: r[1] * (r[2] // 64) for n, r in _SMOL.items()}
    assert all(abs(s * total[n] - round(s * total[n])) < 1e-6 for n, s in sp.items())
    assert any(not float(s * (_SMOL[n][2] // 64)).is_integer() for n, s in sp.items())  # finer than a row step
    kept = sum(total[n] - round(s * total[n]) for n, s in sp.items())
    weights = sum(r[1] * r[2] for r in _SMOL.values())
    fixed = sum(r[1] * r[2] / 64 + 8 * r[1] + 32 for r in _SMOL.values())
    assert abs((kept * (64 * 3 + 11) + fixed) / weights - 3.16) < 1e-3
