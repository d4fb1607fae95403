import io

import pytest
import sentencepiece as spm
import torch
from sentencepiece import sentencepiece_model_pb2
from transformers import AutoTokenizer
from transformers.tokenization_utils_sentencepiece import SentencePieceBackend

from videopanda.constants import FRAME_TOKEN_INDEX, IGNORE_INDEX
from videopanda.data.conversation import (
    SYSTEM_HUMAN,
    SYSTEM_USER,
    ConversationFormatError,
    build_generation_prompt,
    conversation_rounds,
    conversation_text,
    tokenize_conversation,
    tokenize_prompt,
)
from videopanda.data.tokenizer import train_llama_tokenizer

USER_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions."
)
HUMAN_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the human's questions."
)
IMAGES = "<image>" * 8

CONVERSATION = [
    {"from": "human", "value": "what colour is the circle?\n<video>"},
    {"from": "gpt", "value": "the circle is red and moves left"},
    {"from": "human", "value": "which shape turns blue then"},
    {"from": "gpt", "value": "a square, first up then down"},
]


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer_dir):
    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


@pytest.fixture(scope="module")
def glued_user_tokenizer_dir(tmp_path_factory):
    """A tokenizer trained only on text where `USER` follows `</s>` with no space: `USER` is one piece
    and `▁USER` two ("▁", "USER"), so a later round tokenised alone is one token longer than in place:
    the vocabulary the original's -1 for non-legacy tokenizers assumes."""
    words = ("red green blue yellow circle square triangle moves left right up down first then what which how many "
             "colour shape the a is did turn appear video describe").split()
    texts = [
        " ".join(words[(i * 5 + j) % len(words)] for j in range(6))
        + "</s>USER: " + " ".join(words[(i * 3 + j) % len(words)] for j in range(5))
        + " ASSISTANT: " + words[i % len(words)]
        for i in range(200)
    ]
    return train_llama_tokenizer(texts, tmp_path_factory.mktemp("glued_user"), vocab_size=400)


@pytest.fixture(scope="module")
def suffix_space_tokenizer_dir(tmp_path_factory, tiny_tokenizer_dir):
    """The tiny tokenizer's folder with a SentencePiece model that keeps whitespace at the END of pieces
    (":▁", "first▁"): the token holding the space before a reply also holds the ":" before it."""
    folder = tmp_path_factory.mktemp("suffix_space")
    (folder / "tokenizer_config.json").write_bytes((tiny_tokenizer_dir / "tokenizer_config.json").read_bytes())
    words = "red green blue circle square moves left right up down first then what which how many the a is".split()
    texts = [" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(12)) for i in range(200)]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts + ["USER: what ASSISTANT: the circle"] * 20), model_writer=model,
        vocab_size=400, model_type="bpe", byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        treat_whitespace_as_suffix=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        hard_vocab_limit=False, num_threads=1, minloglevel=2,
    )
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    return folder


@pytest.fixture(scope="module")
def folders(tiny_tokenizer_dir, glued_user_tokenizer_dir, suffix_space_tokenizer_dir):
    return {"tiny": tiny_tokenizer_dir, "glued_user": glued_user_tokenizer_dir,
            "suffix_space": suffix_space_tokenizer_dir}


@pytest.fixture(scope="module")
def load(folders):
    """load(name, legacy): that tokenizer folder through AutoTokenizer with the given `legacy` setting."""
    return lambda name, legacy: AutoTokenizer.from_pretrained(folders[name], legacy=legacy)


def test_system_texts():
    assert SYSTEM_USER == USER_SYSTEM and SYSTEM_HUMAN == HUMAN_SYSTEM


def test_template_text_moves_the_video_to_the_front():
    text = conversation_text(conversation_rounds(CONVERSATION, 8))
    assert text == (
        f"{USER_SYSTEM} USER: {IMAGES}\nwhat colour is the circle? ASSISTANT: the circle is red and moves left</s>"
        "USER: which shape turns blue then ASSISTANT: a square, first up then down</s>"
    )


