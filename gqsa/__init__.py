"""gqsa: group sparsity + group quantization for Hugging Face causal LMs.

The common case in three calls::

    import gqsa
    report = gqsa.compress(model, gqsa.GQSAConfig(sparsity=0.5, bits=4), calib_ids)
    gqsa.save_compressed(model, "out", config, source="path/to/original")
    model = gqsa.load("out")  # or transformers.AutoModelForCausalLM.from_pretrained("out")

On a GPU, ``gqsa.prepare_kernels(model)`` after ``model.cuda()`` and before ``torch.compile``
or CUDA graph capture (an eager forward does it by itself).
"""

from gqsa.config import GQSAConfig
from gqsa.hf import load, save_compressed
from gqsa.hf_quantizer import register as _register
from gqsa.layer import GQSLinear, prepare_kernels
from gqsa.pipeline import compress

_register()

__all__ = ["GQSAConfig", "GQSLinear", "compress", "load", "prepare_kernels", "save_compressed"]
__version__ = "0.1.0"
