import pytest
from transformers import AutoTokenizer

from videopanda.data.tokenizer import MIN_VOCAB_SIZE, train_llama_tokenizer


def test_trained_tokenizer_loads_as_llama_with_released_specials(tmp_path):
    texts = ["what colour is the circle ? red", "USER: hello ASSISTANT: hi there"] * 30
    folder = train_llama_tokenizer(texts, tmp_path / "tok", vocab_size=400)
    assert (folder / "tokenizer.model").is_file()
    tok = AutoTokenizer.from_pretrained(folder)
    assert type(tok).__name__ == "LlamaTokenizer"
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok.pad_token == tok.unk_token and tok.padding_side == "right"
    ids = tok("what colour is the circle ?").input_ids
    assert ids[0] == tok.bos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == "what colour is the circle ?"


def test_too_small_vocab_is_refused(tmp_path):
    with pytest.raises(ValueError, match="vocab_size"):
        train_llama_tokenizer(["a b c"], tmp_path / "tok", vocab_size=MIN_VOCAB_SIZE - 1)
