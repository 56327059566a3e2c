import json

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import FAMILIES, calib_ids, tiny_model
from transformers import AutoModelForCausalLM

import gqsa
from gqsa import hf
from gqsa.compression import compress
from gqsa.config import GQSAConfig
from gqsa.format_v2 import TENSOR_NAMES_V3, decode_rows, from_stored
from gqsa.layer import roundtrip_model


def _compressed(family, **cfg):
    model = tiny_model(family)
    config = GQSAConfig(**cfg)
    compress(model, config, calib_ids(), progress=False)
    return model, config


@pytest.mark.parametrize("family", FAMILIES)
def test_save_then_load_both_ways_gives_identical_logits(family, tmp_path):
    model, config = _compressed(family, sparsity=0.5, bits=4, balance="layer", mask="static")
    ids = calib_ids(2, 24, seed=5)
    out = gqsa.save_compressed(model, tmp_path / "m")
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "gqsa" and qc["format_version"] == 3 and qc["bits"] == 4
    assert list(out.glob("*.safetensors")) and not list(out.glob("*.bin"))
    roundtrip_model(model)  # what the stored format does to the layers: the scales on its grids
    with torch.no_grad():
        expected = model(ids).logits
    ours = gqsa.load(out)
    theirs = AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        assert torch.equal(ours(ids).logits, expected)
        assert torch.equal(theirs(ids).logits, expected)


def test_folder_stores_the_lean_tensors_and_resaves_unchanged(tmp_path):
    model, _ = _compressed("llama")
    out = gqsa.save_compressed(model, tmp_path / "m")
    stored = load_file(next(out.glob("*.safetensors")))
    name = "model.layers.0.mlp.down_proj"
    assert {k.rsplit(".", 1)[1] for k in stored if k.startswith(name + ".")} == set(TENSOR_NAMES_V3)
    assert gqsa.load(out).config.quantization_config["format_version"] == 1  # in memory: version 1 tensors
    again = gqsa.save_compressed(gqsa.load(out), tmp_path / "again")  # a second trip through v3 changes nothing
    theirs = AutoModelForCausalLM.from_pretrained(out)
    theirs.save_pretrained(tmp_path / "theirs")  # transformers' own save: version 3 through the quantizer
    for folder in (again, tmp_path / "theirs"):
        other = load_file(next(folder.glob("*.safetensors")))
        assert all(torch.equal(stored[k], other[k]) for k in stored if k.startswith(name))


def test_version_1_folders_still_load(tmp_path):
    model, _ = _compressed("qwen2")
    ids = calib_ids(2, 24, seed=5)
    with torch.no_grad():
        expected = model(ids).logits
    model.save_pretrained(tmp_path / "v1")  # the model in memory: version-1 tensors, quantization_config says 1
    qc = json.loads((tmp_path / "v1" / "config.json").read_text())["quantization_config"]
    assert qc["format_version"] == 1
    with torch.no_grad():
        assert torch.equal(gqsa.load(tmp_path / "v1", verify=False)(ids).logits, expected)
        assert torch.equal(AutoModelForCausalLM.from_pretrained(tmp_path / "v1")(ids).logits, expected)


def test_version_2_folders_still_load(tmp_path):
    """A folder of format version 2 (an fp16 ``row_scale`` per row instead of ``layer_scale`` and
    ``row_code``) loads both ways, each layer decoded from its own row factors."""
    from safetensors.torch import save_file
    model, _ = _compressed("llama")
    out = gqsa.save_compressed(model, tmp_path / "m")
    (file,) = out.glob("*.safetensors")
    state = load_file(file)
    for key in [k for k in state if k.endswith(".layer_scale")]:
        prefix = key[: -len("layer_scale")]
        f = decode_rows(state.pop(key), state.pop(prefix + "row_code"))
        h = f.to(torch.float16)
        state[prefix + "row_scale"] = torch.where(h.float() < f, torch.nextafter(h, torch.tensor(65504.0).half()), h)
    save_file(state, file, metadata={"format": "pt"})
    cfg = json.loads((out / "config.json").read_text())
    cfg["quantization_config"]["format_version"] = 2
    (out / "config.json").write_text(json.dumps(cfg))
    ours, theirs = gqsa.load(out, verify=False), AutoModelForCausalLM.from_pretrained(out)
    name = "model.layers.1.self_attn.o_proj"
    layer = model.get_submodule(name)
    expect = from_stored({t: state[f"{name}.{t}"] for t in ("codes", "mask", "row_scale", "scale_codes", "zeros")},
                         layer.out_features, layer.in_features, layer.group_size, layer.bits, version=2)
    assert torch.equal(ours.get_submodule(name).scales, expect.scales)
    ids = calib_ids(2, 24, seed=5)
    roundtrip_model(model)  # the version-3 layers the folder was written from
    with torch.no_grad():
        got, v3 = ours(ids).logits, model(ids).logits
        assert torch.equal(got, theirs(ids).logits)
    # the fp16 row factors lie at most 2^-10 above the version-3 ones: scales within 0.1 %
    assert ((got - v3).norm() / v3.norm()).item() <= 5e-3


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