def test_generation_prompt_after_earlier_rounds():
    rounds = [("what moves?", "a circle"), ("which colour?", None)]
    assert conversation_text(rounds) == (
        f"{USER_SYSTEM} USER: what moves? ASSISTANT: a circle</s>USER: which colour? ASSISTANT:"
    )
    with pytest.raises(ValueError, match="round 0 has no reply"):
        conversation_text([("what moves?", None), ("which colour?", "red")])


def test_generation_prompt_for_both_systems():
    assert build_generation_prompt("what moves?", 8) == f"{USER_SYSTEM} USER: {IMAGES}\nwhat moves? ASSISTANT:"
    assert build_generation_prompt("what moves?", 8, system=SYSTEM_HUMAN) == f"{HUMAN_SYSTEM} USER: {IMAGES}\nwhat moves? ASSISTANT:"
    assert build_generation_prompt("<video>\nwhat moves?", 4) == f"{USER_SYSTEM} USER: {'<image>' * 4}\nwhat moves? ASSISTANT:"
    assert build_generation_prompt("hello", 0) == f"{USER_SYSTEM} USER: hello ASSISTANT:"


def expected_by_offsets(tokenizer, text: str, replies: list[str]) -> tuple[list[int], list[int]]:
    """Independent reference: tokenise the whole text once, mark the tokens whose character spans
    overlap a ` {reply}</s>` span (offset mapping; the space before the reply included), everything else
    -100."""
    head, tail = text.split(IMAGES) if IMAGES in text else ("", text)
    head_ids = tokenizer(head, add_special_tokens=False).input_ids if head else []
    encoded = tokenizer(tail, add_special_tokens=False, return_offsets_mapping=True)
    spans, cursor = [], 0
    for reply in replies:
        start = tail.index(f"ASSISTANT: {reply}</s>", cursor) + len("ASSISTANT:")
        cursor = start + len(f" {reply}</s>")
        spans.append((start, cursor))
    tail_labels = [
        token if any(s < end and e > begin for begin, end in spans) else IGNORE_INDEX
        for token, (s, e) in zip(encoded.input_ids, encoded.offset_mapping)
    ]
    placeholders = [FRAME_TOKEN_INDEX] * 8 if head else []
    ids = [tokenizer.bos_token_id] + head_ids + placeholders + encoded.input_ids
    labels = [IGNORE_INDEX] * (1 + len(head_ids) + len(placeholders)) + tail_labels
    return ids, labels


def test_labels_token_by_token_against_offsets(tokenizer):
    input_ids, labels = tokenize_conversation(CONVERSATION, tokenizer, 8, sample_id="s1")
    text = conversation_text(conversation_rounds(CONVERSATION, 8))
    replies = [CONVERSATION[1]["value"], CONVERSATION[3]["value"]]
    expected_ids, expected_labels = expected_by_offsets(tokenizer, text, replies)
    assert input_ids.tolist() == expected_ids
    assert labels.tolist() == expected_labels
    supervised = [t for t in labels.tolist() if t != IGNORE_INDEX]
    assert tokenizer.decode(supervised) == "the circle is red and moves left</s> a square, first up then down</s>"
    assert supervised.count(tokenizer.eos_token_id) == 2


def test_text_only_conversation_and_human_system(tokenizer):
    conversation = [{"from": "human", "value": "  describe the square  "}, {"from": "gpt", "value": "it is green\n"}]
    input_ids, labels = tokenize_conversation(conversation, tokenizer, 8, system=SYSTEM_HUMAN)
    text = f"{HUMAN_SYSTEM} USER: describe the square ASSISTANT: it is green</s>"
    expected_ids, expected_labels = expected_by_offsets(tokenizer, text, ["it is green"])
    assert input_ids.tolist() == expected_ids and labels.tolist() == expected_labels
    assert FRAME_TOKEN_INDEX not in input_ids.tolist()


def test_placeholders_and_bos(tokenizer):
    input_ids, labels = tokenize_conversation(CONVERSATION, tokenizer, 8)
    ids = input_ids.tolist()
    assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1
    first = ids.index(FRAME_TOKEN_INDEX)
    assert ids[first : first + 8] == [FRAME_TOKEN_INDEX] * 8 and ids.count(FRAME_TOKEN_INDEX) == 8
    assert (labels[input_ids == FRAME_TOKEN_INDEX] == IGNORE_INDEX).all()
    assert input_ids.dtype == labels.dtype == torch.long


