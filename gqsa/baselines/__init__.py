"""Baselines in gqsa's pipeline: RTN, GPTQ, SparseGPT, Wanda (and gqsa itself) behind one call.

::

    from gqsa.baselines import compress_method, save_method
    report = compress_method(model, "sparsegpt", pattern="2:4", bits=4, calib=ids)
    save_method(model, report, "out", source="path/to/original")

Modules: ``config`` (BaselineConfig), ``masks`` (N:M / per-row / per-block keep-masks),
``rtn``, ``obs`` (the lazy-batch OBS sweep shared by ``gptq`` and ``sparsegpt``), ``wanda``
(and magnitude pruning), ``bits`` (re-exports of gqsa.size, the accounting), ``save`` (dense folders with
a ``gqsa_baseline`` entry), ``method`` (``compress_method``).
"""

from gqsa.baselines.bits import baseline_bits_per_weight, gqsa_bits_per_weight
from gqsa.baselines.config import BaselineConfig
from gqsa.baselines.gptq import gptq_layer
from gqsa.baselines.method import (
           ALL_METHODS,
           MethodReport,
           compress_method,
           make_config,
           save_method,
)
from gqsa.baselines.rtn import rtn_layer, rtn_quantize
from gqsa.baselines.save import read_baseline, save_baseline
from gqsa.baselines.sparsegpt import sparsegpt_layer
from gqsa.baselines.wanda import magnitude_layer, wanda_layer

__all__ = ["ALL_METHODS", "BaselineConfig", "MethodReport", "baseline_bits_per_weight", "compress_method",
           "gptq_layer", "gqsa_bits_per_weight", "magnitude_layer", "make_config", "read_baseline",
           "rtn_layer", "rtn_quantize", "save_baseline", "save_method", "sparsegpt_layer", "wanda_layer"]
