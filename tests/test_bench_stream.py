"""The streamed-compression benchmark at a tiny shape on the CPU: it runs, writes its JSON, and
extrapolates with the cost model; the synthetic checkpoint is deterministic and LLaMA-named."""

import json

import torch

from gqsa.bench import stream
from gqsa.bench.synth_checkpoint import LLAMA2_70B, TINY, SynthLlamaSource, llama_config


def test_synthetic_checkpoint_has_llama_70b_names_and_shapes_and_is_seeded():
    src = SynthLlamaSource(LLAMA2_70B)  # names and shapes only: nothing is generated here
    keys = set(src.keys())
    assert len(keys) == 3 + 9 * 80 and "model.layers.79.mlp.down_proj.weight" in keys
    assert src.nbytes("model.layers.0.") == 2 * (2 * 8192 * 8192 + 2 * 1024 * 8192 + 3 * 8192 * 28672 + 2 * 8192)
    tiny = SynthLlamaSource(TINY, seed=3)
    a = tiny.get("model.layers.1.self_attn.k_proj.weight")
    assert a.shape == (32, 64) and a.dtype == torch.float16
    assert torch.equal(a, SynthLlamaSource(TINY, seed=3).get("model.layers.1.self_attn.k_proj.weight"))
    assert not torch.equal(a, SynthLlamaSource(TINY, seed=4).get("model.layers.1.self_attn.k_proj.weight"))
    assert llama_config(LLAMA2_70B, blocks=2).num_hidden_layers == 2


def test_tiny_run_writes_json_with_times_memory_and_extrapolations(tmp_path):
    result = stream.main(["--shape", "tiny", "--blocks", "2", "--nsamples", "2", "--seqlen", "16",
                          "--device", "cpu", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "stream.json").read_text())
    assert saved["measured"]["blocks"] == 2 and len(saved["measured"]["per_block"]) == 2
    assert all(b["oneshot_seconds"] > 0 and b["packed_bytes"] > 0 for b in saved["measured"]["per_block"])
    assert saved["measured"]["peak_rss_bytes"] > 0 and saved["measured"]["materialised_blocks_peak"] == 1
    e70 = saved["extrapolated"]["llama2-70b"]
    assert e70["blocks"] == 80 and e70["cost_ratio"] > 1000 and e70["oneshot_hours"] > 0
    assert 20 < e70["packed_model_gib"] < 30  # W4 S50 G16 of 68.5 B weights: about 3.25 bits per weight
    assert not (tmp_path / "stream_work").exists()
    assert result["targets"]["peak_gpu_gib"] == 60.0
