"""The run plans of scripts/sweep.py build valid configs (a typo there would only show on the GPU)."""

import importlib.util
from pathlib import Path

import pytest

from gqsa.baselines.method import make_config

_spec = importlib.util.spec_from_file_location("sweep", Path(__file__).parents[1] / "scripts" / "sweep.py")
sweep = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sweep)


@pytest.mark.parametrize("run", sweep.RUNS + sweep.GPU_PLAN, ids=lambda r: r[0])
def test_every_planned_run_has_a_valid_config(run):
    name, _label, method, kw = run
    assert kw.get("calib_seed", 0) in (0, 1, 2)  # the sweep's own key: the calibration seed
    if method != "fp16":
        make_config(method, **{k: v for k, v in kw.items() if k != "calib_seed"})


def test_gpu_preset_and_plan_names():
    args = sweep.parse_args(["--gpu"])
    assert (args.device, args.nsamples, args.calib_seqlen, args.windows) == ("cuda", 128, 2048, 32)
    assert str(args.out) == "docs/results/gpu"
    names = [r[0] for r in sweep.GPU_PLAN]
    assert len(names) == len(set(names)) and names[0] == "fp16"


def test_runs_logged_in_format_v2_move_to_v3_accounting_once(tmp_path, monkeypatch):
    """gqsa runs and log8 baselines lose 8 bits a row and gain 32 a layer; fp16-scale baselines and
    runs already in v3 keep their bits; a second pass changes nothing."""
    import json
    rows, layers, weights = 155_520, 210, 106_168_320  # SmolLM2-135M's block linears
    monkeypatch.setattr(sweep, "_block_linear_counts", lambda: (rows, layers, weights))
    logs = {"gqsa-old": {"method": "gqsa", "bits_per_weight": 2.4609375},
            "log8-old": {"method": "gptq", "settings": {"scale_format": "log8"}, "bits_per_weight": 3.1165},
            "fp16-scales": {"method": "gptq", "settings": {"scale_format": "fp16"}, "bits_per_weight": 3.1608},
            "gqsa-v3": {"method": "gqsa", "bits_per_weight": 2.4493, "format_version": 3}}
    for name, log in logs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "run.json").write_text(json.dumps(log))
    assert sweep.upgrade_accounting(tmp_path) == 2
    got = {n: json.loads((tmp_path / n / "run.json").read_text()) for n in logs}
    delta = (8 * rows - 32 * layers) / weights
    assert got["gqsa-old"]["bits_per_weight"] == pytest.approx(2.4609375 - delta)
    assert got["gqsa-old"]["bits_per_weight"] == pytest.approx(2.44928, abs=1e-5)  # 2.4375 + 8 * 5184 / 3538944 + ...
    assert got["gqsa-old"]["bits_per_weight_v2"] == 2.4609375 and got["gqsa-old"]["format_version"] == 3
    assert got["log8-old"]["bits_per_weight"] == pytest.approx(3.1165 - delta)
    assert got["fp16-scales"] == logs["fp16-scales"] and got["gqsa-v3"] == logs["gqsa-v3"]
    assert sweep.upgrade_accounting(tmp_path) == 0


def test_block_linear_counts_of_smollm2s_shape():
    from transformers import LlamaConfig
    c = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3)
    assert sweep._block_linear_counts(c) == (30 * 5184, 210, 30 * 3_538_944)
