"""Video-Panda: an encoder-free video-language model.

`import videopanda` registers the model with transformers' Auto classes (see `videopanda.model`), so
`AutoModelForCausalLM.from_pretrained(folder)` loads Video-Panda folders, ours and the released layout.
"""
__version__ = "0.1.0"

import videopanda.model  # noqa: E402,F401  (registers the Auto classes)
