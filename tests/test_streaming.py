"""Streamed compression (gqsa.compress_streamed): from a sharded safetensors folder it gives the
same saved tensors as loading the model and gqsa.compress (one-shot, and with BQPO); a run
interrupted at a block and resumed gives the same result; at most one block is materialised
at a time; the source must fill the model; where the hidden states go."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_models import calib_ids, tiny_model

import gqsa
from gqsa import streaming
from gqsa.config import BQPOConfig, GQSAConfig
from gqsa.hf import CHECKSUMS, read_safetensors, weight_files
from gqsa.loading import load_model

ONESHOT = GQSAConfig(group_size=16, sparsity=0.5, bits=4)
WITH_BQPO = GQSAConfig(group_size=16, sparsity=0.5, bits=4, bqpo=BQPOConfig(epochs=1, batch_size=2, lr_weight=1e-3))
CALIB = calib_ids(4, 32)


def _sharded(tmp_path, family="llama", layers=3):
    folder = tmp_path / f"{family}-src"
    tiny_model(family, layers=layers).save_pretrained(folder, max_shard_size="100KB")
    assert len(weight_files(folder)) > layers  # really sharded: blocks span several files
    return folder


def _in_memory(folder, config, out):
    model = load_model(str(folder), torch.device("cpu"), torch.float32)
    gqsa.compress(model, config, CALIB, progress=False)
    return gqsa.save_compressed(model, out, source=folder)


def _streamed(folder, config, out, checkpoint, **kw):
    model, report = gqsa.compress_streamed(folder, config, CALIB, checkpoint=checkpoint, progress=False, **kw)
    gqsa.save_compressed(model, out, source=folder)
    return report


def _assert_same_folder(a, b):
    sa, sb = read_safetensors(weight_files(a)), read_safetensors(weight_files(b))
    assert sa.keys() == sb.keys() and any(k.endswith(".codes") for k in sa)
    different = [k for k in sa if sa[k].dtype != sb[k].dtype or not torch.equal(sa[k], sb[k])]
    assert not different, f"tensors differ: {different[:5]}"
    qa, qb = (json.loads((f / "config.json").read_text())["quantization_config"] for f in (a, b))
    assert qa == qb
    assert (a / CHECKSUMS).exists() and (b / CHECKSUMS).exists()


@pytest.mark.parametrize("family", ["llama", "opt"])  # opt: a tied head, absent from the files
def test_streamed_one_shot_is_bit_identical_to_in_memory(tmp_path, family):
    folder = _sharded(tmp_path, family)
    ref = _in_memory(folder, ONESHOT, tmp_path / "mem")
    report = _streamed(folder, ONESHOT, tmp_path / "stream", tmp_path / "ckpt")
    _assert_same_folder(ref, tmp_path / "stream")
    assert len(report.blocks) == 3
    gqsa.load(tmp_path / "stream")  # checksums, packed tensors and completeness verified


def test_streamed_bqpo_is_bit_identical_and_resumes_after_a_crash(tmp_path, monkeypatch):
    folder = _sharded(tmp_path)
    ref = _in_memory(folder, WITH_BQPO, tmp_path / "mem")
    read = streaming.SafetensorsSource.get

    reads = []

    def crash_at_block_2(self, name):  # the second read: the first is the allocation's pass over the blocks
        if name.startswith("model.layers.2."):
            reads.append(name)
            if reads.count(name) == 2:
                raise KeyboardInterrupt("simulated interruption while reading block 2")
        return read(self, name)

    monkeypatch.setattr(streaming.SafetensorsSource, "get", crash_at_block_2)
    with pytest.raises(KeyboardInterrupt):
        gqsa.compress_streamed(folder, WITH_BQPO, CALIB, checkpoint=tmp_path / "ckpt", progress=False)
    monkeypatch.setattr(streaming.SafetensorsSource, "get", read)
    with pytest.raises(FileExistsError, match="resume"):
        gqsa.compress_streamed(folder, WITH_BQPO, CALIB, checkpoint=tmp_path / "ckpt", progress=False)
    report = _streamed(folder, WITH_BQPO, tmp_path / "stream", tmp_path / "ckpt", resume=True)
    assert [b.get("restored", False) for b in report.blocks] == [True, True, False]
    assert report.stages["bqpo"]["blocks"] == 3
    _assert_same_folder(ref, tmp_path / "stream")


def test_at_most_one_block_is_materialised_at_a_time(tmp_path, monkeypatch):
    folder = _sharded(tmp_path, layers=4)
    seen = []
    load = streaming.StreamedBlocks.load

    def watched_load(self, i, block, device):
        out = load(self, i, block, device)
        real = [j for j, b in enumerate(self.blocks) if any(not p.is_meta for p in b.parameters())]
        seen.append(real)
        return out

    monkeypatch.setattr(streaming.StreamedBlocks, "load", watched_load)
    model, report = gqsa.compress_streamed(folder, ONESHOT, CALIB, checkpoint=tmp_path / "ckpt", progress=False)
    assert seen == [[0], [1], [2], [3]] * 2  # the allocation's pass over the blocks, then the compression
    assert report.stages["oneshot"]["materialised_blocks_peak"] == 1
    assert not any(p.is_meta for p in model.parameters())  # assembled: every block filled from the checkpoint


class DictSource:
    def __init__(self, tensors):
        self.tensors = tensors

    def keys(self):
        return self.tensors.keys()

    def get(self, name):
        return self.tensors[name]


def test_a_source_that_does_not_fill_the_model_is_refused(tmp_path):
    model = tiny_model("llama")
    tensors = dict(model.state_dict())
    del tensors["model.layers.1.mlp.up_proj.weight"]
    tensors["model.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"missing \['model.layers.1.mlp.up_proj.weight'\].*unexpected "
                                         r"\['model.extra.weight'\]"):
        gqsa.compress_streamed(DictSource(tensors), ONESHOT, CALIB, model_config=model.config,
                               checkpoint=tmp_path / "ckpt", progress=False)
    with pytest.raises(ValueError, match="needs model_config"):
        gqsa.compress_streamed(DictSource(tensors), ONESHOT, CALIB, checkpoint=tmp_path / "ckpt")


def test_hidden_states_go_where_they_fit(monkeypatch, capsys):
    shape, gib = (128, 2048, 8192), 1 << 30  # 4 GiB per copy in float16
    assert streaming.place_hidden(shape, torch.float16, torch.device("cpu"), 3, 0) == (torch.device("cpu"), False)
    assert "CPU memory" in capsys.readouterr().err
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (80 * gib, 141 * gib))
    assert streaming.place_hidden(shape, torch.float16, cuda, 4, 20 * gib) == (cuda, False)
    assert "cuda:0 (80.0 GiB free)" in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (30 * gib, 141 * gib))
    assert streaming.place_hidden(shape, torch.float16, cuda, 4, 20 * gib) == (torch.device("cpu"), True)
    assert "pinned CPU memory" in capsys.readouterr().err


def test_streamed_e2e_oqp_runs_on_the_assembled_model_as_in_memory(tmp_path):
    from gqsa.config import E2EConfig
    config = GQSAConfig(group_size=16, sparsity=0.5, bits=4, e2e=E2EConfig(epochs=1, lr=1e-3, batch_size=2,
                                                                          grad_accum=1))
    folder = _sharded(tmp_path, layers=2)
    ref = _in_memory(folder, config, tmp_path / "mem")
    report = _streamed(folder, config, tmp_path / "stream", tmp_path / "ckpt")
    assert report.stages["e2e_oqp"]["steps"] == 2
    _assert_same_folder(ref, tmp_path / "stream")


def test_compress_folder_streams_by_default_and_equals_no_stream(tmp_path, tiny_tokenizer):
    from gqsa.app.workflow import compress_folder
    folder = _sharded(tmp_path, layers=2)
    tiny_tokenizer.save_pretrained(folder)
    text = tmp_path / "calib.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 40)
    kw = dict(calib=str(text), nsamples=2, seqlen=32, progress=False)
    streamed = compress_folder(str(folder), tmp_path / "stream", ONESHOT, **kw)
    loaded = compress_folder(str(folder), tmp_path / "mem", ONESHOT, stream=False, **kw)
    assert streamed["streamed"] is True and loaded["streamed"] is False
    _assert_same_folder(tmp_path / "mem", tmp_path / "stream")
    assert (tmp_path / "stream" / "tokenizer.json").exists() and not (tmp_path / "stream.checkpoint").exists()