@pytest.mark.parametrize("legacy", [True, False])
def test_tokenize_prompt_matches_the_conversation_prefix(load, legacy):
    tokenizer = load("tiny", legacy)
    prompt = build_generation_prompt("what colour is the circle?", 8)
    prompt_ids = tokenize_prompt(prompt, tokenizer).tolist()
    conversation_ids, _ = tokenize_conversation(CONVERSATION[:2], tokenizer, 8)
    assert conversation_ids.tolist()[: len(prompt_ids)] == prompt_ids
    assert prompt_ids.count(FRAME_TOKEN_INDEX) == 8
    rounds = conversation_rounds(CONVERSATION, 8)
    second_prompt = conversation_text([rounds[0], (rounds[1][0], None)])
    second_ids = tokenize_prompt(second_prompt, tokenizer).tolist()
    conversation_ids, _ = tokenize_conversation(CONVERSATION, tokenizer, 8)
    assert conversation_ids.tolist()[: len(second_ids)] == second_ids


def test_video_flag_inserts_the_video_when_the_text_has_no_token(tokenizer):
    conversation = [{"from": "human", "value": "what moves?"}, {"from": "gpt", "value": "a circle"}]
    rounds = conversation_rounds(conversation, 4, has_video=True)
    assert rounds == [(f"{'<image>' * 4}\nwhat moves?", "a circle")]
    input_ids, _ = tokenize_conversation(conversation, tokenizer, 4, has_video=True)
    assert input_ids.tolist().count(FRAME_TOKEN_INDEX) == 4


@pytest.mark.parametrize(
    "conversation, has_video, message",
    [
        ([{"from": "gpt", "value": "hi"}, {"from": "human", "value": "hello"}], None, "expected 'human'"),
        ([{"from": "human", "value": "hello"}], None, "without a reply"),
        ([{"from": "human", "value": "<video> a <video>"}, {"from": "gpt", "value": "b"}], None, "one video per sample"),
        ([{"from": "human", "value": "<video> a"}, {"from": "gpt", "value": "b"}], False, "without a video"),
        ([{"from": "human", "value": "<image> a"}, {"from": "gpt", "value": "b"}], None, "literal <image>"),
        ([{"from": "human", "value": "a"}, {"from": "gpt", "value": "b</s>c"}], None, "literal </s>"),
        ([{"from": "human", "value": 3}, {"from": "gpt", "value": "b"}], None, "string 'value'"),
        ([{"from": "human", "value": "what moves?"}, {"from": "gpt", "value": "  "}], None, "turn 1 is empty"),
        ([{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}, {"from": "human", "value": "\n"},
          {"from": "gpt", "value": "c"}], None, "turn 2 is empty"),
        ([], None, "non-empty list"),
        (None, None, "non-empty list"),
    ],
)
def test_malformed_conversations_name_the_sample(tokenizer, conversation, has_video, message):
    with pytest.raises(ConversationFormatError, match=message) as info:
        tokenize_conversation(conversation, tokenizer, 8, has_video=has_video, sample_id="vid_0042")
    assert "vid_0042" in str(info.value)


def test_a_reply_end_that_is_not_the_eos_token_is_an_error_not_a_silent_mask(tiny_tokenizer_dir):
    # "</s>" still tokenises as id 2, but this tokenizer stops generating at id 0: training on its
    # labels would teach an end token that generation never stops on.
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir, eos_token="<unk>")
    with pytest.raises(ConversationFormatError, match=r"'vid_7'.*</s> ending turn 1 .*EOS token \(id 0\)"):
        tokenize_conversation(CONVERSATION, tokenizer, 8, sample_id="vid_7")


