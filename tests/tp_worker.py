"""One gloo rank of a tensor-parallel test (started by ``torch.multiprocessing.start_processes``):
load the rank's shards with :func:`gqsa.parallel.load_tp` and save the logits of fixed ids."""

from __future__ import annotations

import torch
import torch.distributed as dist
from safetensors.torch import save_file

import gqsa.parallel


def run(rank: int, world_size: int, port: int, path: str, ids: torch.Tensor, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        model = gqsa.parallel.load_tp(path, device="cpu", dtype=torch.float32)
        with torch.no_grad():
            save_file({"logits": model(ids).logits.contiguous()}, f"{out}/logits{rank}.safetensors")
    finally:
        dist.destroy_process_group()
