"""Prompt template, tokenisation with frame placeholders, and label masking (SPEC section 3).

Text of a conversation (Vicuna v1.1, as SPEC section 3 states it)::

    {system} USER: {msg_1} ASSISTANT: {reply_1}</s> USER: {msg_2} ASSISTANT: {reply_2}</s>

and a generation prompt ends with `USER: {msg} ASSISTANT:`. Both system texts keep the role names
USER / ASSISTANT; only the system sentence differs.

A `<video>` in a human message is removed and the message becomes `<image>` * num_frames + "\n" +
the rest: the placeholders are concatenated with no separator, then one newline. Messages are
stripped of surrounding whitespace first (stray spaces around a reply would otherwise tokenise
differently alone and in context). Tokenising splits the text on `<image>`, encodes each piece
without special tokens, puts FRAME_TOKEN_INDEX (-200) between pieces and a single BOS in front.

Labels are computed from separately tokenised pieces: the system text, each `USER: ... ASSISTANT:`
part (-100) and each `{reply}</s>` (supervised), joined at the single spaces of the template. The
concatenated pieces must equal the tokenisation of the whole text; when they do not (for example an
an empty reply), `ConversationFormatError` is raised
naming the sample, and the dataset counts and reports the skip. A sample is never silently masked.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from videopanda.constants import FRAME_PLACEHOLDER, FRAME_TOKEN_INDEX, IGNORE_INDEX, VIDEO_TOKEN

SYSTEM_USER = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
"""System text used in training."""

SYSTEM_HUMAN = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
"""System text of the original inference template."""

EOS_TEXT = "</s>"
_HUMAN_ROLES = {"human", "user"}
_ASSISTANT_ROLES = {"gpt", "assistant"}


class ConversationFormatError(ValueError):
    """A conversation that cannot be used for training; the message names the sample."""

    def __init__(self, sample_id, reason: str):
        self.sample_id = sample_id
        self.reason = reason
        super().__init__(f"sample {sample_id!r}: {reason}")


def frame_placeholders(num_frames: int) -> str:
    """`<image>` repeated num_frames times, no separator."""
    return FRAME_PLACEHOLDER * num_frames


def human_message(text: str, num_frames: int, with_video: bool) -> str:
    """A human message with `<video>` removed and, if with_video, the frame placeholders + "\\n" in front."""
    text = text.replace(VIDEO_TOKEN, "").strip()
    return f"{frame_placeholders(num_frames)}\n{text}" if with_video else text


def conversation_rounds(conversations, num_frames: int, has_video: bool | None = None,
                        sample_id=None) -> list[tuple[str, str]]:
    """Check a LLaVA-style turn list and return its (human message, reply) rounds, ready for the template.

    conversations: [{"from": "human"|"user", "value": str}, {"from": "gpt"|"assistant", "value": str}, ...],
    alternating, starting with a human turn and ending with a reply. has_video None: a video is shown
    iff some human turn holds `<video>`; True: the video goes to the first human turn holding `<video>`,
    or to the first human turn if none does; False: `<video>` is an error. At most one `<video>`; a
    literal `<image>` or `</s>` in a message is an error. Raises ConversationFormatError naming `sample_id`.
    """
    if not isinstance(conversations, Sequence) or isinstance(conversations, str) or not conversations:
        raise ConversationFormatError(sample_id, "'conversations' must be a non-empty list of turns")
    turns = []
    for i, turn in enumerate(conversations):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise ConversationFormatError(sample_id, f"turn {i} is not an object with a string 'value'")
        role = str(turn.get("from", "")).lower()
        expected = _HUMAN_ROLES if i % 2 == 0 else _ASSISTANT_ROLES
        if role not in expected:
            want = "human" if i % 2 == 0 else "gpt"
            raise ConversationFormatError(sample_id, f"turn {i} is from {turn.get('from')!r}, expected {want!r}")
        for literal in (FRAME_PLACEHOLDER, EOS_TEXT):
            if literal in turn["value"]:
                raise ConversationFormatError(sample_id, f"turn {i} holds a literal {literal}")
        turns.append(turn["value"])
    if len(turns) % 2:
        raise ConversationFormatError(sample_id, "the last turn is a human turn without a reply")
    count = sum(t.count(VIDEO_TOKEN) for t in turns)
    if count > 1:
        raise ConversationFormatError(sample_id, f"{count} {VIDEO_TOKEN} tokens; one video per sample")
    if count and VIDEO_TOKEN in "".join(turns[1::2]):
        raise ConversationFormatError(sample_id, f"{VIDEO_TOKEN} in an assistant turn")
    if has_video is False and count:
        raise ConversationFormatError(sample_id, f"{VIDEO_TOKEN} in a sample without a video")
    with_video = bool(count) if has_video is None else has_video
    video_turn = next((i for i in range(0, len(turns), 2) if VIDEO_TOKEN in turns[i]), 0)
    rounds = []
    for i in range(0, len(turns), 2):
        message = human_message(turns[i], num_frames, with_video and i == video_turn)
        rounds.append((message, turns[i + 1].strip()))
    return rounds


def conversation_text(rounds: Sequence[tuple[str, str | None]], system: str = SYSTEM_USER) -> str:
    """The template text; a last round whose reply is None ends with "ASSISTANT:" (a generation prompt)."""
    parts = [system] if system else []
    for message, reply in rounds:
        parts.append(f"USER: {message} ASSISTANT:")
        if reply is not None:
            parts.append(f"{reply}{EOS_TEXT}")
    return " ".join(parts)


def build_generation_prompt(question: str, num_frames: int, system: str = SYSTEM_USER) -> str:
    """`{system} USER: <image>*num_frames\\n{question} ASSISTANT:`; num_frames 0 gives a text-only prompt."""
    return conversation_text([(human_message(question, num_frames, num_frames > 0), None)], system)


def tokenize_prompt(prompt: str, tokenizer) -> torch.Tensor:
    """Prompt text -> int64 (S,) ids: BOS, then the text with -200 for each `<image>` placeholder."""
    return torch.tensor(_encode(prompt, tokenizer, bos=True), dtype=torch.long)


def tokenize_conversation(conversations, tokenizer, num_frames: int, system: str = SYSTEM_USER,
                          has_video: bool | None = None, sample_id=None) -> tuple[torch.Tensor, torch.Tensor]:
    """A LLaVA-style turn list -> (input_ids, labels), both int64 (S,).

    labels equal input_ids on every reply and its `</s>`, IGNORE_INDEX (-100) elsewhere (BOS, system,
    `USER: ... ASSISTANT:` parts, frame placeholders). Raises ConversationFormatError (naming
    sample_id) for a malformed conversation or when the per-round tokenisation disagrees with the
    tokenisation of the whole text.
    """
    rounds = conversation_rounds(conversations, num_frames, has_video, sample_id)
    pieces: list[tuple[str, bool]] = [(system, False)] if system else []
    for message, reply in rounds:
        pieces += [(f"USER: {message} ASSISTANT:", False), (f"{reply}{EOS_TEXT}", True)]
    input_ids: list[int] = []
    labels: list[int] = []
    for i, (text, supervised) in enumerate(pieces):
        ids = _encode(text, tokenizer, bos=i == 0)
        input_ids += ids
        labels += ids if supervised else [IGNORE_INDEX] * len(ids)
    full = _encode(conversation_text(rounds, system), tokenizer, bos=True)
    if full != input_ids:
        at = next((k for k, (a, b) in enumerate(zip(full, input_ids)) if a != b), min(len(full), len(input_ids)))
        raise ConversationFormatError(
            sample_id,
            f"per-round tokenisation disagrees with the whole text at token {at} "
            f"({len(input_ids)} vs {len(full)} tokens); labels cannot be placed",
        )
    if all(label == IGNORE_INDEX for label in labels):
        raise ConversationFormatError(sample_id, "no supervised tokens")
    return torch.tensor(input_ids, dtype=torch.long), torch.tensor(labels, dtype=torch.long)


def _encode(text: str, tokenizer, bos: bool) -> list[int]:
    chunks = text.split(FRAME_PLACEHOLDER)
    ids = [tokenizer.bos_token_id] if bos else []
    for i, chunk in enumerate(chunks):
        if i:
            ids.append(FRAME_TOKEN_INDEX)
        if chunk:
            ids += tokenizer(chunk, add_special_tokens=False).input_ids
    return ids
