"""Model package: the STAB, the Video-Panda causal LM, the distillation parts and checkpoint maps.

Importing it registers `VideoPandaConfig` / `VideoPandaForCausalLM` (model_type "videopanda") with
transformers' `AutoConfig` / `AutoModelForCausalLM`, and the released-checkpoint key mapping.
"""
from transformers import AutoConfig, AutoModelForCausalLM

from videopanda.model.checkpoint import MODEL_TYPE, register_released_key_mapping
from videopanda.model.videopanda import VideoPandaConfig, VideoPandaForCausalLM, VideoPandaModel


def register() -> None:
    """Register the config, the causal LM and the released key mapping with transformers (idempotent)."""
    AutoConfig.register(MODEL_TYPE, VideoPandaConfig, exist_ok=True)
    AutoModelForCausalLM.register(VideoPandaConfig, VideoPandaForCausalLM, exist_ok=True)
    register_released_key_mapping()


register()

__all__ = ["VideoPandaConfig", "VideoPandaForCausalLM", "VideoPandaModel", "register"]
