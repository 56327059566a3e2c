"""Bad or damaged input caught at the door: each case gives a clear error naming the problem, a
non-zero exit, no traceback, and writes nothing. docs/errors.md lists every case and its message."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from gqsa.app.cli import main


@pytest.fixture
def packed(model_dir, tmp_path):
    path, text = model_dir
    out = tmp_path / "packed"
    assert main(["compress", str(path), str(out), "--calib", str(text), "--nsamples", "2", "--seqlen", "32",
                 "--device", "cpu"]) == 0
    return out, text


def _fails(capsys, argv, *needles):
    """Run the CLI; it must exit non-zero with every needle in its error and no traceback."""
    with pytest.raises(SystemExit) if argv[0] == "__argparse__" else _no_raise():
        rc = main(argv[1:] if argv[0] == "__argparse__" else argv)
        assert rc not in (0, None), rc
    err = capsys.readouterr().err
    for needle in needles:
        assert needle in err, err
    assert "Traceback" not in err
    return err


class _no_raise:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("flag, value, needle", [
    ("--group-size", "0", "group_size must be one of"), ("--bits", "0", "bits must be one of"),
    ("--sparsity", "1.5", "sparsity must be in")])
def test_explicit_bad_settings_are_validated_never_replaced(model_dir, tmp_path, capsys, flag, value, needle):
    path, text = model_dir
    _fails(capsys, ["compress", str(path), str(tmp_path / "o"), "--calib", str(text), flag, value], needle)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv", [["compress", "M", "O", "--batch-size", "0"], ["compress", "M", "O", "--nsamples", "0"],
                                  ["eval", "M", "--max-windows", "0"], ["generate", "M", "--prompt", "x",
                                                                         "--max-new-tokens", "0"]])
def test_zero_counts_are_usage_errors(capsys, argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and "must be an integer >= 1" in capsys.readouterr().err


def _layer_file(out):
    (f,) = sorted(out.glob("*.safetensors"))
    return f


def _sibling(k, name):
    return k.replace(".mask", "." + name)


@pytest.mark.parametrize("edit, needle", [
    (lambda s, k: s[k].__setitem__(0, s[k][0] ^ 1), "the mask marks"),  # one group more or less
    (lambda s, k: s[k].__setitem__(-1, 255), "past the layer"),  # bits beyond the last group
    (lambda s, k: s[_sibling(k, "layer_scale")].__setitem__(0, float("nan")), "layer scale factor"),
    (lambda s, k: s.__setitem__(_sibling(k, "scale_codes"), s[_sibling(k, "scale_codes")].float()),
     "expected torch.uint8")])
def test_damaged_packed_tensors_are_refused_at_load(packed, capsys, edit, needle):
    out, text = packed
    f = _layer_file(out)
    state = load_file(f)
    key = next(k for k in state if k.endswith("q_proj.mask"))
    edit(state, key)
    save_file(state, f, metadata={"format": "pt"})
    for argv in (["info", str(out), "--no-verify"], ["generate", str(out), "--prompt", "a", "--no-verify",
                                                       "--device", "cpu"]):
        _fails(capsys, argv, "q_proj", needle)


def test_wrong_kept_group_count_in_config_names_the_layer(packed, capsys):
    out, _ = packed
    cfg = json.loads((out / "config.json").read_text())
    name = next(iter(cfg["quantization_config"]["layers"]))
    cfg["quantization_config"]["layers"][name]["nnz"] += 1
    (out / "config.json").write_text(json.dumps(cfg))
    _fails(capsys, ["info", str(out)], name, "kept groups")


def test_changed_bytes_fail_the_checksum(packed, capsys):
    out, text = packed
    f = _layer_file(out)
    data = bytearray(f.read_bytes())
    data[-4096:] = os.urandom(4096)
    f.write_bytes(bytes(data))
    for argv in (["info", str(out)], ["eval", str(out), "--ppl", str(text), "--seqlen", "32", "--device", "cpu"],
                 ["generate", str(out), "--prompt", "a", "--device", "cpu"]):
        _fails(capsys, argv, f.name, "sha256")


def test_truncated_file_is_named(packed, capsys):
    out, _ = packed
    f = _layer_file(out)
    f.write_bytes(f.read_bytes()[:100])
    _fails(capsys, ["info", str(out), "--no-verify"], f.name, "truncated")


def test_nan_perplexity_is_an_error(model_dir, capsys):
    path, text = model_dir
    state = load_file(path / "model.safetensors")
    key = next(k for k in state if k.endswith("mlp.down_proj.weight"))
    state[key][:] = float("nan")
    save_file(state, path / "model.safetensors", metadata={"format": "pt"})
    _fails(capsys, ["eval", str(path), "--ppl", str(text), "--seqlen", "32", "--max-windows", "2", "--device", "cpu"],
           "no perplexity")


def test_folder_without_its_quantization_config_is_refused(packed, capsys):
    out, _ = packed
    cfg = json.loads((out / "config.json").read_text())
    del cfg["quantization_config"]
    (out / "config.json").write_text(json.dumps(cfg))
    _fails(capsys, ["generate", str(out), "--prompt", "a", "--device", "cpu"], "does not fill the model",
           "quantization_config")


def test_pickled_weights_are_refused(model_dir, tmp_path, capsys):
    path, text = model_dir
    torch.save(load_file(path / "model.safetensors"), path / "pytorch_model.bin")
    (path / "model.safetensors").unlink()
    for argv in (["eval", str(path), "--ppl", str(text), "--device", "cpu"],
                 ["compress", str(path), str(tmp_path / "o"), "--calib", str(text), "--device", "cpu"]):
        _fails(capsys, argv, "pytorch_model.bin", "safetensors only")
    assert not (tmp_path / "o").exists()


def test_compressed_folder_with_only_pickles_is_refused(packed, capsys):
    out, _ = packed
    f = _layer_file(out)
    torch.save(load_file(f), out / "pytorch_model.bin")
    f.unlink()
    _fails(capsys, ["info", str(out)], "safetensors only")


def test_compressing_a_compressed_folder_is_refused(packed, tmp_path, capsys):
    out, text = packed
    _fails(capsys, ["compress", str(out), str(tmp_path / "again"), "--calib", str(text), "--bits", "3"],
           "already gqsa-compressed")
    assert not (tmp_path / "again").exists()


@pytest.mark.parametrize("command", ["compress", "eval", "generate"])
def test_missing_model_folder_is_named(tmp_path, capsys, command):
    missing = str(tmp_path / "nope")
    argv = {"compress": ["compress", missing, str(tmp_path / "o")], "eval": ["eval", missing],
            "generate": ["generate", missing, "--prompt", "a"]}[command]
    _fails(capsys, argv, "does not exist", missing)


def test_empty_prompt_bad_device_and_unmatched_skip(model_dir, tmp_path, capsys):
    path, text = model_dir
    _fails(capsys, ["generate", str(path), "--prompt", "", "--device", "cpu"], "--prompt is empty")
    _fails(capsys, ["generate", str(path), "--prompt", "a", "--device", "gpu"], "unknown device 'gpu'")
    if not torch.cuda.is_available():
        _fails(capsys, ["generate", str(path), "--prompt", "a", "--device", "cuda"], "CUDA is not available")
    _fails(capsys, ["compress", str(path), str(tmp_path / "o"), "--calib", str(text), "--nsamples", "2",
                    "--seqlen", "16", "--device", "cpu", "--skip", "lm_head", "nosuchmodule"], "nosuchmodule",
           "match no module")
    assert not (tmp_path / "o").exists()


def test_ctrl_c_keeps_finished_blocks_and_says_how_to_resume(model_dir, tmp_path, capsys, monkeypatch):
    path, text = model_dir
    import gqsa.pipeline as pipeline
    real, calls = pipeline._compress_next, []

    def interrupt_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "_compress_next", interrupt_second)
    out = tmp_path / "o"
    argv = ["compress", str(path), str(out), "--calib", str(text), "--nsamples", "2", "--seqlen", "16", "--device", "cpu"]
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "1 finished blocks are kept" in err and "--resume" in err and "Traceback" not in err
    assert not out.exists()
    monkeypatch.setattr(pipeline, "_compress_next", real)
    assert main(argv + ["--resume"]) == 0
    assert "resuming from" in capsys.readouterr().err and out.exists()
