"""The lm-eval adapter against direct computations on a tiny random LLaMA (byte tokenizer).

Most tests run the request logic (``HarnessModel``) and the registration against a minimal
fake of lm-eval's API; the last ones use the real lm-eval when it is installed.
"""

from __future__ import annotations

import sys
import types
from types import SimpleNamespace

import pytest
import torch

from gqsa.eval.lm_eval_adapter import HarnessModel, register


def req(*args):
    """A stand-in for lm-eval's ``Instance``: only ``.args`` is read."""
    return SimpleNamespace(args=args)


def direct_ll(model, tok, context: str, continuation: str) -> float:
    """log p(continuation | context) from one forward pass over the concatenated bytes."""
    ctx = tok(context, add_special_tokens=False).input_ids
    cont = tok(continuation, add_special_tokens=False).input_ids
    logits = model(torch.tensor([ctx + cont])).logits[0].float()
    logp = torch.log_softmax(logits, -1)
    return sum(logp[len(ctx) - 1 + j, t].item() for j, t in enumerate(cont))


def test_loglikelihood_matches_direct_computation(tiny_llama, tiny_tokenizer):
    pairs = [("Question: why?\nAnswer:", " because"), ("ab", "c"), ("The cat sat on the", " mat, then left.")]
    lm = HarnessModel(tiny_llama, tiny_tokenizer, batch_size=2)
    got = lm.loglikelihood([req(c, x) for c, x in pairs])
    for (c, x), (ll, _) in zip(pairs, got):
        assert ll == pytest.approx(direct_ll(tiny_llama, tiny_tokenizer, c, x), abs=1e-4)
    # batching with right padding changes nothing
    one = HarnessModel(tiny_llama, tiny_tokenizer, batch_size=1).loglikelihood([req(c, x) for c, x in pairs])
    assert [ll for ll, _ in one] == pytest.approx([ll for ll, _ in got], abs=1e-5)


def test_is_greedy_true_exactly_for_the_argmax_continuation(tiny_llama, tiny_tokenizer):
    context = "Say Z:"
    ids = torch.tensor([tiny_tokenizer(context, add_special_tokens=False).input_ids])
    top = int(tiny_llama(ids).logits[0, -1].argmax())
    z = tiny_tokenizer("Z", add_special_tokens=False).input_ids[0]
    with torch.no_grad():  # make "Z" the greedy next token: twice the logit of the current top one
        tiny_llama.lm_head.weight[z] = 2 * tiny_llama.lm_head.weight[top]
    assert tiny_llama(ids).logits[0, -1].argmax() == z
    lm = HarnessModel(tiny_llama, tiny_tokenizer)
    (_, greedy), (_, not_greedy) = lm.loglikelihood([req(context, "Z"), req(context, "Y")])
    assert greedy and not not_greedy


def reference_rolling(model, tok, text: str, max_len: int) -> float:
    """lm-eval's get_rolling_token_windows(context_len=1) + make_disjoint_window, scored directly."""
    tokens = tok(text, add_special_tokens=False).input_ids
    prefix = tok.bos_token_id
    first = min(max_len, len(tokens))
    windows = [([prefix] + tokens[:first - 1], tokens[:first])]
    predicted = first
    while predicted < len(tokens):
        n = min(len(tokens) - predicted, max_len)
        end = predicted + n
        windows.append((tokens[end - max_len - 1:end - 1], tokens[end - n:end]))
        predicted += n
    total = 0.0
    for ctx, cont in windows:
        ctx = ctx[:len(ctx) - (len(cont) - 1)]  # make_disjoint_window
        ids = (ctx + cont)[:-1]
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0, -len(cont):].float(), -1)
        total += logp.gather(-1, torch.tensor(cont)[:, None]).sum().item()
    return total


@pytest.mark.parametrize("max_length", [8, 13, 256])
def test_loglikelihood_rolling_matches_lm_eval_windows(tiny_llama, tiny_tokenizer, max_length):
    text = "A rolling window predicts every token exactly once."
    lm = HarnessModel(tiny_llama, tiny_tokenizer, max_length=max_length)
    (got,) = lm.loglikelihood_rolling([req(text)])
    assert got == pytest.approx(reference_rolling(tiny_llama, tiny_tokenizer, text, max_length), abs=1e-4)
    if max_length == 256:  # one window: the whole text after BOS
        assert got == pytest.approx(direct_ll(tiny_llama, tiny_tokenizer, tiny_tokenizer.bos_token, text), abs=1e-4)


def test_generate_until_is_greedy_and_cut_at_the_stop_string(tiny_llama, tiny_tokenizer):
    lm = HarnessModel(tiny_llama, tiny_tokenizer)
    context = "Once upon"
    full = lm.generate_until([req(context, {"until": [], "max_gen_toks": 12})])[0]
    ids = tiny_tokenizer(context, add_special_tokens=False).input_ids
    for _ in range(12):  # manual argmax loop
        ids.append(int(tiny_llama(torch.tensor([ids])).logits[0, -1].argmax()))
    assert full == tiny_tokenizer.decode(ids[-12:], skip_special_tokens=True)
    stop = full[3:5]
    cut = lm.generate_until([req(context, {"until": [stop], "max_gen_toks": 12})])[0]
    assert cut == full[:full.index(stop)]
    with pytest.raises(ValueError, match="greedily"):
        lm.generate_until([req(context, {"do_sample": True})])


