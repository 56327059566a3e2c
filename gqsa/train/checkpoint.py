"""Resumable compression: a folder holding every finished decoder block.

=========================  ==========================================================
file                       content
=========================  ==========================================================
``progress.json``          ``{"version", "fingerprint", "blocks": [record_0, ...]}``:
                           the run's fingerprint and one JSON record per finished
                           block (its layer stats and the ``after_block`` log, e.g. BQPO)
``block_0003.safetensors`` the full state dict of finished block 3 (GQSLinear buffers
                           codes/col_idx/row_ptr/scales/zeros/bias, norms, any dense
                           layer), with the shapes of its GQSLinear layers in the
                           safetensors metadata (``gqs_layers``)
=========================  ==========================================================

Every file is written to a temporary name, fsynced and moved into place with
``os.replace``; ``progress.json`` is rewritten only after the block's tensors are in place,
so a run killed at any moment leaves either the old or the new progress, and loses at most
the block in progress (a block file without its progress entry is simply written again).

Hidden states are not stored. On resume the pipeline recomputes the inputs of the next
block by running the calibration set through the restored blocks (and, for BQPO's
full-precision targets, through the dense blocks before restoring them): one forward per
finished block, seconds on a GPU. Storing them instead would cost an [n, L, d] tensor per
chain (for 128 x 2048 tokens of a 4096-wide model: 4 GiB in float32) against about the
packed size of a block here.

A ``fingerprint`` (config, calibration data hash, model, training options) is stored with
the progress; resuming with a different one raises instead of mixing two runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from gqsa.config import GQSAConfig
from gqsa.layer import GQSLinear
from gqsa.models import find_blocks, set_submodule

CHECKPOINT_VERSION = 1
PROGRESS = "progress.json"


def run_fingerprint(model: nn.Module, config: GQSAConfig, calib: torch.Tensor, **extra: Any) -> dict[str, Any]:
    """What must match for a checkpoint to be resumed: the GQSA config, the calibration
    tokens [n, L] (SHA-256), the model (name, type, number of blocks) and any ``extra``
    JSON-able options (e.g. ``bqpo=BQPOConfig(...).to_dict()``, ``fp_targets=True``)."""
    ids = calib.detach().to("cpu", torch.int64).contiguous()
    fp = {"gqsa": config.to_dict(), "calib_shape": list(ids.shape),
          "calib_sha256": hashlib.sha256(ids.numpy().tobytes()).hexdigest(),
          "model": getattr(model.config, "_name_or_path", None), "model_type": getattr(model.config, "model_type", None),
          "num_blocks": len(find_blocks(model)[1]), **extra}
    return json.loads(json.dumps(fp))  # tuples -> lists, so that it compares equal after a round trip


class BlockCheckpoint:
    """A checkpoint folder for :func:`gqsa.pipeline.run_blocks` (its ``BlockStore``).

    Args:
        folder: the checkpoint folder (created if missing).
        fingerprint: from :func:`run_fingerprint`.
        resume: continue the progress found in ``folder``; without it, a folder that already
            holds progress raises FileExistsError (nothing is deleted silently).
    """

    def __init__(self, folder: str | os.PathLike, fingerprint: dict[str, Any], resume: bool = False):
        self.folder = Path(folder)
        self.fingerprint = json.loads(json.dumps(fingerprint))
        found = self._read_progress()
        if found is not None and found["blocks"] and not resume:
            raise FileExistsError(f"{self.folder} holds {len(found['blocks'])} finished blocks of an earlier run; "
                                  "pass resume=True (CLI: --resume) to continue it, or remove the folder")
        if found is not None and resume:
            _check_same_run(found["fingerprint"], self.fingerprint, self.folder)
            self._records = found["blocks"]
            print(f"gqsa: resuming from {self.folder}: {len(self._records)} finished blocks are kept",
                  file=sys.stderr, flush=True)
        else:
            self._records = []
            self.folder.mkdir(parents=True, exist_ok=True)
            self._write_progress()

    def finished(self) -> int:
        """Number of finished blocks (0..finished-1 are saved)."""
        return len(self._records)

    def records(self) -> list[dict[str, Any]]:
        """The finished blocks' records, in order."""
        return [dict(r) for r in self._records]

    def block_path(self, i: int) -> Path:
        return self.folder / f"block_{i:04d}.safetensors"

    def save(self, i: int, block: nn.Module, record: dict[str, Any]) -> None:
        """Save finished block ``i`` (must be the next one) and its JSON-able ``record``."""
        if i != len(self._records):
            raise ValueError(f"block {i} finished out of order: the checkpoint expects block {len(self._records)}")
        json.dumps(record)  # fail before writing anything if the record is not JSON-able
        tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in block.state_dict().items()}
        meta = {"gqs_layers": json.dumps(gqs_layout(block)), "format": "gqsa-block",
                "version": str(CHECKPOINT_VERSION)}
        atomic_write(self.block_path(i), lambda tmp: save_file(tensors, str(tmp), metadata=meta))
        self._records.append(record)
        self._write_progress()

    def restore(self, i: int, block: nn.Module) -> dict[str, Any]:
        """Turn the dense ``block`` into finished block ``i`` (GQSLinear layers and all its
        tensors, on the block's device, or on the CPU for a block on the meta device: the
        skeleton of a streamed run); returns the block's record."""
        if i >= len(self._records):
            raise ValueError(f"block {i} is not finished in {self.folder} ({len(self._records)} are)")
        path = self.block_path(i)
        device = next(iter(block.state_dict().values())).device
        skeleton = device.type == "meta"
        device = torch.device("cpu") if skeleton else device
        with safe_open(str(path), framework="pt") as f:
            layout = json.loads(f.metadata()["gqs_layers"])
        for name, info in layout.items():
            set_submodule(block, name, GQSLinear(info["in_features"], info["out_features"], info["nnz"],
                                                 info["group_size"], info["bits"], info["bias"],
                                                 getattr(torch, info["dtype"]), device=device))
        block.load_state_dict(load_file(str(path), device=str(device)), strict=True, assign=skeleton)
        return dict(self._records[i])

    def remove(self) -> None:
        """Delete the checkpoint folder (after the compressed model is saved)."""
        shutil.rmtree(self.folder, ignore_errors=True)

    def _read_progress(self) -> dict[str, Any] | None:
        path = self.folder / PROGRESS
        if not path.exists():
            return None
        progress = json.loads(path.read_text())
        if progress.get("version") != CHECKPOINT_VERSION:
            raise ValueError(f"{path} has checkpoint version {progress.get('version')}; this gqsa writes "
                             f"version {CHECKPOINT_VERSION}: remove the folder and start again")
        return progress

    def _write_progress(self) -> None:
        text = json.dumps({"version": CHECKPOINT_VERSION, "fingerprint": self.fingerprint,
                           "blocks": self._records}, indent=1)
        atomic_write(self.folder / PROGRESS, lambda tmp: tmp.write_text(text))


