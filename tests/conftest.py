import os

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory):
    """A SentencePiece Llama tokenizer trained in-process on conversation-like text (released layout)."""
    from videopanda.data.tokenizer import train_llama_tokenizer

    words = "red green blue yellow circle square triangle moves left right up down first then what which how many colour shape the a is did turn appear video describe".split()
    texts = [
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions.",
        "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the human's questions.",
        "USER: ASSISTANT: </s>",
    ]
    texts += [" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(12)) for i in range(200)]
    return train_llama_tokenizer(texts, tmp_path_factory.mktemp("tokenizer"), vocab_size=512)


@pytest.fixture(scope="session")
def streaming_model_folder(tmp_path_factory, tiny_tokenizer_dir):
    """A tiny released-layout model whose greedy answers stream one piece per token (the chat and demo tests)."""
    from helpers.released import build_released_folder

    folder = tmp_path_factory.mktemp("videopanda_fitu")
    build_released_folder(folder, tiny_tokenizer_dir, seed=7)
    return folder
