"""Tensor-parallel loading (gqsa.parallel) on the CPU: gloo processes against one process."""

import socket

import pytest
import torch
import torch.multiprocessing as mp
import tp_worker
from safetensors.torch import load_file
from tiny_models import VOCAB, calib_ids
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

import gqsa
from gqsa import parallel, shard
from gqsa.format import TENSOR_NAMES
from gqsa.layer import GQSLinear

# fp32 on CPU. Column-parallel shards compute the same dot products as the whole layer; a
# row-parallel layer's all-reduce adds P partial sums over K/P columns each instead of one sum
# over K, which reorders float additions: a few ulp (~1e-7 relative) per layer, that can grow a
# little through the blocks. Measured here: max abs difference 1.8e-7 on logits up to 0.54
# (3e-7 of their scale). 1e-5 relative plus 1e-5 absolute (logits near 0 have no useful relative
# error) is ~50x that noise and far below what a wrong shard, a missing all-reduce or a bias
# added P times gives (differences of 1e-2 and more).
RTOL = ATOL = 1e-5


def _tiny(family: str) -> torch.nn.Module:
    """8 heads, 4 KV heads (so 2 and 4 ranks split them), hidden 64, MLP 128, 2 blocks."""
    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=64)
    torch.manual_seed(0)
    if family == "llama":  # biases on o_proj and down_proj: row-parallel biases must be added once
        model = LlamaForCausalLM(LlamaConfig(attention_bias=True, mlp_bias=True, **common))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(**common))  # q/k/v biases (column-parallel)
    with torch.no_grad():  # transformers initializes biases to 0, which would hide a bias added P times
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0, 0.5)
    return model.eval()


# qwen2 leaves k_proj and down_proj dense: dense nn.Linear layers in the plan are split too.
SKIP = {"llama": ("lm_head",), "qwen2": ("lm_head", "k_proj", "down_proj")}


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def saved(request, tmp_path_factory):
    family = request.param
    model = _tiny(family)
    config = gqsa.GQSAConfig(group_size=16, sparsity=0.5, bits=4, balance="layer", skip=SKIP[family])
    gqsa.compress(model, config, calib_ids(), progress=False)
    out = gqsa.save_compressed(model, tmp_path_factory.mktemp(family) / "m")
    ids = calib_ids(2, 16, seed=7)
    with torch.no_grad():
        expected = gqsa.load(out, dtype=torch.float32)(ids).logits
    return out, ids, expected


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("world_size", [2, 4])
def test_tensor_parallel_logits_equal_one_process(saved, world_size, tmp_path):
    path, ids, expected = saved
    # fork: the children inherit the imported torch/transformers/gqsa (spawn re-imports them,
    # ~5 s a process on a 2-core machine); fork is unsafe once CUDA is initialized.
    method = "spawn" if torch.cuda.is_initialized() else "fork"
    mp.start_processes(tp_worker.run, args=(world_size, _free_port(), str(path), ids, str(tmp_path)),
                       nprocs=world_size, start_method=method)
    for rank in range(world_size):
        got = load_file(tmp_path / f"logits{rank}.safetensors")["logits"]
        torch.testing.assert_close(got, expected, rtol=RTOL, atol=ATOL)


def test_rank_loads_exactly_its_shards(saved):
    path, _, _ = saved
    whole = gqsa.load(path, dtype=torch.float32)
    part = parallel.load_shards(path, rank=1, world_size=2, dtype=torch.float32)
    plan = parallel.resolve_plan(whole)
    assert len(plan) == 2 * 7 and plan["model.layers.1.self_attn.o_proj"] == "rowwise"
    for name, style in plan.items():
        full, mine = whole.get_submodule(name), part.get_submodule(name)
        if isinstance(full, GQSLinear):
            split = shard.colwise if style == "colwise" else shard.rowwise
            expected = split(full.packed(), 1, 2)
            for t in TENSOR_NAMES:
                assert torch.equal(getattr(mine, t), getattr(expected, t)), (name, t)
        else:
            w = full.weight.chunk(2, dim=0 if style == "colwise" else 1)[1]
            assert torch.equal(mine.weight, w), name
        if full.bias is not None:  # column-parallel: the rank's slice; row-parallel: rank 0 only
            assert (mine.bias is None) if style == "rowwise" else torch.equal(mine.bias, full.bias.chunk(2)[1])
    assert torch.equal(part.model.embed_tokens.weight, whole.model.embed_tokens.weight)


@pytest.mark.parametrize("world_size, constraint", [(3, "num_attention_heads of the model \\(8\\)"),
                                                    (8, "num_key_value_heads of the model \\(4\\)")])
def test_bad_world_size_names_the_constraint(saved, world_size, constraint):
    path, _, _ = saved
    with pytest.raises(ValueError, match=f"{constraint} is not divisible by the world size {world_size}"):
        parallel.load_shards(path, rank=0, world_size=world_size)


def test_layer_that_does_not_split_is_named(saved):
    path, _, _ = saved
    model = gqsa.load(path, dtype=torch.float32)
    model.config.num_key_value_heads = 8  # let the head checks pass: the layer check is under test
    plan = parallel.resolve_plan(model)
    # o_proj: in_features 64 / group_size 16 = 4 column groups per row, which 8 ranks cannot split
    with pytest.raises(ValueError, match=r"column groups per row of 'model.layers.0.self_attn.o_proj'"
                                         r".*\(4\) is not divisible by the world size 8"):
        parallel.check_world_size(model, plan, 8)


def test_load_tp_needs_a_process_group(saved):
    with pytest.raises(ValueError, match="init_distributed"):
        parallel.load_tp(saved[0])


def test_shards_are_checked_like_a_whole_load(saved, tmp_path):
    """load_shards verifies the sha256 record and validates each shard, as gqsa.load does."""
    import shutil
    path, _, _ = saved
    copy = tmp_path / "m"
    shutil.copytree(path, copy)
    (f,) = sorted(copy.glob("*.safetensors"))
    data = bytearray(f.read_bytes())
    data[-64:] = bytes(64)
    f.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        parallel.load_shards(copy, rank=0, world_size=2, dtype=torch.float32)
