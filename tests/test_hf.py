import json

import pytest
import torch
from tiny_models import FAMILIES, calib_ids, tiny_model
from transformers import AutoModelForCausalLM

import gqsa
from gqsa import hf
from gqsa.compression import compress
from gqsa.config import GQSAConfig


def _compressed(family, **cfg):
    model = tiny_model(family)
    config = GQSAConfig(**cfg)
    compress(model, config, calib_ids(), progress=False)
    return model, config


@pytest.mark.parametrize("family", FAMILIES)
def test_save_then_load_both_ways_gives_identical_logits(family, tmp_path):
    model, config = _compressed(family, sparsity=0.5, bits=4, balance="layer", mask="static")
    ids = calib_ids(2, 24, seed=5)
    with torch.no_grad():
        expected = model(ids).logits
    out = gqsa.save_compressed(model, tmp_path / "m")
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "gqsa" and qc["format_version"] == 1 and qc["bits"] == 4
    assert list(out.glob("*.safetensors")) and not list(out.glob("*.bin"))
    ours = gqsa.load(out)
    theirs = AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        assert torch.equal(ours(ids).logits, expected)
        assert torch.equal(theirs(ids).logits, expected)


def test_interrupted_save_leaves_nothing_loadable(tmp_path, monkeypatch):
    model, config = _compressed("llama")

    def boom(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(hf, "_copy_tokenizer_files", boom)
    with pytest.raises(KeyboardInterrupt):
        gqsa.save_compressed(model, tmp_path / "m")
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_overwrite(tmp_path):
    model, config = _compressed("llama")
    gqsa.save_compressed(model, tmp_path / "m")
    with pytest.raises(FileExistsError, match="overwrite"):
        gqsa.save_compressed(model, tmp_path / "m")
    gqsa.save_compressed(model, tmp_path / "m", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_unknown_format_version_is_refused(tmp_path):
    model, config = _compressed("llama")
    out = gqsa.save_compressed(model, tmp_path / "m")
    cfg = json.loads((out / "config.json").read_text())
    cfg["quantization_config"]["format_version"] = 99
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="format version 99"):
        gqsa.load(out)


def test_dense_folder_is_not_taken_for_a_gqsa_one(tmp_path):
    tiny_model("llama").save_pretrained(tmp_path / "dense")
    with pytest.raises(ValueError, match="not a gqsa-compressed model"):
        gqsa.load(tmp_path / "dense")