@pytest.fixture
def fake_lm_eval(monkeypatch):
    """Just the lm-eval API the adapter touches: LM, register_model, model_registry."""
    import abc

    class LM(abc.ABC):
        def __init__(self):
            self._rank, self._world_size, self._device = 0, 1, None

        @abc.abstractmethod
        def loglikelihood(self, requests): ...

        @abc.abstractmethod
        def loglikelihood_rolling(self, requests): ...

        @abc.abstractmethod
        def generate_until(self, requests): ...

    registry: dict[str, type] = {"hf": object}

    class Registry(dict):
        def get(self, name):
            return self[name]

    model_registry = Registry(registry)

    def register_model(*names):
        def decorate(cls):
            assert issubclass(cls, LM)
            for n in names:
                model_registry[n] = cls
            return cls
        return decorate

    mods = {"lm_eval": types.ModuleType("lm_eval"), "lm_eval.models": types.ModuleType("lm_eval.models"),
            "lm_eval.api": types.ModuleType("lm_eval.api"), "lm_eval.api.model": types.ModuleType("lm_eval.api.model"),
            "lm_eval.api.registry": types.ModuleType("lm_eval.api.registry")}
    mods["lm_eval.api.model"].LM = LM
    mods["lm_eval.api.registry"].register_model = register_model
    mods["lm_eval.api.registry"].model_registry = model_registry
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)
    return SimpleNamespace(LM=LM, registry=model_registry)


def test_register_with_a_fake_lm_eval(fake_lm_eval, tiny_llama, tiny_tokenizer):
    cls = register()
    assert fake_lm_eval.registry["gqsa"] is cls and "hf" in fake_lm_eval.registry
    assert register() is cls  # idempotent
    lm = cls(tiny_llama, tiny_tokenizer)
    assert isinstance(lm, fake_lm_eval.LM) and lm._rank == 0
    (ll, _), = lm.loglikelihood([req("abc", "def")])
    assert ll == pytest.approx(direct_ll(tiny_llama, tiny_tokenizer, "abc", "def"), abs=1e-4)


def test_real_lm_eval_loads_dense_and_gqsa_folders(tmp_path, tiny_llama, tiny_tokenizer):
    pytest.importorskip("lm_eval.api.registry")
    from lm_eval.api.instance import Instance
    from lm_eval.api.registry import get_model, model_registry

    import gqsa
    from gqsa.config import GQSAConfig

    register()
    cls = get_model("gqsa")
    assert "hf" in model_registry  # lm-eval's own models stay reachable
    dense = tmp_path / "dense"
    tiny_llama.save_pretrained(dense)
    tiny_tokenizer.save_pretrained(dense)
    calib = torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(0))
    gqsa.compress(tiny_llama, GQSAConfig(group_size=16, sparsity=0.5, bits=4), calib, progress=False)
    packed = gqsa.save_compressed(tiny_llama, tmp_path / "packed", source=dense)
    requests = [Instance("loglikelihood", {}, ("Question: 2+2?\nAnswer:", " 4"), 0)]
    for folder, model in ((dense, None), (packed, tiny_llama)):
        lm = cls.create_from_arg_string(f"pretrained={folder},dtype=float32", {"batch_size": 1, "device": "cpu"})
        assert isinstance(lm.model.model.layers[0].mlp.up_proj, gqsa.GQSLinear) == (model is not None)
        (ll, _), = lm.loglikelihood(requests)
        ref = model or lm.model
        assert ll == pytest.approx(direct_ll(ref, tiny_tokenizer, *requests[0].args), abs=1e-4)


def test_generate_stops_decoding_at_the_stop_string(tiny_llama, tiny_tokenizer, monkeypatch):
    """``until`` ends decoding early (not only the returned text): fewer than max_gen_toks steps run."""
    lm = HarnessModel(tiny_llama, tiny_tokenizer)
    full = lm.generate_until([req("Once upon", {"until": [], "max_gen_toks": 12})])[0]
    new_tokens, generate = [], tiny_llama.generate

    def spy(inputs, **kw):
        out = generate(inputs, **kw)
        new_tokens.append(out.shape[1] - inputs.shape[1])
        return out
    monkeypatch.setattr(tiny_llama, "generate", spy)
    cut = lm.generate_until([req("Once upon", {"until": [full[3:5]], "max_gen_toks": 12})])[0]
    assert cut == full[:full.index(full[3:5])] and new_tokens[0] < 12


def test_loglikelihood_respects_max_length(tiny_llama, tiny_tokenizer):
    """The adapter's max_length left-truncates loglikelihood inputs too (lm-eval's rule: the
    model sees at most max_length tokens, the last max_length + 1 of context + continuation)."""
    context, cont = "Once upon a time there was a cat that sat on a mat", "s"
    ctx = tiny_tokenizer(context, add_special_tokens=False).input_ids
    ids_cont = tiny_tokenizer(cont, add_special_tokens=False).input_ids
    full = (ctx + ids_cont)[-(8 + 1):]
    assert len(ctx) + len(ids_cont) > 9  # the case truncates
    logp = torch.log_softmax(tiny_llama(torch.tensor([full[:-1]])).logits[0].float(), -1)
    want = sum(logp[len(full) - 1 - len(ids_cont) + j, t].item() for j, t in enumerate(ids_cont))
    got = HarnessModel(tiny_llama, tiny_tokenizer, max_length=8).loglikelihood([req(context, cont)])[0][0]
    assert got == pytest.approx(want, abs=1e-4)
