"""Video-Panda: an encoder-free video-language model."""
__version__ = "0.1.0"
