"""Video-Panda: an encoder-free video-language model.

`import videopanda` registers the model and the processor with transformers' Auto classes, so
`AutoModelForCausalLM.from_pretrained(folder)` and `AutoProcessor.from_pretrained(folder)` load
Video-Panda folders, ours and the released layout. The `videopanda` command imports the package without
registering (see `videopanda_command`): its modules that use the model import `videopanda.model` /
`videopanda.data.processor`, which register themselves.
"""
__version__ = "0.1.0"

import os

from videopanda_command import COMMAND_MODE_VARIABLE

if not os.environ.get(COMMAND_MODE_VARIABLE):
    import videopanda.data.processor  # noqa: F401  (registers the processor)
    import videopanda.model  # noqa: F401  (registers the config and the model)
