"""`videopanda chat`: a conversation about one video in the terminal, answers streamed as they are generated.

    videopanda chat --model FOLDER --video FILE [--max-new-tokens N] [--num-frames 8 | --fps F [--max-frames 32]]
                    [--device cpu|cuda] [--dtype auto|float32|bfloat16|float16] [--system user|human]

At the `you>` prompt: a question, `/video PATH` (another clip; the conversation starts over), `/reset`
(forget the conversation, keep the clip), `/quit` (or Ctrl-D). Ctrl-C while an answer streams stops it
(that round is forgotten); at the prompt it ends the chat.

`VideoConversation` is the one path the chat and the web demo (`videopanda.serve.demo`) share:

- The clip is decoded and sampled once, by the processor's video processor (`infer.with_sampling`: the
  original's 8 frames, `--num-frames N` or `--fps F`), and its frames are given to every round.
- History is the original's Vicuna v1.1 text (docs/DESIGN.md, "Choices where the paper is silent": Data),
  written by the processor's chat template: the video's frame placeholders only in the first user message,
  each earlier answer followed by `</s>`.
- Each round tokenises the whole conversation again and encodes the clip's frames again (the STAB runs
  every round; its time is small next to the LLM's), then generates with `infer.generation_settings`,
  the greedy settings of `infer` and `eval qa` (the new-token limit: `--max-new-tokens`, else the folder's
  generation_config.json).
- The visual part is timed on its own: `model.embed_inputs` (STAB + projector, the frames' tokens
  scattered into the embedded prompt) runs first, and `model.generate` continues from those embeddings
  (prefill + decoding). That is the computation `generate(**processor_inputs)` does in one call, so the
  answer is the same token for token; the two times are wall-clock (CUDA synchronised).
- Context guard (`infer.fit_context`, the one `infer` and `eval` use): a round whose prompt (history +
  question + visual tokens) leaves no room under the model's `max_position_embeddings` is refused with
  `ContextLengthError` before anything runs; otherwise the answer is capped to the room left.
"""
from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from videopanda.log import get_logger
from videopanda.serve.infer import (
    ContextLengthError,
    add_model_options,
    fit_context,
    generation_settings,
    sampling_arguments,
    with_sampling,
)
from videopanda.serve.model_folder import (
    InferError,
    MemoryBudgetError,
    ModelFolder,
    ModelFolderError,
    load_model,
    read_model_folder,
    torch_dtype,
)

logger = get_logger(__name__)

COMMANDS_HELP = "/video PATH switches clips, /reset clears the conversation, /quit ends"
PROMPT = "you> "
ANSWER_PREFIX = "panda> "


@dataclass(frozen=True)
class RoundTiming:
    """Wall-clock seconds of one round. visual: `embed_inputs` (STAB + projector + embedding the
    prompt); llm: `generate` from those embeddings (prefill of `prompt_tokens` + `new_tokens` decoding steps)."""

    visual_seconds: float
    llm_seconds: float
    prompt_tokens: int
    new_tokens: int
    capped: bool = False
    """The answer was cut to the room left in the context, below the max-new-tokens setting."""

    def summary(self) -> str:
        rate = self.new_tokens / self.llm_seconds if self.llm_seconds > 0 else 0.0
        text = (f"STAB {1000 * self.visual_seconds:.0f} ms | LLM {1000 * self.llm_seconds:.0f} ms "
                f"({self.prompt_tokens} prompt tokens, {self.new_tokens} new, {rate:.1f} tokens/s)")
        return text + (" | cut at the context length" if self.capped else "")