def test_labels_need_a_fast_tokenizer(tiny_tokenizer_dir):
    slow = SentencePieceBackend(vocab_file=str(tiny_tokenizer_dir / "tokenizer.model"))
    with pytest.raises(TypeError, match="fast tokenizer.*SentencePieceBackend"):
        tokenize_conversation(CONVERSATION, slow, 8)


# ---- multi-turn samples against the original's round-by-round rule ---------------------------------

ROUNDS_3 = [
    ("<video>\nwhat colour is the circle?", f"{IMAGES}\nwhat colour is the circle?", "the circle is red and moves left"),
    ("which shape turns blue then", "which shape turns blue then", "{a} square, first up then down"),
    ("how many shapes appear", "how many shapes appear", "three: 1 circle, 2 squares"),
]


def original_text(system: str, rounds: list[tuple[str, str]]) -> str:
    """The original's Vicuna v1.1 text: `{system} ` then `USER: {msg} ASSISTANT: {reply}</s>` per round."""
    return f"{system} " + "".join(f"USER: {message} ASSISTANT: {reply}</s>" for message, reply in rounds)


def original_ids_and_labels(tokenizer, text: str, legacy: bool) -> tuple[list[int], list[int]]:
    """The original's ids and labels, rewritten from its rule: ids are BOS plus each `<image>`-separated
    piece tokenised alone (BOS dropped) with -200 between. Labels: the text is cut at `</s>` into rounds
    and each round at " ASSISTANT: "; a round covers len(ids(round)) tokens of the whole (its BOS
    standing in for the `</s>` cut away) and its first len(ids(instruction + " ASSISTANT: ")) - 2 are
    masked; after the first round a non-legacy tokenizer takes one token off both counts. When the
    rounds do not add up to the whole, every label is -100."""

    def encode(piece: str) -> list[int]:
        ids = [tokenizer.bos_token_id]
        for i, chunk in enumerate(piece.split("<image>")):
            ids += ([FRAME_TOKEN_INDEX] if i else []) + tokenizer(chunk).input_ids[1:]
        return ids

    ids = encode(text)
    labels = list(ids)
    labels[0] = IGNORE_INDEX
    cursor = 1
    for i, piece in enumerate(text.split("</s>")):
        parts = piece.split(" ASSISTANT: ")
        if not piece or len(parts) != 2:
            break
        round_len = len(encode(piece))
        instruction_len = len(encode(parts[0] + " ASSISTANT: ")) - 2
        if i > 0 and not legacy:
            round_len -= 1
            instruction_len -= 1
        for k in range(cursor, min(cursor + instruction_len, len(ids))):
            labels[k] = IGNORE_INDEX
        cursor += round_len
    labels[cursor:] = [IGNORE_INDEX] * max(0, len(labels) - cursor)
    if cursor != len(ids):
        labels = [IGNORE_INDEX] * len(ids)
    return ids, labels


def turns(rounds) -> list[dict]:
    """ROUNDS_3-style (raw human value, message, reply) triples -> a LLaVA-style turn list."""
    return [turn for raw, _, reply in rounds
            for turn in ({"from": "human", "value": raw}, {"from": "gpt", "value": reply})]


@pytest.mark.parametrize("num_rounds", [1, 2, 3])
@pytest.mark.parametrize("name, legacy", [("glued_user", False), ("glued_user", True), ("tiny", True),
                                          ("suffix_space", False), ("suffix_space", True)])
@pytest.mark.parametrize("system", [SYSTEM_USER, SYSTEM_HUMAN])
def test_ids_and_labels_equal_the_original_round_by_round_rule(load, name, legacy, num_rounds, system):
    tokenizer = load(name, legacy)
    rounds = ROUNDS_3[:num_rounds]
    text = original_text(system, [(message, reply) for _, message, reply in rounds])
    expected_ids, expected_labels = original_ids_and_labels(tokenizer, text, legacy)
    assert any(label != IGNORE_INDEX for label in expected_labels), "the original zeroed this sample"
    input_ids, labels = tokenize_conversation(turns(rounds), tokenizer, 8, system=system, sample_id="s3")
    assert input_ids.tolist() == expected_ids
    assert labels.tolist() == expected_labels
    if num_rounds >= 2:
        # "{a}" has no "▁{" piece: the space before the reply is a token of its own (or, whitespace as
        # suffix, the end of ":▁"), and it is supervised.
        pieces = [tokenizer.convert_ids_to_tokens(i) if i >= 0 else "<image>" for i in input_ids.tolist()]
        brace = next(k for k, p in enumerate(pieces) if p == "<0x7B>")
        space = [":", "▁"] if name != "suffix_space" else ["ASSISTANT", ":▁"]
        assert pieces[brace - 2 : brace] == space and labels[brace - 2] == IGNORE_INDEX
        assert labels[brace - 1] == input_ids[brace - 1]


