"""Video-Panda: an encoder-free video-language model.

`import videopanda` registers the model and the processor with transformers' Auto classes, so
`AutoModelForCausalLM.from_pretrained(folder)` and `AutoProcessor.from_pretrained(folder)` load
Video-Panda folders, ours and the released layout.
"""
__version__ = "0.1.0"

import videopanda.model  # noqa: E402,F401  (registers the config and the model)


def _register_processor() -> None:
    from transformers import AutoProcessor

    from videopanda.data.processor import VideoPandaProcessor
    from videopanda.model.videopanda import VideoPandaConfig

    AutoProcessor.register(VideoPandaConfig, VideoPandaProcessor, exist_ok=True)


_register_processor()
