"""Before/after check for refactors: compress a seeded tiny LLaMA on CPU through the CLI, one-shot
and one-shot + BQPO + E2E-OQP, and print the sha256 of every saved tensor as JSON.

    python scripts/bitcheck.py > before.json   # on the old commit
    python scripts/bitcheck.py > after.json    # on the new one; then diff the two files
"""

import contextlib
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import build_byte_tokenizer  # noqa: E402
from tiny_models import tiny_model  # noqa: E402

from gqsa.app.cli import main  # noqa: E402

RUNS = {"oneshot": [], "stages": ["--bqpo-epochs", "1", "--bqpo-lr", "1e-3", "--e2e-epochs", "1", "--e2e-nsamples",
                                   "4", "--e2e-seqlen", "32", "--e2e-batch-size", "2", "--e2e-grad-accum", "1"]}


def tensor_hashes(folder: Path) -> dict[str, str]:
    state = {}
    for f in sorted(folder.glob("*.safetensors")):
        state.update(load_file(f))
    return {k: hashlib.sha256(v.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()[:16]
            for k, v in sorted(state.items())}


def run() -> dict[str, dict[str, str]]:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tiny_model("llama").save_pretrained(tmp / "tiny")
        build_byte_tokenizer().save_pretrained(tmp / "tiny")
        text = tmp / "text.txt"
        text.write_text(" ".join(f"word{i % 97} and more text {i}." for i in range(800)))
        out = {}
        for name, extra in RUNS.items():
            argv = ["compress", str(tmp / "tiny"), str(tmp / name), "--calib", str(text), "--nsamples", "4",
                    "--seqlen", "32", "--device", "cpu", "--e2e-data", str(text), *extra]
            with contextlib.redirect_stdout(sys.stderr):  # the CLI's summary table
                assert main(argv) == 0
            out[name] = tensor_hashes(tmp / name)
        return out


if __name__ == "__main__":
    print(json.dumps(run(), indent=1))
