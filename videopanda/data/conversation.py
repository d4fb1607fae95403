"""Prompt template, tokenisation with frame placeholders, and label masking (the original's Vicuna v1.1 format).

Text of a conversation (Vicuna v1.1, separators " " and "</s>")::

    {system} USER: {msg_1} ASSISTANT: {reply_1}</s>USER: {msg_2} ASSISTANT: {reply_2}</s>

The system text, `USER: {msg}` and `ASSISTANT: {reply}` are joined by single spaces; a reply ends with
`</s>` and the next round's `USER:` follows it with no space. A generation prompt ends with
`USER: {msg} ASSISTANT:`. Both system texts keep the role names USER / ASSISTANT; only the system
sentence differs.

A `<video>` in a human message is removed and the message becomes `<image>` * num_frames + "\n" +
the rest: the placeholders are concatenated with no separator, then one newline. Messages are
stripped of surrounding whitespace first; an empty reply, or an empty human message without the
video, is a `ConversationFormatError`.

Tokenising splits the text on `<image>`, encodes each piece without special tokens (so each piece
gets the tokenizer's own leading "▁"), puts FRAME_TOKEN_INDEX (-200) between pieces and a single BOS
in front: the ids the original's `tokenizer_image_token` gives. How the text after a `</s>` is
encoded is the tokenizer's business: with `legacy=True` the next `USER` gets a "▁" prefix, with
`legacy=False` (Vicuna v1.5's setting) it does not.

Labels come from that one tokenisation, by character offsets (a fast tokenizer's offset mapping): a
token is supervised iff its characters overlap ` {reply}</s>`, the span from the space after
`ASSISTANT:` to the end of the reply's `</s>`; everything else (BOS, system, every
`USER: ... ASSISTANT:` part, the placeholders) is IGNORE_INDEX (-100). The space before a reply is
supervised: in a SentencePiece vocabulary it is the "▁" that starts the reply's first token (or a
lone "▁" token), and the original supervises it too (it masks the tokens of `... ASSISTANT: ` minus
two: the BOS and the trailing "▁"). These are the original's labels for any number of rounds and
either `legacy` setting wherever the original's round-by-round token count agrees with the whole
text. Where it does not, the original zeroes the whole sample: with `legacy=False` it takes one token
off every round after the first, which is right only for a vocabulary where `USER` at the start of a
text is one token more than `USER` right after `</s>`; offsets need no such assumption. (A vocabulary
keeping whitespace at the end of pieces puts the space in ":▁"; that token is supervised, as in the
original.) Each reply's `</s>` must come out as the tokenizer's EOS token exactly; when it does not,
labels cannot be placed and `ConversationFormatError` is raised naming the sample (the dataset
counts and reports the skip). A sample is never silently masked.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from videopanda.constants import FRAME_PLACEHOLDER, FRAME_TOKEN_INDEX, IGNORE_INDEX, VIDEO_TOKEN

if TYPE_CHECKING:
    import torch

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
    literal `<image>` or `</s>` in a message, an empty reply, or an empty human message (without the
    video) is an error. Raises ConversationFormatError naming `sample_id`.
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
        reply = turns[i + 1].strip()
        for k, text in ((i, message), (i + 1, reply)):
            if not text:
                raise ConversationFormatError(sample_id, f"turn {k} is empty")
        rounds.append((message, reply))
    return rounds


def conversation_text(rounds: Sequence[tuple[str, str | None]], system: str = SYSTEM_USER) -> str:
    """The template text; a last round whose reply is None ends with "ASSISTANT:" (a generation prompt)."""
    return _template(rounds, system)[0]


def build_generation_prompt(question: str, num_frames: int, system: str = SYSTEM_USER) -> str:
    """`{system} USER: <image>*num_frames\\n{question} ASSISTANT:`; num_frames 0 gives a text-only prompt."""
    return conversation_text([(human_message(question, num_frames, num_frames > 0), None)], system)


def tokenize_prompt(prompt: str, tokenizer) -> torch.Tensor:
    """Prompt text -> int64 (S,) ids: BOS, then the text with -200 for each `<image>` placeholder."""
    import torch

    return torch.tensor(encode_text(prompt, tokenizer)[0], dtype=torch.long)


def tokenize_conversation(conversations, tokenizer, num_frames: int, system: str = SYSTEM_USER,
                          has_video: bool | None = None, sample_id=None,
                          placeholder_runs: Sequence[Sequence[int]] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A LLaVA-style turn list -> (input_ids, labels), both int64 (S,).

    input_ids: `tokenize_prompt` of the whole template text. labels equal input_ids on every token
    overlapping a ` {reply}</s>` span (the space before the reply included), IGNORE_INDEX (-100)
    elsewhere (BOS, system, `USER: ... ASSISTANT:` parts, frame placeholders). Needs a fast tokenizer
    (offset mapping), else TypeError. Raises ConversationFormatError (naming sample_id) for a malformed
    conversation or when a reply's `</s>` is not tokenised as exactly the EOS token.
    `placeholder_runs` (the processor's): per `<image>`, the ids that replace its single -200.
    """
    import torch

    rounds = conversation_rounds(conversations, num_frames, has_video, sample_id)
    text, spans = _template(rounds, system)
    input_ids, offsets = encode_text(text, tokenizer, placeholder_runs, with_offsets=True)
    labels = [IGNORE_INDEX] * len(input_ids)
    for n, (begin, end) in enumerate(spans):
        inside = [k for k, (s, e) in enumerate(offsets) if s < end and e > begin]
        eos = inside[-1] if inside else None
        if eos is None or input_ids[eos] != tokenizer.eos_token_id or offsets[eos] != (end - len(EOS_TEXT), end):
            raise ConversationFormatError(
                sample_id,
                f"the {EOS_TEXT} ending turn {2 * n + 1} is not tokenised as the EOS token "
                f"(id {tokenizer.eos_token_id}); labels cannot be placed",
            )
        for k in inside:
            labels[k] = input_ids[k]
    return torch.tensor(input_ids, dtype=torch.long), torch.tensor(labels, dtype=torch.long)


