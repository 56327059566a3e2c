"""gqsa: group sparsity + group quantization for Hugging Face causal LMs.

The common case in three calls::

    import gqsa
    config = gqsa.GQSAConfig(sparsity=0.5, bits=4, bqpo=gqsa.BQPOConfig(), e2e=gqsa.E2EConfig())
    report = gqsa.compress(model, config, calib_ids)   # one-shot, then BQPO, then E2E-OQP
    gqsa.save_compressed(model, "out", source="path/to/original")
    model = gqsa.load("out")  # or transformers.AutoModelForCausalLM.from_pretrained("out")

On a GPU, ``gqsa.prepare_kernels(model)`` after ``model.cuda()`` and before ``torch.compile``
or CUDA graph capture (an eager forward does it by itself).
"""

from gqsa.compression import compress, compress_streamed
from gqsa.config import BQPOConfig, E2EConfig, GQSAConfig
from gqsa.hf import load, save_compressed
from gqsa.hf_quantizer import register as _register
from gqsa.layer import GQSLinear, prepare_kernels

_register()

__all__ = ["BQPOConfig", "E2EConfig", "GQSAConfig", "GQSLinear", "compress", "compress_streamed", "load", "prepare_kernels", "save_compressed"]
__version__ = "0.1.0"