@dataclass
class VideoConversation:
    """A multi-turn conversation about one clip with a loaded model and its `VideoPandaProcessor`.

    `frames`: uint8 (n, H, W, 3) sampled by the processor's video processor; `turns`: (question, answer) pairs
    so far; `max_new_tokens` None: the model's generation config."""

    model: object
    processor: object
    system: str = "user"
    max_new_tokens: int | None = None
    frames: object = None
    video: Path | None = None
    turns: list[tuple[str, str]] = field(default_factory=list)
    last_timing: RoundTiming | None = None

    @property
    def frame_count(self) -> int:
        """The frames the model gets for the clip: its sampled frames, padded to the sampling's count."""
        if self.frames is None:
            raise ValueError("no video yet: set one with set_video")
        return self.processor.video_processor.load(self.frames)[1]

    def sampling_text(self) -> str:
        """How clips are sampled, in words: "8 frames a clip" or "1 frame a second (4 to 32 frames)"."""
        sampling = self.processor.video_processor.sampling()
        if "num_frames" in sampling:
            return f"{sampling['num_frames']} frames a clip"
        return (f"{sampling['fps']:g} frame{'' if sampling['fps'] == 1 else 's'} a second "
                f"({sampling['min_frames']} to {sampling['max_frames']} frames)")

    def clip_text(self) -> str:
        """The clip's sampled frames in words: "3 frames of 48x64, padded to 8"."""
        count, (n, height, width) = self.frame_count, self.frames.shape[:3]
        return f"{n} frames of {width}x{height}" + (f", padded to {count}" if n < count else "")

    @property
    def max_context(self) -> int:
        return int(self.model.config.max_position_embeddings)

    def set_video(self, path: str | Path):
        """Decode and sample `path` with the processor's video processor (VideoReadError naming it when it cannot
        be used), make it the clip and start the conversation over. -> uint8 frames (n, H, W, 3)."""
        frames = self.processor.video_processor.load(path)[0]
        self.frames, self.video, self.turns, self.last_timing = frames, Path(path), [], None
        return frames

    def reset(self) -> None:
        """Forget the conversation; keep the clip."""
        self.turns, self.last_timing = [], None

    def messages(self, question: str) -> list[dict]:
        """The chat-template messages of the history plus `question`; the video goes with the first user message."""
        messages = []
        for i, (asked, answered) in enumerate(self.turns):
            messages.append(_user_message(asked, with_video=i == 0))
            messages.append({"role": "assistant", "content": [{"type": "text", "text": answered}]})
        messages.append(_user_message(question, with_video=not self.turns))
        return messages

    def prompt(self, question: str) -> str:
        """The Vicuna v1.1 generation prompt of the conversation so far and `question`."""
        return self.processor.apply_chat_template(self.messages(question), add_generation_prompt=True,
                                                  system=self.system)

    def inputs(self, question: str):
        """The processor's inputs for the next round (input_ids (1, S) with the frames' placeholder runs,
        attention_mask (1, S), pixel_values_videos (1, C, T, 4, H, W)) on the model's device and dtype."""
        if self.frames is None:
            raise ValueError("no video yet: set one with set_video")
        inputs = self.processor(text=self.prompt(question), videos=self.frames).to(self.model.device)
        inputs["pixel_values_videos"] = inputs["pixel_values_videos"].to(self.model.dtype)
        return inputs

    def _round(self, question: str) -> tuple[dict, dict, int]:
        """(the processor's inputs, the `generate` settings, the new-token limit asked for) of the next round;
        the settings' limit is capped to the room left in the context (ContextLengthError when none is)."""
        inputs = self.inputs(question)
        settings = generation_settings(self.processor.tokenizer, self.max_new_tokens, self.model.generation_config)
        wanted = settings["max_new_tokens"]
        try:
            settings["max_new_tokens"] = fit_context(int(inputs["input_ids"].shape[1]), self.max_context, wanted,
                                                     subject="this question makes the conversation")
        except ContextLengthError as err:
            raise ContextLengthError(f"{err}: reset the conversation, or ask something shorter") from None
        return inputs, settings, wanted

    def _generate_in_background(self, embeds, attention_mask, settings: dict, streamer,
                                stop: threading.Event) -> tuple[threading.Thread, dict]:
        """Start `generate` from `embeds` on a thread feeding `streamer` until `stop` is set -> (the thread,
        the dict it fills with "output" and "seconds", or "error")."""
        import torch
        from transformers import StoppingCriteriaList

        result: dict = {}

        def run() -> None:
            try:
                begin = time.perf_counter()
                with torch.inference_mode():
                    result["output"] = self.model.generate(
                        inputs_embeds=embeds, attention_mask=attention_mask, streamer=streamer,
                        stopping_criteria=StoppingCriteriaList([_stop_when_set(stop)]), **settings)
                _synchronize(self.model.device)
                result["seconds"] = time.perf_counter() - begin
            except BaseException as err:  # noqa: BLE001 - handed to the consuming thread
                result["error"] = err
                streamer.end()

        worker = threading.Thread(target=run, name="videopanda-generate", daemon=True)
        worker.start()
        return worker, result

    def stream(self, question: str) -> Iterator[str]:
        """Generate the answer to `question`, yielding text as it comes. When the generator runs to its end the
        round joins the history and `last_timing` is set; closed early, the generation stops and the round is
        forgotten. Raises ContextLengthError (before any work) when the prompt leaves no room to answer."""
        import torch
        from transformers import TextIteratorStreamer

        question = question.strip()
        if not question:
            raise ValueError("an empty question")
        inputs, settings, wanted = self._round(question)
        start = time.perf_counter()
        with torch.inference_mode():
            embeds, _ = self.model.embed_inputs(inputs["input_ids"], inputs["pixel_values_videos"])
        _synchronize(self.model.device)
        visual_seconds = time.perf_counter() - start
        tokenizer = self.processor.tokenizer
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        stop = threading.Event()
        worker, result = self._generate_in_background(embeds, inputs["attention_mask"], settings, streamer, stop)
        finished = False
        try:
            for piece in streamer:
                if piece:
                    yield piece
            finished = True
        finally:
            if not finished:
                stop.set()
            worker.join()
        if "error" in result:
            raise result["error"]
        new_ids = result["output"][0]
        self.turns.append((question, tokenizer.decode(new_ids, skip_special_tokens=True).strip()))
        limit, new_tokens = settings["max_new_tokens"], int(new_ids.shape[0])
        self.last_timing = RoundTiming(visual_seconds, result["seconds"], int(inputs["input_ids"].shape[1]),
                                       new_tokens, capped=limit < wanted and new_tokens >= limit)
        logger.debug("round %d: %s", len(self.turns), self.last_timing.summary())


