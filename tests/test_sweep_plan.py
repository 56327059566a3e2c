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
