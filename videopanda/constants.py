"""Numbers fixed by the Video-Panda recipe (the original's prompt and preprocessing: docs/DESIGN.md,
"Choices where the paper is silent": Data), shared by every module."""

IGNORE_INDEX = -100
"""Label value that the cross-entropy loss skips."""

FRAME_TOKEN_INDEX = -200
"""Input id of one frame placeholder; the model swaps it for that frame's projected tokens."""

FRAME_PLACEHOLDER = "<image>"
"""Text form of one frame placeholder (the tokenizer turns each into FRAME_TOKEN_INDEX)."""

VIDEO_TOKEN = "<video>"
"""What a human turn writes for a video; expanded to one FRAME_PLACEHOLDER per frame."""

NUM_FRAMES = 8
FRAMES_PER_CHUNK = 4
STUDENT_IMAGE_SIZE = 448
TEACHER_IMAGE_SIZE = 224
PATCH_SIZE = 14

PIXEL_MEAN = (0.48145466, 0.4578275, 0.40821073)
PIXEL_STD = (0.26862954, 0.26130258, 0.27577711)
PAD_COLOR = (122, 116, 104)
"""Canvas colour for any-resolution padding: the pixel mean in 0-255."""

EXPERIMENT_RECORD = "experiment.json"
"""File in each training stage's output folder holding the resolved experiment that made it."""
