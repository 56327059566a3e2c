"""gqsa.compress, the verb: the stages its config names, the same result as wiring them by hand,
the config stored on the model for save_compressed, and the config's JSON round trip."""

import dataclasses

import pytest
import torch
from tiny_models import calib_ids, tiny_model

import gqsa
from gqsa.allocation import with_allocation
from gqsa.config import BQPOConfig, E2EConfig, GQSAConfig
from gqsa.pipeline import run_blocks
from gqsa.train.bqpo import bqpo_hook
from gqsa.train.e2e import train_scales

BQPO = BQPOConfig(epochs=1, lr_weight=1e-3)
E2E = E2EConfig(epochs=1, lr=1e-3, batch_size=2, grad_accum=1)
CONFIG = GQSAConfig(group_size=16, sparsity=0.5, bits=4, bqpo=BQPO, e2e=E2E)


def _packed_state(model):
    return {k: v for k, v in model.state_dict().items() if k.endswith(("codes", "col_idx", "row_ptr", "scales", "zeros"))}


def test_verb_runs_every_stage_and_equals_the_stages_wired_by_hand():
    calib, train = calib_ids(4, 32), calib_ids(4, 32, seed=2)
    verb = tiny_model("llama")
    report = gqsa.compress(verb, CONFIG, calib, train_ids=train, progress=False)
    assert set(report.stages) == {"allocation", "oneshot", "bqpo", "e2e_oqp"}
    assert report.stages["e2e_oqp"]["steps"] == 2 and report.stages["allocation"]["method"] == "owl"
    hand = tiny_model("llama")
    allocated = with_allocation(hand, CONFIG.for_oneshot(), calib, torch.device("cpu"), progress=False)
    assert allocated.layer_sparsity  # the default allocation (OWL) filled in every layer's sparsity
    run_blocks(hand, allocated, calib, progress=False, after_block=bqpo_hook(BQPO, progress=False),
               fp_targets=True)
    train_scales(hand, train, E2E, progress=False)
    a, b = _packed_state(verb), _packed_state(hand)
    assert a.keys() == b.keys() and len(a) > 0
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_saved_folder_records_the_config_and_stages(tmp_path):
    model = tiny_model("llama")
    gqsa.compress(model, CONFIG, calib_ids(4, 32), progress=False)
    out = gqsa.save_compressed(model, tmp_path / "m")
    loaded = gqsa.load(out)
    qc = loaded.config.quantization_config
    saved = GQSAConfig.from_dict(qc)
    assert saved.layer_sparsity and dataclasses.replace(saved, layer_sparsity=None) == CONFIG
    assert set(qc["stages"]) == {"oneshot", "bqpo", "e2e_oqp"}


def test_save_without_compress_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="compress it with gqsa.compress first"):
        gqsa.save_compressed(tiny_model("llama"), tmp_path / "m")


def test_config_json_round_trip_and_bad_stage_config():
    d = CONFIG.to_dict()
    assert d["bqpo"]["epochs"] == 1 and d["e2e"]["lr"] == 1e-3
    assert GQSAConfig.from_dict(d) == CONFIG
    assert GQSAConfig.from_dict(GQSAConfig().to_dict()).bqpo is None
    with pytest.raises(ValueError, match="bqpo must be a BQPOConfig"):
        GQSAConfig(bqpo=3)
    with pytest.raises(ValueError, match="epochs"):
        GQSAConfig.from_dict({**d, "e2e": {"epochs": 0}})
