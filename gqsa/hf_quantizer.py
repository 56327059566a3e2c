"""transformers integration: ``AutoModelForCausalLM.from_pretrained`` on a gqsa folder.

``import gqsa`` registers ``quant_method: gqsa`` with transformers (as GPTQ, AWQ and
compressed-tensors integrate): before the weights are read, the quantizer swaps the
compressed nn.Linear layers of the freshly built (meta) model for empty GQSLinear layers,
and transformers then fills their packed buffers from the safetensors shards.
"""

from __future__ import annotations

from typing import Any

from transformers.quantizers.auto import (
    AUTO_QUANTIZATION_CONFIG_MAPPING,
    AUTO_QUANTIZER_MAPPING,
    register_quantization_config,
    register_quantizer,
)
from transformers.quantizers.base import HfQuantizer
from transformers.utils.quantization_config import QuantizationConfigMixin

from gqsa.hf import check_format_version, expand_layers, replace_with_gqs_layers, stored_state, validate_layers


class GQSAQuantizationConfig(QuantizationConfigMixin):
    """The ``quantization_config`` of a gqsa folder, as transformers holds it (a plain dict inside)."""

    def __init__(self, **kwargs: Any):
        self.quant_method = "gqsa"
        self._fields = dict(kwargs)
        self._fields["quant_method"] = "gqsa"
        for k, v in self._fields.items():
            setattr(self, k, v)

    def to_dict(self) -> dict[str, Any]:
        return dict(self._fields)

    def to_diff_dict(self) -> dict[str, Any]:
        return self.to_dict()


class GQSAHfQuantizer(HfQuantizer):
    """Loads pre-compressed gqsa checkpoints (compression itself runs through ``gqsa compress``)."""

    requires_calibration = True

    def validate_environment(self, *args, **kwargs) -> None:
        check_format_version(self.quantization_config.to_dict())

    def _process_model_before_weight_loading(self, model, **kwargs):
        replace_with_gqs_layers(model, self.quantization_config.to_dict(), device="meta")
        return model

    def _process_model_after_weight_loading(self, model, **kwargs):
        expand_layers(model)
        validate_layers(model)
        return model

    def get_state_dict_and_metadata(self, model):
        """``save_pretrained`` writes the lean version-3 tensors (the layers hold version 1 in memory)."""
        return stored_state(model), {}

    def is_serializable(self) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        return False


def register() -> None:
    """Register gqsa with transformers once (idempotent)."""
    if "gqsa" not in AUTO_QUANTIZATION_CONFIG_MAPPING:
        register_quantization_config("gqsa")(GQSAQuantizationConfig)
    if "gqsa" not in AUTO_QUANTIZER_MAPPING:
        register_quantizer("gqsa")(GQSAHfQuantizer)
