"""Resumable compression: a run interrupted at block k and resumed equals an uninterrupted
one bit for bit, finished blocks are not redone, a checkpoint of another run is refused,
writes are atomic."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_models import calib_ids, tiny_model

from gqsa.config import BQPOConfig, GQSAConfig
from gqsa.pipeline import run_blocks
from gqsa.train.bqpo import bqpo_hook
from gqsa.train.checkpoint import BlockCheckpoint, atomic_write, run_fingerprint

CONFIG = GQSAConfig(group_size=16, sparsity=0.5, bits=4)
BQPO = BQPOConfig(epochs=1, batch_size=4, lr_weight=1e-3, lr_scale=1e-4, seed=7)


class Interrupt(Exception):
    """A simulated crash inside a block's hook."""


def _run(folder, resume=False, stop_at=None, calls=None, config=CONFIG):
    """Compress a fresh 3-block tiny LLaMA with BQPO and a checkpoint in ``folder``;
    ``stop_at`` raises inside the hook of that block, ``calls`` collects hooked blocks."""
    model = tiny_model("llama", layers=3)
    calib = calib_ids(8, 32)
    bqpo = bqpo_hook(BQPO, progress=False)

    def hook(i, block, inputs, targets, kwargs):
        if calls is not None:
            calls.append(i)
        if i == stop_at:
            raise Interrupt(f"simulated crash in block {i}")
        return bqpo(i, block, inputs, targets, kwargs)

    ckpt = BlockCheckpoint(folder, run_fingerprint(model, config, calib, bqpo=BQPO.to_dict(), fp_targets=True),
                           resume=resume)
    report = run_blocks(model, config, calib, progress=False, after_block=hook, fp_targets=True, checkpoint=ckpt)
    return model, report


def _strip_times(records):
    return json.loads(json.dumps(records, sort_keys=True).replace('"restored": true, ', ""),
                      object_hook=lambda d: {k: v for k, v in d.items() if k != "seconds"})


def test_interrupted_then_resumed_run_equals_uninterrupted(tmp_path):
    # Bitwise: same ops on the same tensors in the same order, and safetensors round-trips exactly.
    full, full_report = _run(tmp_path / "a")
    with pytest.raises(Interrupt):
        _run(tmp_path / "b", stop_at=2)
    assert json.loads((tmp_path / "b" / "progress.json").read_text())["blocks"][-1]["index"] == 1
    calls = []
    resumed, report = _run(tmp_path / "b", resume=True, calls=calls)
    assert calls == [2], "finished blocks must not be compressed again"
    a, b = full.state_dict(), resumed.state_dict()
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    assert [r.get("restored", False) for r in report.blocks] == [True, True, False]
    assert _strip_times(report.blocks) == _strip_times(full_report.blocks)
    assert len(report.layers) == len(full_report.layers) == 3 * 7


def test_resume_of_a_finished_run_redoes_nothing(tmp_path):
    full, _ = _run(tmp_path / "a")
    calls = []
    again, report = _run(tmp_path / "a", resume=True, calls=calls)
    assert calls == [] and all(r["restored"] for r in report.blocks)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in full.state_dict().items())


def test_a_block_file_without_its_progress_entry_is_redone(tmp_path):
    """A crash between writing block 1's tensors and the progress file loses only block 1."""
    with pytest.raises(Interrupt):
        _run(tmp_path / "b", stop_at=1)
    (tmp_path / "b" / "block_0001.safetensors").write_bytes(b"half-written garbage")
    calls = []
    _run(tmp_path / "b", resume=True, calls=calls)
    assert calls == [1, 2]


def test_checkpoint_of_another_run_is_refused(tmp_path):
    with pytest.raises(Interrupt):
        _run(tmp_path / "b", stop_at=1)
    with pytest.raises(ValueError, match="another run.*gqsa"):
        _run(tmp_path / "b", resume=True, config=GQSAConfig(group_size=16, sparsity=0.25, bits=4))
    with pytest.raises(FileExistsError, match="resume"):
        _run(tmp_path / "b", resume=False)


def test_bad_pipeline_options_raise(tmp_path):
    model, calib = tiny_model("llama"), calib_ids(4, 16)
    ckpt = BlockCheckpoint(tmp_path, run_fingerprint(model, CONFIG, calib))
    with pytest.raises(ValueError, match="not both"):
        run_blocks(model, CONFIG, calib, progress=False, start_block=1, checkpoint=ckpt)
    with pytest.raises(ValueError, match="fp_targets"):
        run_blocks(model, CONFIG, calib, progress=False, start_block=1, fp_targets=True)
    with pytest.raises(ValueError, match="out of order"):
        ckpt.save(1, model.model.layers[1], {"index": 1, "layers": []})
    with pytest.raises(TypeError):
        ckpt.save(0, model.model.layers[0], {"index": 0, "bad": object()})
    assert ckpt.finished() == 0 and not ckpt.block_path(0).exists()


def test_atomic_write_leaves_nothing_behind_on_failure(tmp_path):
    target = tmp_path / "x.json"

    def failing(tmp):
        tmp.write_text("partial")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(target, failing)
    assert list(tmp_path.iterdir()) == []
    atomic_write(target, lambda tmp: tmp.write_text("done"))
    assert target.read_text() == "done" and [p.name for p in tmp_path.iterdir()] == ["x.json"]
