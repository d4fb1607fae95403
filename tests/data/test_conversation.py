import pytest
import torch
from transformers import AutoTokenizer

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


def test_system_texts():
    assert SYSTEM_USER == USER_SYSTEM and SYSTEM_HUMAN == HUMAN_SYSTEM


def test_template_text_moves_the_video_to_the_front():
    text = conversation_text(conversation_rounds(CONVERSATION, 8))
    assert text == (
        f"{USER_SYSTEM} USER: {IMAGES}\nwhat colour is the circle? ASSISTANT: the circle is red and moves left</s> "
        "USER: which shape turns blue then ASSISTANT: a square, first up then down</s>"
    )


def test_generation_prompt_for_both_systems():
    assert build_generation_prompt("what moves?", 8) == f"{USER_SYSTEM} USER: {IMAGES}\nwhat moves? ASSISTANT:"
    assert build_generation_prompt("what moves?", 8, system=SYSTEM_HUMAN) == f"{HUMAN_SYSTEM} USER: {IMAGES}\nwhat moves? ASSISTANT:"
    assert build_generation_prompt("<video>\nwhat moves?", 4) == f"{USER_SYSTEM} USER: {'<image>' * 4}\nwhat moves? ASSISTANT:"
    assert build_generation_prompt("hello", 0) == f"{USER_SYSTEM} USER: hello ASSISTANT:"


def expected_by_offsets(tokenizer, text: str, replies: list[str]) -> tuple[list[int], list[int]]:
    """Independent reference: tokenise the whole text once, mark the tokens whose character spans
    overlap a `{reply}</s>` span (offset mapping), everything else -100."""
    head, tail = text.split(IMAGES) if IMAGES in text else ("", text)
    head_ids = tokenizer(head, add_special_tokens=False).input_ids if head else []
    encoded = tokenizer(tail, add_special_tokens=False, return_offsets_mapping=True)
    spans, cursor = [], 0
    for reply in replies:
        start = tail.index(f"ASSISTANT: {reply}</s>", cursor) + len("ASSISTANT: ")
        cursor = start + len(reply) + len("</s>")
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


def test_tokenize_prompt_matches_the_conversation_prefix(tokenizer):
    prompt = build_generation_prompt("what colour is the circle?", 8)
    prompt_ids = tokenize_prompt(prompt, tokenizer).tolist()
    conversation_ids, _ = tokenize_conversation(CONVERSATION[:2], tokenizer, 8)
    assert conversation_ids.tolist()[: len(prompt_ids)] == prompt_ids
    assert prompt_ids.count(FRAME_TOKEN_INDEX) == 8


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
        ([], None, "non-empty list"),
        (None, None, "non-empty list"),
    ],
)
def test_malformed_conversations_name_the_sample(tokenizer, conversation, has_video, message):
    with pytest.raises(ConversationFormatError, match=message) as info:
        tokenize_conversation(conversation, tokenizer, 8, has_video=has_video, sample_id="vid_0042")
    assert "vid_0042" in str(info.value)


def test_inconsistent_tokenisation_is_an_error_not_a_silent_mask(tokenizer):
    # An empty reply: "ASSISTANT: </s>" tokenises with a lone "▁" in context but not as a piece.
    conversation = [{"from": "human", "value": "what moves?"}, {"from": "gpt", "value": ""}]
    with pytest.raises(ConversationFormatError, match="'vid_7'.*disagrees"):
        tokenize_conversation(conversation, tokenizer, 8, sample_id="vid_7")
