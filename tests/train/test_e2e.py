"""E2E-OQP: training steps lower the loss, only the scales change (codes, masks, zeros are
bit-identical), the state dict keeps its names and dtypes, bad options raise."""

from __future__ import annotations

import math

import pytest
import torch
from tiny_models import VOCAB, calib_ids, tiny_model

from gqsa.compression import compress
from gqsa.config import E2EConfig, GQSAConfig
from gqsa.hf import load, save_compressed
from gqsa.layer import GQSLinear, roundtrip_model
from gqsa.train.e2e import make_frozen, make_trainable, mean_loss, train_scales

FROZEN = ("codes", "col_idx", "row_ptr")


def _windows(n: int = 8, length: int = 32) -> torch.Tensor:
    """Learnable text: each window counts up from a random start (mod the vocabulary)."""
    g = torch.Generator().manual_seed(3)
    starts = torch.randint(0, VOCAB, (n, 1), generator=g)
    return (starts + torch.arange(length)) % VOCAB


def _compressed(seed: int = 0):
    model = tiny_model("llama", seed=seed)
    compress(model, GQSAConfig(group_size=16, sparsity=0.5, bits=4), calib_ids(8, 32), progress=False)
    return model


@pytest.mark.parametrize("kwargs, match", [
    ({"epochs": 0}, "epochs"), ({"batch_size": 0}, "batch_size"), ({"grad_accum": 1.5}, "grad_accum"),
    ({"lr": 0}, "lr"), ({"lr": float("inf")}, "lr"), ({"weight_decay": -1}, "weight_decay"),
    ({"warmup_ratio": 1.0}, "warmup_ratio"), ({"max_grad_norm": -0.1}, "max_grad_norm")])
def test_config_rejects_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        E2EConfig(**kwargs)


def test_train_scales_rejects_bad_inputs():
    with pytest.raises(ValueError, match="no GQSLinear"):
        train_scales(tiny_model("llama"), _windows(), progress=False)
    with pytest.raises(ValueError, match="int64"):
        train_scales(_compressed(), _windows().float(), progress=False)


def test_steps_lower_the_loss_and_change_only_the_scales():
    model = _compressed()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    windows = _windows()
    cfg = E2EConfig(epochs=3, lr=1e-3, batch_size=2, grad_accum=2)
    log = train_scales(model, windows, cfg, progress=False)
    assert log["loss_after"] < log["loss_before"] - 0.01, log
    assert log["loss_after"] == pytest.approx(mean_loss(model, windows, 4, torch.device("cpu")), rel=1e-6)
    assert log["steps"] == 3 * 2 and len(log["step_losses"]) == 6
    after = model.state_dict()
    assert list(after) == list(before) or sorted(after) == sorted(before)
    for k, v in before.items():
        assert after[k].dtype == v.dtype and after[k].shape == v.shape, k
        if k.endswith(FROZEN + ("zeros",)) or not k.endswith("scales"):
            assert torch.equal(after[k], v), f"{k} changed"
    assert any(not torch.equal(after[k], v) for k, v in before.items() if k.endswith("scales"))
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert not model.is_gradient_checkpointing and not model.training
    assert all(type(m) is GQSLinear for m in model.modules() if isinstance(m, GQSLinear))


def test_trained_zeros_stay_integer_and_codes_stay_fixed():
    model = _compressed()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_scales(model, _windows(), E2EConfig(epochs=2, lr=1e-3, lr_zero=0.3, batch_size=4, grad_accum=1,
                                               train_zeros=True), progress=False, evaluate=False)
    after = model.state_dict()
    for k in before:
        if k.endswith(FROZEN):
            assert torch.equal(after[k], before[k]), k
        if k.endswith("zeros"):
            assert after[k].dtype == torch.uint8 and int(after[k].max()) <= 15
    assert any(not torch.equal(after[k], before[k]) for k in before if k.endswith("zeros"))


def test_scales_get_gradients_through_the_packed_layers():
    model = _compressed()
    layers = [m for m in model.modules() if isinstance(m, GQSLinear)]
    scales, _ = make_trainable(layers, train_zeros=False)
    batch = _windows(2)
    model(input_ids=batch, labels=batch, use_cache=False).loss.backward()
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in scales)
    make_frozen(layers)
    assert all(m.scales.dtype == torch.float16 and "scales" in dict(m.named_buffers()) for m in layers)


