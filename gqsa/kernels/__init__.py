"""Compute paths of GQSLinear: a pure-PyTorch reference and (on CUDA) Triton kernels."""