def finished_blocks(folder: str | os.PathLike) -> int:
    """Number of finished blocks in a checkpoint folder (0 when there is none or it is unreadable)."""
    try:
        return len(json.loads((Path(folder) / PROGRESS).read_text())["blocks"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def gqs_layout(block: nn.Module) -> dict[str, dict[str, Any]]:
    """Shapes of the GQSLinear layers of ``block`` (what is needed to rebuild them empty)."""
    return {n: {"in_features": m.in_features, "out_features": m.out_features, "nnz": m.nnz,
                "group_size": m.group_size, "bits": m.bits, "bias": m.bias is not None,
                "dtype": str(m.bias.dtype if m.bias is not None else torch.float16).replace("torch.", "")}
            for n, m in block.named_modules() if isinstance(m, GQSLinear)}


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write ``path`` through ``write(tmp)`` on a temporary name beside it, fsync, rename."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_same_run(saved: dict[str, Any], current: dict[str, Any], folder: Path) -> None:
    """Raise a ValueError naming the settings that differ between the checkpoint and this run."""
    keys = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    if keys:
        detail = "; ".join(f"{k}: checkpoint {saved.get(k)!r} vs now {current.get(k)!r}" for k in keys)
        raise ValueError(f"checkpoint {folder} belongs to another run ({detail[:800]}); "
                         "use the same settings, or another checkpoint folder")
