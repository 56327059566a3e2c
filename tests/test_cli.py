"""The gqsa command end to end on a tiny model folder (no network)."""

import json

import pytest
import torch

from gqsa.app.cli import main


def test_compress_with_both_stages_then_info_eval_generate(model_dir, tmp_path, capsys):
    path, text = model_dir
    out = tmp_path / "out"
    torch.set_num_threads(1)
    rc = main(["compress", str(path), str(out), "--calib", str(text), "--nsamples", "4", "--seqlen", "32",
               "--bqpo-epochs", "1", "--bqpo-lr", "1e-3", "--e2e-epochs", "1", "--e2e-data", str(text),
               "--e2e-nsamples", "4", "--e2e-seqlen", "32", "--e2e-batch-size", "2", "--e2e-grad-accum", "1",
               "--device", "cpu"])
    assert rc == 0
    log = json.loads((out / "gqsa_log.json").read_text())
    assert set(log["stages"]) == {"allocation", "oneshot", "bqpo", "e2e_oqp"}  # OWL allocation is the default
    assert not (tmp_path / "out.checkpoint").exists(), "checkpoints are removed after a successful save"
    assert (out / "tokenizer.json").exists()
    assert main(["info", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "bits_per_weight" in shown and "bqpo" in shown and "'format_version': 3" in shown
    assert any(line.split() == ["format_version", "3"] for line in shown.splitlines())
    assert "layers, " in shown and "model.layers.0.mlp" not in shown  # the per-layer table only with --layers
    results = tmp_path / "ppl.json"
    assert main(["eval", str(out), "--ppl", str(text), "--seqlen", "32", "--max-windows", "3",
                 "--json", str(results), "--device", "cpu"]) == 0
    ppl = json.loads(results.read_text())["ppl_windows"][str(text)]
    assert ppl["windows"] == 3 and ppl["ppl"] > 1
    assert main(["generate", str(out), "--prompt", "word1 and", "--max-new-tokens", "3", "--device", "cpu"]) == 0


def test_existing_output_is_a_clear_error(model_dir, tmp_path, capsys):
    path, text = model_dir
    (tmp_path / "out").mkdir()
    assert main(["compress", str(path), str(tmp_path / "out"), "--calib", str(text)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_bad_settings_are_clear_errors(model_dir, tmp_path, capsys):
    path, text = model_dir
    assert main(["compress", str(path), str(tmp_path / "o"), "--bits", "5", "--calib", str(text)]) == 2
    assert "bits must be one of" in capsys.readouterr().err
    assert main(["compress", str(path), str(tmp_path / "o"), "--sparsity-ramp", "1.2", "--calib", str(text)]) == 2
    assert "sparsity_ramp must be in" in capsys.readouterr().err
    assert main(["compress", str(path), str(tmp_path / "o"), "--scale-format", "log8", "--calib", str(text)]) == 2
    assert "--scale-format is a baseline setting" in capsys.readouterr().err
    assert main(["compress", str(path), str(tmp_path / "o"), "--method", "gptq", "--act-order", "off",
                 "--scale-format", "log8", "--calib", str(text)]) == 2
    assert "needs grids fixed before the sweep" in capsys.readouterr().err


def test_sparsity_ramp_is_saved_and_shapes_the_blocks(model_dir, tmp_path):
    path, text = model_dir
    out = tmp_path / "ramp"
    assert main(["compress", str(path), str(out), "--calib", str(text), "--nsamples", "2", "--seqlen", "16",
                 "--sparsity-ramp", "0.4", "--device", "cpu"]) == 0
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert config["sparsity_ramp"] == 0.4
    layers = json.loads((out / "gqsa_log.json").read_text())["layers"]
    first, last = layers[0], layers[-1]
    assert ".0." in first["name"] and ".0." not in last["name"]
    assert first["sparsity"] < 0.5 < last["sparsity"]


def test_bits_budget_is_saved_and_sets_the_sparsity(model_dir, tmp_path, capsys):
    path, text = model_dir
    out = tmp_path / "budget"
    assert main(["compress", str(path), str(out), "--calib", str(text), "--nsamples", "2", "--seqlen", "16",
                 "--bits-per-weight", "3.6", "--allocation", "uniform", "--device", "cpu"]) == 0
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert config["bits_per_weight"] == 3.6 and 0 < config["sparsity"] < 0.5 and config["layer_sparsity"]
    assert main(["compress", str(path), str(tmp_path / "o"), "--bits-per-weight", "3", "--sparsity", "0.3",
                 "--calib", str(text)]) == 2
    assert "not both" in capsys.readouterr().err


def test_baseline_method_saves_a_dense_folder_that_loads(model_dir, tmp_path):
    path, text = model_dir
    out = tmp_path / "sgpt"
    assert main(["compress", str(path), str(out), "--method", "sparsegpt", "--pattern", "2:4", "--bits", "4",
                 "--calib", str(text), "--nsamples", "4", "--seqlen", "32", "--device", "cpu"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert "gqsa_baseline" in cfg and "quantization_config" not in cfg
    assert json.loads((out / "gqsa_log.json").read_text())["method"] == "sparsegpt"
    from transformers import AutoModelForCausalLM
    w = AutoModelForCausalLM.from_pretrained(out).model.layers[0].mlp.up_proj.weight
    assert ((w.reshape(-1, 4) != 0).sum(1) <= 2).all(), "2:4 pattern lost on save/load"


@pytest.mark.parametrize("flags, order, clip", [([], "static", True), (["--act-order", "group"], "group", True),
                                                (["--act-order", "off", "--no-clip-search"], "off", False)])
def test_gptq_act_order_reaches_the_saved_settings(model_dir, tmp_path, flags, order, clip):
    path, text = model_dir
    out = tmp_path / "gptq"
    assert main(["compress", str(path), str(out), "--method", "gptq", "--bits", "3", "--group-size", "32",
                 "--calib", str(text), "--nsamples", "2", "--seqlen", "16", "--device", "cpu", *flags]) == 0
    settings = json.loads((out / "gqsa_log.json").read_text())["settings"]
    assert settings["act_order"] == order and settings["clip_search"] is clip


def test_eval_multiple_choice_file_and_report(model_dir, tmp_path, capsys):
    path, _ = model_dir
    tasks = tmp_path / "mc.jsonl"
    tasks.write_text("\n".join(json.dumps({"context": f"Question {i}?", "choices": [" yes", " no"], "gold": i % 2})
                               for i in range(4)))
    results = tmp_path / "r.json"
    assert main(["eval", str(path), "--ppl", "--tasks", str(tasks), "--json", str(results), "--device", "cpu"]) == 0
    r = json.loads(results.read_text())["accuracy"][str(tasks)]
    assert r["n"] == 4 and 0 <= r["acc"] <= 1
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"schema": "gqsa-run/1", "run": "x", "label": "X", "method": "gqsa",
                                              "settings": {}, "bits_per_weight": 3.3, "ppl": {"boolq": 20.0},
                                              "accuracy": {}}))
    assert main(["report", str(run), "--out", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "report.md").exists()


def test_report_reads_what_compress_and_eval_write(model_dir, tmp_path):
    """One run-log schema: `gqsa report` takes the folder `gqsa compress` made and the file `gqsa eval --json`
    wrote, for a compressed and a dense model alike."""
    path, text = model_dir
    out = tmp_path / "out"
    assert main(["compress", str(path), str(out), "--calib", str(text), "--nsamples", "2", "--seqlen", "16",
                 "--device", "cpu"]) == 0
    logs = []
    for name, folder in (("dense", path), ("packed", out)):
        logs.append(tmp_path / f"{name}.json")
        assert main(["eval", str(folder), "--ppl", str(text), "--seqlen", "32", "--max-windows", "2",
                     "--json", str(logs[-1]), "--device", "cpu"]) == 0
    packed = json.loads(logs[1].read_text())
    assert packed["method"] == "gqsa" and 2 < packed["bits_per_weight"] < 3 and packed["ppl"][str(text)] > 1
    assert json.loads(logs[0].read_text())["bits_per_weight"] == 16.0
    assert main(["report", str(out), *map(str, logs), "--out", str(tmp_path / "rep")]) == 0
    table = (tmp_path / "rep" / "report.md").read_text()
    assert "dense" in table and "packed" in table and "out" in table


def test_info_and_logs_count_a_skipped_mlp_in_the_all_linears_figure(model_dir, tmp_path):
    """The issue's case: a block's MLP kept dense is left out of bits_per_weight, but not out of
    bits_per_weight_all_linears (16 bits each) nor the whole-model bytes."""
    from gqsa.app.jobs import folder_info
    path, text = model_dir
    common = ["--calib", str(text), "--nsamples", "2", "--seqlen", "16", "--device", "cpu"]
    full, skip = tmp_path / "full", tmp_path / "skip"
    assert main(["compress", str(path), str(full), *common]) == 0
    assert main(["compress", str(path), str(skip), *common, "--skip", "lm_head", "layers.1.mlp.gate_proj",
                 "layers.1.mlp.up_proj", "layers.1.mlp.down_proj"]) == 0
    a, b = folder_info(full), folder_info(skip)
    assert a["skipped_layers"] == 0 and b["skipped_layers"] == 3
    assert a["bits_per_weight_all_linears"] == pytest.approx(a["bits_per_weight"], abs=1e-3)
    assert b["bits_per_weight_all_linears"] > b["bits_per_weight"] + 1
    assert b["model_bytes"] > a["model_bytes"]
    log = json.loads((skip / "gqsa_log.json").read_text())
    assert log["bits_per_weight_all_linears"] == pytest.approx(b["bits_per_weight_all_linears"], abs=1e-3)
    assert log["model_bytes"] == pytest.approx(b["model_bytes"], abs=1)


def test_info_reads_a_baseline_folder(model_dir, tmp_path):
    from gqsa.app.jobs import folder_info
    path, text = model_dir
    out = tmp_path / "gptq"
    assert main(["compress", str(path), str(out), "--method", "gptq", "--bits", "3", "--group-size", "32",
                 "--calib", str(text), "--nsamples", "2", "--seqlen", "16", "--device", "cpu"]) == 0
    info = folder_info(out)
    log = json.loads((out / "gqsa_log.json").read_text())
    assert info["config"]["method"] == "gptq" and info["skipped_layers"] == 0
    assert info["bits_per_weight"] == pytest.approx(3 + 19 / 32, abs=1e-3) == pytest.approx(log["bits_per_weight"])


@pytest.mark.parametrize("stream", [True, False])
def test_allocation_and_protection_from_the_cli(model_dir, tmp_path, stream):
    """--allocation and --protect-ratio reach the solver, streamed or not; the per-layer sparsities are
    stored in the folder and the size stays that of the uniform run."""
    path, text = model_dir
    common = ["--calib", str(text), "--nsamples", "4", "--seqlen", "32", "--device", "cpu"] + ([] if stream else
                                                                                                 ["--no-stream"])
    assert main(["compress", str(path), str(tmp_path / "u"), *common]) == 0
    assert main(["compress", str(path), str(tmp_path / "o"), *common, "--allocation", "owl-linear",
                 "--allocation-strength", "0.2", "--protect-ratio", "1.5"]) == 0
    qc = json.loads((tmp_path / "o" / "config.json").read_text())["quantization_config"]
    assert qc["allocation"] == "owl-linear" and qc["protect_ratio"] == 1.5
    assert len(qc["layer_sparsity"]) == 14 and len(set(qc["layer_sparsity"].values())) > 1
    logs = [json.loads((tmp_path / n / "gqsa_log.json").read_text()) for n in ("u", "o")]
    assert abs(logs[0]["bits_per_weight"] - logs[1]["bits_per_weight"]) < 0.01
    assert any(rec.get("protected_groups") for rec in logs[1]["layers"])


def test_gqsa_act_order_from_the_cli(model_dir, tmp_path, capsys):
    path, text = model_dir
    common = ["--calib", str(text), "--nsamples", "4", "--seqlen", "32", "--device", "cpu"]
    assert main(["compress", str(path), str(tmp_path / "a"), *common, "--act-order", "static"]) == 0
    qc = json.loads((tmp_path / "a" / "config.json").read_text())["quantization_config"]
    assert qc["act_order"] is True and qc["act_order_grids"] == "compensated"
    assert main(["compress", str(path), str(tmp_path / "c"), *common, "--act-order-grids", "original"]) == 0
    qc = json.loads((tmp_path / "c" / "config.json").read_text())["quantization_config"]
    assert qc["act_order"] is True and qc["act_order_grids"] == "original"
    assert main(["compress", str(path), str(tmp_path / "b"), *common, "--act-order", "group"]) == 2
    assert "static or off" in capsys.readouterr().err