def _user_message(text: str, with_video: bool) -> dict:
    content = [{"type": "video"}] if with_video else []
    return {"role": "user", "content": content + [{"type": "text", "text": text}]}


def _synchronize(device) -> None:
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        torch.cuda.synchronize(device)


def _stop_when_set(event: threading.Event):
    """A transformers `StoppingCriteria` that ends generation once `event` is set."""
    import torch
    from transformers import StoppingCriteria

    class StopWhenSet(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), event.is_set(), dtype=torch.bool, device=input_ids.device)

    return StopWhenSet()


def load_conversation(args: argparse.Namespace, folder: ModelFolder | None = None) -> VideoConversation:
    """The model of `args` (see `add_model_options`; `folder`: its folder as `read_model_folder` described it,
    None to read it here) loaded, in an empty `VideoConversation`.
    Raises InferError (ModelFolderError, MemoryBudgetError) with a one-line message."""
    import torch

    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise InferError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise InferError("--device cuda was asked for but no CUDA device is available")
    model, processor = load_model(folder or args.model, device, torch_dtype(args.dtype))
    processor = with_sampling(processor, **sampling_arguments(args))
    limit = generation_settings(processor.tokenizer, args.max_new_tokens, model.generation_config)["max_new_tokens"]
    return VideoConversation(model, processor, system=args.system, max_new_tokens=limit)


def _parser() -> argparse.ArgumentParser:
    from videopanda.argparsing import CommandParser

    parser = CommandParser(prog="videopanda chat", description="Talk about a video in the terminal.",
                           epilog=f"In the chat: {COMMANDS_HELP}.")
    add_model_options(parser)
    parser.add_argument("--video", required=True, help="video file to talk about")
    return parser


def _error(message: str) -> None:
    print(f"videopanda chat: error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)


def _answer(conversation: VideoConversation, question: str) -> None:
    """Print the streamed answer and the round's timing; a refused or interrupted round prints why."""
    print(ANSWER_PREFIX, end="", flush=True)
    started = False
    try:
        for piece in conversation.stream(question):
            if not started:
                piece, started = piece.lstrip(), True
            print(piece, end="", flush=True)
    except ContextLengthError as err:
        print(flush=True)
        _error(f"{err} (/reset)")
        return
    except KeyboardInterrupt:
        print("\n(stopped; this round is forgotten)", flush=True)
        return
    print(flush=True)
    print(f"[{conversation.last_timing.summary()}]", flush=True)


def _switch_video(conversation: VideoConversation, path: str) -> None:
    from videopanda.data.video import VideoReadError

    if not path:
        _error("/video needs a path")
        return
    try:
        conversation.set_video(Path(path).expanduser())
    except VideoReadError as err:
        _error(f"{err} (still talking about {conversation.video})")
        return
    print(f"(video {conversation.video}: {conversation.clip_text()}; new conversation)", flush=True)


def chat_loop(conversation: VideoConversation) -> None:
    """Read questions and commands until /quit, end of input or Ctrl-C at the prompt."""
    while True:
        try:
            line = input(PROMPT).strip()
        except (EOFError, KeyboardInterrupt):
            print(flush=True)
            return
        if not line:
            continue
        command, _, rest = line.partition(" ")
        if command in ("/quit", "/exit"):
            return
        if command == "/reset":
            conversation.reset()
            print(f"(conversation cleared; still {conversation.video})", flush=True)
        elif command == "/video":
            _switch_video(conversation, rest.strip())
        elif command.startswith("/"):
            _error(f"unknown command {command}: {COMMANDS_HELP}")
        else:
            _answer(conversation, line)


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    from videopanda.data.video import VideoReadError, check_video_file

    try:
        folder = read_model_folder(args.model)
        check_video_file(args.video)
        conversation = load_conversation(args, folder)
        conversation.set_video(args.video)
    except (InferError, VideoReadError) as err:
        _error(err)
        return 2 if isinstance(err, (ModelFolderError, MemoryBudgetError)) else 1
    print(f"videopanda chat: {args.model} on {conversation.model.device}, {conversation.sampling_text()}; video "
          f"{args.video} ({conversation.clip_text()}). Ask a question; {COMMANDS_HELP}.", flush=True)
    chat_loop(conversation)
    return 0
