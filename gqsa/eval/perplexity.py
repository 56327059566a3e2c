"""Perplexity over non-overlapping windows of one token stream (GPTQ/SparseGPT protocol).

The stream (``gqsa.data.eval_tokens``) is cut into ``T // seqlen`` whole windows of ``seqlen``
tokens; the tail shorter than a window is dropped. Each window is scored independently, and the
reported NLL is the mean over all predicted tokens (``seqlen - 1`` per window), computed from
float32 log-softmax. Since every window predicts the same number of tokens this equals GPTQ's
``exp(sum(window_mean_loss * seqlen) / (windows * seqlen))``.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm


def perplexity(
    model: torch.nn.Module,
    tokens: torch.Tensor,
    seqlen: int = 1024,
    batch_size: int = 1,
    device: torch.device | str | None = None,
    max_windows: int | None = None,
    progress: bool = True,
) -> dict:
    """Perplexity of a causal LM on a token stream.

    Args:
        model: a causal LM called as ``model(input_ids=...)`` and returning ``.logits``
            ``[B, S, V]``; it is not moved.
        tokens: ``[1, T]`` int64 token ids.
        seqlen: window length in tokens.
        batch_size: windows per forward pass.
        device: where the windows are sent; default: the device of the model's first parameter.
        max_windows: score only the first this many windows.
        progress: show a tqdm bar.

    Returns:
        ``{"ppl", "nll", "windows", "tokens", "seqlen", "seconds"}``: ``nll`` is the mean
        negative log-likelihood in nats per predicted token, ``tokens`` the number of predicted
        tokens (``windows * (seqlen - 1)``), ``seconds`` the wall time of the scoring.
    """
    windows = _windows(tokens, seqlen, max_windows)
    device = device if device is not None else next(model.parameters()).device
    start = time.perf_counter()
    total_nll, total_tokens = 0.0, 0
    batches = torch.split(windows, batch_size)
    with torch.inference_mode():
        for batch in tqdm(batches, desc="perplexity", unit="batch", disable=not progress):
            nll, count = _batch_nll(model, batch.to(device))
            total_nll += nll
            total_tokens += count
    nll = total_nll / total_tokens
    if not math.isfinite(nll):
        raise ValueError(f"the model's loss is {nll} on these windows, so it has no perplexity: its weights are "
                         f"damaged (NaN or inf) or it overflows in this dtype (try --dtype float32)")
    return {
        "ppl": math.exp(nll),
        "nll": nll,
        "windows": windows.shape[0],
        "tokens": total_tokens,
        "seqlen": seqlen,
        "seconds": time.perf_counter() - start,
    }


def _windows(tokens: torch.Tensor, seqlen: int, max_windows: int | None) -> torch.Tensor:
    """``[1, T]`` stream -> ``[N, seqlen]`` whole, non-overlapping windows."""
    if tokens.dim() != 2 or tokens.shape[0] != 1:
        raise ValueError(f"tokens must have shape [1, T], got {tuple(tokens.shape)}")
    if seqlen < 2:
        raise ValueError(f"seqlen must be >= 2, got {seqlen}")
    n = tokens.shape[1] // seqlen
    if max_windows is not None:
        n = min(n, max_windows)
    if n < 1:
        raise ValueError(f"{tokens.shape[1]} tokens hold no whole window of {seqlen}")
    return tokens[0, : n * seqlen].reshape(n, seqlen)


def _batch_nll(model: torch.nn.Module, batch: torch.Tensor) -> tuple[float, int]:
    """Summed NLL (float32) of tokens 1..S-1 of each ``[B, S]`` window, and how many there are."""
    logits = model(input_ids=batch).logits[:, :-1].float()
    targets = batch[:, 1:]
    nll = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum")
    return nll.item(), targets.numel()
