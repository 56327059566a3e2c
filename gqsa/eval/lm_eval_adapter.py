"""lm-evaluation-harness model ``gqsa``: run harness tasks on gqsa folders and dense models.

Usage, where lm-eval (``pip install lm-eval``) and the task data are available::

    python -m gqsa.eval.lm_eval_adapter --model gqsa --model_args pretrained=OUT --tasks piqa,arc_easy

(the stock ``lm_eval`` command does not import gqsa, so it cannot find the model name; this
entry imports it, registers ``gqsa`` with ``lm_eval.api.registry.register_model`` and hands
the arguments to lm-eval's own CLI). From Python::

    from gqsa.eval.lm_eval_adapter import register
    register()
    lm_eval.simple_evaluate(model="gqsa", model_args="pretrained=OUT", tasks=["piqa"])

``pretrained`` is opened by :func:`gqsa.loading.load_model`: with :func:`gqsa.load` when its
``config.json`` holds a gqsa ``quantization_config``, else with
``AutoModelForCausalLM.from_pretrained`` (dense models and the dense folders of the baselines).
Scoring follows lm-eval's ``HFLM``:

- ``loglikelihood``: ``(context, continuation)`` pairs, encoded and scored by
  :func:`gqsa.eval.zeroshot.loglikelihoods` (HFLM's ``_encode_pair``, ``is_greedy``);
- ``loglikelihood_rolling``: the text's tokens after a BOS (else EOS) prefix, in windows of
  ``max_length`` that predict every token exactly once (``get_rolling_token_windows`` with
  ``context_len = 1``);
- ``generate_until``: greedy decoding of up to ``max_gen_toks`` tokens, cut at the first
  ``until`` string; sampling is refused.

The request logic lives in :class:`HarnessModel`, which needs no lm-eval; :func:`register`
builds the ``LM`` subclass only when lm-eval is imported.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from gqsa.eval.zeroshot import loglikelihoods
from gqsa.loading import load_model, load_tokenizer, pick_device, pick_dtype

MODEL_NAME = "gqsa"


class HarnessModel:
    """The three lm-eval request types on a causal LM and its tokenizer.

    Args:
        pretrained: a model folder, hub id or ``smollm2`` (see :mod:`gqsa.loading`), or an
            already built ``nn.Module``.
        tokenizer: tokenizer folder/id (default: ``pretrained``) or a tokenizer object.
        device: ``cpu``, ``cuda``, ``cuda:0``, ... or ``auto``.
        dtype: ``float32``, ``float16``, ``bfloat16`` or ``auto`` (default: float32 on CPU,
            float16 on GPU), the dtype of the dense parts.
        batch_size: requests per forward pass for loglikelihood.
        max_length: context window in tokens (default: the model's ``max_position_embeddings``).
        max_gen_toks: default generation budget of ``generate_until``.
        max_batch_size: accepted because lm-eval's CLI always passes it; unused.
    """

    def __init__(self, pretrained: Any, tokenizer: Any = None, device: str = "cpu", dtype: str | None = None,
                 batch_size: int | str = 1, max_length: int | str | None = None, max_gen_toks: int | str = 256,
                 trust_remote_code: bool | str = False, max_batch_size: Any = None):
        super().__init__()
        trust = str(trust_remote_code).lower() == "true"
        self._device = pick_device(device)
        self.model = (pretrained if isinstance(pretrained, torch.nn.Module)
                      else load_model(str(pretrained), self._device, pick_dtype(dtype or "auto", self._device), trust))
        tok = tokenizer if tokenizer is not None else pretrained
        self.tokenizer = load_tokenizer(str(tok), trust) if isinstance(tok, (str, Path)) else tok
        self.batch_size = int(1 if str(batch_size).startswith("auto") else batch_size)
        self.max_length = int(max_length or getattr(self.model.config, "max_position_embeddings", 2048))
        self.max_gen_toks = int(max_gen_toks)

    @property
    def prefix_token_id(self) -> int:
        """The token that conditions a text's first token: BOS, else EOS (as HFLM)."""
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.tokenizer.eos_token_id

    def loglikelihood(self, requests: list) -> list[tuple[float, bool]]:
        """(summed log-probability, is_greedy) of each request's ``args = (context, continuation)``."""
        pairs = [tuple(r.args) for r in requests]
        out = []
        for i in tqdm(range(0, len(pairs), self.batch_size), desc="loglikelihood", disable=len(pairs) < 16):
            out.extend(loglikelihoods(self.model, self.tokenizer, pairs[i:i + self.batch_size], self._device,
                                       self.max_length))
        return out

    def loglikelihood_rolling(self, requests: list) -> list[float]:
        """Summed log-probability of each request's whole text ``args = (text,)``."""
        return [self.rolling_loglikelihood(r.args[0]) for r in requests]

    def rolling_loglikelihood(self, text: str) -> float:
        """log p(text | prefix token), scored in windows of ``max_length`` tokens."""
        tokens = self.tokenizer(text, add_special_tokens=False).input_ids
        full = [self.prefix_token_id] + tokens
        total, start = 0.0, 0
        while start < len(tokens):  # predict tokens[start:end] = full[start+1:end+1]
            end = min(start + self.max_length, len(tokens))
            inputs = torch.tensor([full[max(0, end - self.max_length):end]], device=self._device)
            with torch.inference_mode():
                logits = self.model(input_ids=inputs).logits[0, -(end - start):].float()
            targets = torch.tensor(full[start + 1:end + 1], device=self._device)
            total += torch.log_softmax(logits, -1).gather(-1, targets[:, None]).sum().item()
            start = end
        return total

    def generate_until(self, requests: list) -> list[str]:
        """Greedy continuation of each ``args = (context, gen_kwargs)``, cut at the first ``until``."""
        return [self.generate(context, dict(kwargs or {})) for context, kwargs in (r.args for r in requests)]

    def generate(self, context: str, gen_kwargs: dict) -> str:
        """Greedy decoding (lm-eval's ``gen_kwargs``: ``until``, ``max_gen_toks``; no sampling)."""
        if gen_kwargs.pop("do_sample", False) or gen_kwargs.get("temperature", 0.0) > 0.0:
            raise ValueError("the gqsa adapter decodes greedily only: got do_sample/temperature")
        until = gen_kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        max_new = int(gen_kwargs.get("max_gen_toks", self.max_gen_toks))
        ids = self.tokenizer(context, add_special_tokens=False).input_ids[-(self.max_length - max_new):]
        inputs = torch.tensor([ids or [self.prefix_token_id]], device=self._device)
        stops = [s for s in until if s]
        stop_kw = {"stop_strings": stops, "tokenizer": self.tokenizer} if stops else {}
        with torch.inference_mode():  # stop at the first ``until`` string, not after max_new tokens
            out = self.model.generate(inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=max_new,
                                      do_sample=False, pad_token_id=self.tokenizer.eos_token_id, **stop_kw)
        text = self.tokenizer.decode(out[0, inputs.shape[1]:], skip_special_tokens=True)
        cuts = [text.index(s) for s in until if s and s in text]
        return text[:min(cuts)] if cuts else text

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", "")).replace("/", "__")


def register() -> type:
    """Register model name ``gqsa`` with lm-eval (imported here); returns the ``LM`` subclass.

    lm-eval's own models are registered first: its registry loads them only while it is
    empty, so registering ours into an empty registry would hide ``hf`` and the rest.
    """
    import lm_eval.models  # noqa: F401  (lm-eval's lazy model table)
    from lm_eval.api.model import LM
    from lm_eval.api.registry import model_registry, register_model

    if MODEL_NAME in model_registry:
        return model_registry.get(MODEL_NAME)
    cls = type("GQSALM", (HarnessModel, LM), {"__doc__": HarnessModel.__doc__, "__module__": __name__})
    return register_model(MODEL_NAME)(cls)


def main(argv: list[str] | None = None) -> None:
    """lm-eval's command line with the ``gqsa`` model registered."""
    register()
    from lm_eval.__main__ import cli_evaluate

    sys.argv = [sys.argv[0], *(sys.argv[1:] if argv is None else argv)]
    cli_evaluate()


if __name__ == "__main__":
    main()
