"""Per-layer math of GQSA: Hessian, group saliency, quantization grid, joint prune+quantize.

Pure functions on tensors; nothing here knows about models or modules.
"""
