"""Layer-input Hessian H = 2 X^T X / n and its damped inverse (GPTQ/SparseGPT, sec. 3)."""

from __future__ import annotations

import torch


class HessianAccumulator:
    """Running H = 2/n * sum_t x_t x_t^T over calibration tokens, in float32.

    Also keeps the running squared column norms sum_t x_t^2 (for Wanda's ||x||).
    """

    def __init__(self, in_features: int, device: torch.device | str = "cpu"):
        self.H = torch.zeros(in_features, in_features, dtype=torch.float32, device=device)
        self.sq_norm = torch.zeros(in_features, dtype=torch.float32, device=device)
        self.n = 0

    def add_batch(self, x: torch.Tensor) -> None:
        """Accumulate inputs x [..., K] (any float dtype).

        On CUDA, fp16/bf16 inputs take the tensor cores: their products are exact in float32 (11- or
        8-bit significands), so only the float32 sums' order differs from a float32 matmul (at 70B
        shape the float32 SIMT products were about 10 s of a block's 50 s one-shot). Elsewhere the
        inputs are scaled by sqrt(2/n) and multiplied in float32, as before."""
        x = x.reshape(-1, x.shape[-1]).to(self.H.device)
        t = x.shape[0]
        n_old, self.n = self.n, self.n + t
        if x.is_cuda and x.dtype in (torch.float16, torch.bfloat16):
            self.H.mul_(n_old / self.n).add_(_gram_exact(x), alpha=2.0 / self.n)
            self.sq_norm.add_(x.float().pow(2).sum(0))
            return
        x = x.float()
        self.H.mul_(n_old / self.n)
        xs = x * (2.0 / self.n) ** 0.5
        self.H.addmm_(xs.T, xs)
        self.sq_norm.add_(x.pow(2).sum(0))


GRAM_CHUNK = 1024  # tokens per tensor-core product; the float32 sums of the chunks are exact-rounded


def _gram_exact(x: torch.Tensor) -> torch.Tensor:
    """x^T x [K, K] float32 of CUDA fp16/bf16 x [T, K] on the tensor cores.

    Each product is exact in float32, but the tensor cores' float32 accumulation rounds less
    carefully than the SIMT units (measured on an H200 over 16,384 tokens at K = 512: relative
    error 2.4e-5 in one product against 6.7e-7), so the tokens are taken in chunks of
    :data:`GRAM_CHUNK` whose products are summed by ordinary float32 adds. fp16 inputs and a
    float32 output where torch has it (``mm(..., out_dtype=)``), else TF32 on the inputs widened
    to float32 (which holds every fp16/bf16 value exactly)."""
    out = None
    for t0 in range(0, x.shape[0], GRAM_CHUNK):
        part = _gram_chunk(x[t0:t0 + GRAM_CHUNK])
        out = part if out is None else out.add_(part)
    return out


_OUT_DTYPE_MM = [True]  # False once torch has said it has no mm(..., out_dtype=) for these inputs


def _gram_chunk(x: torch.Tensor) -> torch.Tensor:
    if _OUT_DTYPE_MM[0]:
        try:
            return torch.mm(x.T, x, out_dtype=torch.float32)
        except (TypeError, RuntimeError, NotImplementedError):
            _OUT_DTYPE_MM[0] = False  # asked once, not once per chunk
    xf = x.float()
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        return xf.T @ xf
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def dead_inputs(H: torch.Tensor) -> torch.Tensor:
    """Bool [K]: inputs that were always zero on the calibration data."""
    return torch.diag(H) == 0


def damped_inverse(H: torch.Tensor, damp: float) -> torch.Tensor:
    """H^-1 of H + damp*mean(diag H)*I, with dead inputs given a unit diagonal. [K, K] float32."""
    H = H.clone()
    dead = dead_inputs(H)
    H[dead, dead] = 1.0
    H.diagonal().add_(damp * torch.mean(torch.diag(H)))
    L = torch.linalg.cholesky(H)
    return torch.cholesky_inverse(L)


def inverse_cholesky_upper(Hinv: torch.Tensor) -> torch.Tensor:
    """Upper Cholesky factor U of H^-1 (H^-1 = U^T U): row i holds the OBS update of column i."""
    return torch.linalg.cholesky(Hinv, upper=True)
