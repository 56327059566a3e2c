import pytest
import torch
from tiny_models import FAMILIES, calib_ids, tiny_model
from torch import nn

from gqsa.compression import compress
from gqsa.config import GQSAConfig
from gqsa.layer import GQSLinear
from gqsa.models import find_blocks, find_linears


@pytest.mark.parametrize("family", FAMILIES)
def test_every_block_linear_is_compressed_with_exact_sparsity(family):
    model = tiny_model(family)
    cfg = GQSAConfig(sparsity=0.5, bits=4, group_size=16, allocation="uniform")  # every layer at S
    report = compress(model, cfg, calib_ids(), progress=False)
    _, blocks = find_blocks(model)
    for block in blocks:
        assert not find_linears(block), "a block linear was left dense"
    gqs = [m for m in model.modules() if isinstance(m, GQSLinear)]
    assert len(gqs) == len(report.layers) > 0
    for m in gqs:
        counts = (m.row_ptr[1:] - m.row_ptr[:-1])
        assert (counts == m.in_features // 16 // 2).all()
        assert int(m.codes.max()) <= 255 and m.zeros.max() <= 15
    assert isinstance(model.get_output_embeddings(), nn.Linear), "lm_head must stay dense"


def test_sparsity_ramp_gives_each_block_its_sparsity():
    model = tiny_model("llama")
    cfg = GQSAConfig(sparsity=0.5, sparsity_ramp=0.5, allocation="uniform")
    compress(model, cfg, calib_ids(), progress=False)
    _, blocks = find_blocks(model)
    assert len(blocks) >= 2
    kept = []
    for i, block in enumerate(blocks):
        for m in (m for m in block.modules() if isinstance(m, GQSLinear)):
            ng = m.in_features // 16
            want = ng - round(cfg.block_sparsity(i, len(blocks)) * ng)
            assert ((m.row_ptr[1:] - m.row_ptr[:-1]) == want).all(), f"block {i}"
            kept.append(m.nnz / (m.out_features * ng))
    assert kept[0] > 0.5 > kept[-1]


def test_layer_balance_keeps_exact_layer_sparsity_with_uneven_rows():
    model = tiny_model("llama")
    compress(model, GQSAConfig(sparsity=0.5, balance="layer", mask="static", allocation="uniform"), calib_ids(), progress=False)
    uneven = 0
    for m in model.modules():
        if isinstance(m, GQSLinear):
            total = m.out_features * m.in_features // 16
            assert m.nnz == total - round(0.5 * total)
            counts = m.row_ptr[1:] - m.row_ptr[:-1]
            uneven += int(counts.max() != counts.min())
    assert uneven > 0


def test_compressed_model_stays_close_to_the_dense_one_at_mild_settings():
    model = tiny_model("llama")
    ids = calib_ids(4, 32, seed=7)
    with torch.no_grad():
        ref = model(ids).logits
    compress(model, GQSAConfig(sparsity=0.0, bits=8), calib_ids(), progress=False)
    with torch.no_grad():
        out = model(ids).logits
    assert (out - ref).norm() / ref.norm() < 0.02


def test_unsupported_architecture_says_what_it_found():
    class Conv(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv1d(4, 4, 3))

    with pytest.raises(ValueError, match="Conv1d"):
        find_blocks(Conv())


def test_group_size_that_does_not_divide_names_the_layer():
    model = tiny_model("llama", hidden=48)
    with pytest.raises(ValueError, match=r"model\.layers\.0\.self_attn\.q_proj"):
        compress(model, GQSAConfig(group_size=32), calib_ids(), progress=False)


def test_block_kwargs_fit_any_batch():
    """Kwargs captured from a batch of 4 serve a tail batch of 2 (run_block) and a micro-batch of 3."""
    from gqsa.pipeline import fit_batch, run_block

    class MaskedBlock(torch.nn.Module):
        def forward(self, x, attention_mask=None, position_embeddings=None, use_cache=True):
            assert attention_mask.shape[0] in (1, x.shape[0]) and position_embeddings[0].shape[0] in (1, x.shape[0])
            return (x + attention_mask + position_embeddings[0],)

    kw = {"attention_mask": torch.zeros(4, 5, 1), "position_embeddings": (torch.ones(4, 5, 1), torch.ones(1, 5, 1)),
          "use_cache": False}
    out = run_block(MaskedBlock(), torch.zeros(6, 5, 1), kw, batch_size=4)
    assert out.shape == (6, 5, 1) and torch.equal(out, torch.ones(6, 5, 1))
    fitted = fit_batch(kw, 3)
    assert fitted["attention_mask"].shape[0] == 1 and fitted["position_embeddings"][1].shape[0] == 1
    assert fit_batch(kw, 4)["attention_mask"] is kw["attention_mask"] and fitted["use_cache"] is False


def test_linears_reading_one_input_share_one_exact_hessian():
    """q/k/v (and gate/up) read the same tensor: one accumulator, equal to accumulating alone."""
    from tiny_models import tiny_model

    from gqsa.models import find_blocks, find_linears
    from gqsa.pipeline import _accumulate_hessians, capture_block_inputs
    from gqsa.solver.hessian import HessianAccumulator

    model = tiny_model("llama")
    calib = torch.randint(0, 250, (6, 16), generator=torch.Generator().manual_seed(0))
    _, blocks = find_blocks(model)
    with torch.no_grad():
        hidden, kwargs = capture_block_inputs(model, blocks[0], calib, torch.device("cpu"), 4)
        linears = find_linears(blocks[0])
        accs, _ = _accumulate_hessians(blocks[0], linears, hidden, kwargs, 4)
        alone = HessianAccumulator(linears["self_attn.k_proj"].in_features)
        h = linears["self_attn.k_proj"].register_forward_hook(lambda _m, inp, _o: alone.add_batch(inp[0]))
        blocks[0](hidden[:4], **kwargs)
        blocks[0](hidden[4:], **{k: v for k, v in kwargs.items()})
        h.remove()
    assert accs["self_attn.q_proj"] is accs["self_attn.k_proj"] is accs["self_attn.v_proj"]
    assert accs["mlp.gate_proj"] is accs["mlp.up_proj"]
    assert len({id(a) for a in accs.values()}) == 4
    assert accs["self_attn.k_proj"].n == alone.n == 6 * 16
    assert torch.equal(accs["self_attn.k_proj"].H, alone.H)