def test_trained_model_saves_and_loads_with_the_same_outputs(tmp_path):
    model = _compressed()
    train_scales(model, _windows(), E2EConfig(epochs=1, lr=1e-3, batch_size=4, grad_accum=1), progress=False,
                 evaluate=False)
    out = save_compressed(model, tmp_path / "m")
    loaded = load(out, dtype=torch.float32)
    roundtrip_model(model)  # the folder holds the trained scales on format v2's grid
    batch = _windows(2)
    with torch.no_grad():
        assert torch.allclose(model(batch).logits, loaded(batch).logits, atol=1e-5)


def test_autocast_is_bfloat16_on_cuda_whatever_the_model_dtype():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    from gqsa.train.e2e import autocast_dtype
    assert autocast_dtype(torch.float16, cuda, True) == torch.bfloat16  # the model is upcast to float32 first
    assert autocast_dtype(torch.bfloat16, cuda, True) == torch.bfloat16
    assert autocast_dtype(torch.float32, cuda, True) == torch.bfloat16
    assert autocast_dtype(torch.float16, cuda, False) is None
    assert autocast_dtype(torch.float16, cpu, True) is None


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_model_trains_under_autocast_with_its_policy(monkeypatch, dtype):
    """The GPU default (an fp16 model under autocast) once crashed in E2E-OQP with "Unexpected floating
    ScalarType in at::autocast::prioritize" (fp16 tensors under bf16 autocast). CPU autocast runs the
    same ops, so the CUDA policy is applied on the CPU here: an fp16 model trains in float32 under bf16
    autocast and comes back in fp16, its dense parts bit for bit."""
    import gqsa.train.e2e as e2e
    real = e2e.autocast_dtype
    monkeypatch.setattr(e2e, "autocast_dtype", lambda md, dev, amp: real(md, torch.device("cuda"), amp))
    model = _compressed().to(dtype)
    dense = {n: p.clone() for n, p in model.named_parameters()}
    log = train_scales(model, _windows(), E2EConfig(epochs=3, lr=1e-3, batch_size=2, grad_accum=2), progress=False)
    assert log["loss_after"] < log["loss_before"] - 0.01, log
    assert all(m.scales.dtype == torch.float16 for m in model.modules() if isinstance(m, GQSLinear))
    assert all(p.dtype == dtype and torch.equal(p, dense[n]) for n, p in model.named_parameters())


def test_a_float16_teacher_runs_outside_the_bfloat16_autocast(monkeypatch):
    """Distillation from an fp16 dense model under the CUDA policy (bf16 autocast) must not mix the
    two half dtypes in one autocast op: the teacher runs in its own dtype."""
    import gqsa.train.e2e as e2e
    real = e2e.autocast_dtype
    monkeypatch.setattr(e2e, "autocast_dtype", lambda md, dev, amp: real(md, torch.device("cuda"), amp))
    model, teacher = _compressed(), tiny_model("llama").half()
    cfg = E2EConfig(epochs=1, lr=1e-3, batch_size=2, grad_accum=1, distill=0.5)
    log = train_scales(model, _windows(), cfg, progress=False, evaluate=False, teacher=teacher)
    assert log["steps"] > 0 and all(math.isfinite(x) for x in log["step_losses"]), log


def test_distillation_brings_the_student_closer_to_the_teacher():
    """distill=1: the loss is the KL to the dense model's token distribution; training lowers it."""
    from gqsa.train.e2e import distill_loss
    teacher = tiny_model("llama")
    model = _compressed()
    windows = _windows()
    with torch.no_grad():
        before = float(distill_loss(model(windows).logits, teacher(windows).logits, 1.0))
    cfg = E2EConfig(epochs=3, lr=1e-3, batch_size=2, grad_accum=2, distill=1.0)
    train_scales(model, windows, cfg, progress=False, evaluate=False, teacher=teacher)
    with torch.no_grad():
        after = float(distill_loss(model(windows).logits, teacher(windows).logits, 1.0))
    assert after < before - 1e-3, (before, after)
    with pytest.raises(ValueError, match="needs the dense model as teacher"):
        train_scales(model, windows, cfg, progress=False)


def test_distill_loss_is_zero_for_equal_logits_and_positive_otherwise():
    from gqsa.train.e2e import distill_loss
    x = torch.randn(2, 5, 11)
    assert float(distill_loss(x, x, 2.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(distill_loss(x, x.flip(-1), 2.0)) > 0


def test_the_verb_keeps_the_dense_model_as_teacher():
    import gqsa
    model = tiny_model("llama")
    e2e = E2EConfig(epochs=1, lr=1e-3, batch_size=4, grad_accum=1, distill=0.5, temperature=2.0)
    report = gqsa.compress(model, GQSAConfig(e2e=e2e), calib_ids(8, 32), progress=False)
    assert report.stages["e2e_oqp"]["config"]["distill"] == 0.5 and report.stages["e2e_oqp"]["steps"] == 2

