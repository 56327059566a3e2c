"""The CLI with both stages on the GPU in every dtype (fp16 is the GPU default): each stage must
lower its own loss. Skipped without CUDA; scripts/gpu_all.sh runs it."""

import json

import pytest
import torch
from tiny_models import tiny_model

from gqsa.app.cli import main

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_compress_with_both_stages_lowers_each_loss(tmp_path, tiny_tokenizer, dtype):
    path, text = tmp_path / "tiny", tmp_path / "text.txt"
    tiny_model("llama", hidden=128).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    text.write_text(" ".join(f"word{i % 97} and more text {i}." for i in range(4000)))
    out = tmp_path / "out"
    rc = main(["compress", str(path), str(out), "--calib", str(text), "--nsamples", "16", "--seqlen", "64",
               "--bqpo-epochs", "2", "--bqpo-lr", "1e-4", "--e2e-epochs", "2", "--e2e-data", str(text),
               "--e2e-nsamples", "16", "--e2e-seqlen", "64", "--e2e-batch-size", "4", "--e2e-grad-accum", "1",
               "--e2e-lr", "1e-3", "--device", "cuda", "--dtype", dtype])
    assert rc == 0
    stages = json.loads((out / "gqsa_log.json").read_text())["stages"]
    bqpo, e2e = stages["bqpo"], stages["e2e_oqp"]
    assert bqpo["mse_after"] and all(a < b for a, b in zip(bqpo["mse_after"], bqpo["mse_before"])), bqpo
    assert e2e["loss_after"] < e2e["loss_before"], e2e