def _template(rounds: Sequence[tuple[str, str | None]], system: str) -> tuple[str, list[tuple[int, int]]]:
    """The template text and, per reply, the character span [begin, end) of ` {reply}</s>` in it."""
    text = f"{system} " if system else ""
    spans = []
    for i, (message, reply) in enumerate(rounds):
        text += f"USER: {message} ASSISTANT:"
        if reply is None:
            if i != len(rounds) - 1:
                raise ValueError(f"round {i} has no reply; only the last round may be a generation prompt")
            continue
        begin = len(text)
        text += f" {reply}{EOS_TEXT}"
        spans.append((begin, len(text)))
    return text, spans


def encode_text(text: str, tokenizer, placeholder_runs: Sequence[Sequence[int]] | None = None,
                with_offsets: bool = False) -> tuple[list[int], list[tuple[int, int]]]:
    """BOS, then each `<image>`-separated piece of text tokenised alone, FRAME_TOKEN_INDEX between pieces
    (or, with `placeholder_runs`, the k-th placeholder's run of ids: one run per `<image>`).

    Returns (ids, offsets): with_offsets, offsets[k] is token k's character span (start, end) in
    text ((0, 0) for the BOS, the placeholder's own span for each id standing for a placeholder);
    otherwise offsets is empty.
    """
    if placeholder_runs is not None and len(placeholder_runs) != text.count(FRAME_PLACEHOLDER):
        raise ValueError(f"{len(placeholder_runs)} placeholder runs for {text.count(FRAME_PLACEHOLDER)} "
                         f"{FRAME_PLACEHOLDER} placeholders")
    if with_offsets and not getattr(tokenizer, "is_fast", False):
        raise TypeError(f"labels need a fast tokenizer (offset mapping); got {type(tokenizer).__name__}")
    ids = [tokenizer.bos_token_id]
    offsets = [(0, 0)]
    start = 0
    for i, chunk in enumerate(text.split(FRAME_PLACEHOLDER)):
        if i:
            run = [FRAME_TOKEN_INDEX] if placeholder_runs is None else list(placeholder_runs[i - 1])
            ids += run
            offsets += [(start - len(FRAME_PLACEHOLDER), start)] * len(run)
        if chunk:
            encoded = tokenizer(chunk, add_special_tokens=False, return_offsets_mapping=with_offsets)
            ids += encoded.input_ids
            if with_offsets:
                offsets += [(start + s, start + e) for s, e in encoded.offset_mapping]
        start += len(chunk) + len(FRAME_PLACEHOLDER)
    return ids, offsets if with_offsets else []