def test_the_legacy_setting_decides_how_the_next_round_after_eos_tokenises(load):
    rounds = [("what moves", "what moves", "red"), ("which", "which", "blue")]
    text = original_text(SYSTEM_USER, [(message, reply) for _, message, reply in rounds])
    after_eos = {}
    for legacy in (True, False):
        tokenizer = load("glued_user", legacy)
        pieces = tokenizer.convert_ids_to_tokens(tokenize_conversation(turns(rounds), tokenizer, 8)[0].tolist())
        assert tokenizer.convert_ids_to_tokens(tokenize_prompt(text, tokenizer).tolist()) == pieces
        after_eos[legacy] = pieces[pieces.index("</s>") + 1 : pieces.index("</s>") + 3]
    assert after_eos == {True: ["▁", "USER"], False: ["USER", ":"]}
    assert load("glued_user", False).tokenize("USER") == ["▁", "USER"]


@pytest.mark.parametrize("legacy", [True, False])
def test_multi_turn_labels_are_right_where_the_original_zeroes_the_sample(load, legacy):
    # In this vocabulary "USER" after "</s>" is two tokens without the "▁" (legacy=False) and "▁USER" one:
    # the original's -1 then miscounts every later round and it zeroes the sample. Offsets do not count.
    tokenizer = load("tiny", legacy)
    text = conversation_text(conversation_rounds(CONVERSATION, 8))
    _, original_labels = original_ids_and_labels(tokenizer, text, legacy)
    assert all(label == IGNORE_INDEX for label in original_labels) is (not legacy)
    input_ids, labels = tokenize_conversation(CONVERSATION, tokenizer, 8)
    replies = [CONVERSATION[1]["value"], CONVERSATION[3]["value"]]
    assert (input_ids.tolist(), labels.tolist()) == expected_by_offsets(tokenizer, text, replies)
    supervised = [t for t in labels.tolist() if t != IGNORE_INDEX]
    assert tokenizer.decode(supervised) == "the circle is red and moves left</s> a square, first up then down</s>"


def slow_tokenizer_ids(model_file, text: str, legacy: bool) -> list[int]:
    """The ids the original's slow LlamaTokenizer gave, straight from SentencePiece: the text is cut at
    `<image>` (-200) and `</s>` (EOS id 2); each piece is encoded with SentencePiece's dummy "▁" prefix,
    except, with legacy=False, a piece right after `</s>`."""
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model_file.read_bytes())
    prefixed = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
    proto.normalizer_spec.add_dummy_prefix = False
    bare = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
    ids = [prefixed.bos_id()]
    for i, chunk in enumerate(text.split("<image>")):
        ids += [FRAME_TOKEN_INDEX] if i else []
        for j, piece in enumerate(chunk.split("</s>")):
            ids += [prefixed.eos_id()] if j else []
            ids += (prefixed if legacy or j == 0 else bare).encode(piece) if piece else []
    return ids


@pytest.mark.parametrize("name", ["tiny", "glued_user"])
@pytest.mark.parametrize("legacy", [True, False])
def test_ids_equal_the_slow_sentencepiece_tokenizer_the_original_used(load, folders, name, legacy):
    text = original_text(SYSTEM_USER, [(message, reply) for _, message, reply in ROUNDS_3])
    input_ids, _ = tokenize_conversation(turns(ROUNDS_3), load(name, legacy), 8)
    assert input_ids.tolist() == slow_tokenizer_ids(folders[name] / "tokenizer.model", text, legacy)
