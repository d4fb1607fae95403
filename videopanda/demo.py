"""`videopanda demo`: a web page (Gradio, the optional `demo` extra) to talk with a model about a video.

    videopanda demo --model FOLDER [--examples FILE_OR_FOLDER ...] [--host 127.0.0.1] [--port 7860]
                    [--max-seconds 600] [--max-upload 200MB] [model options as in `videopanda chat`]

The page: upload a clip (or pick one of `--examples`), see the frames the model is given (after the
any-resolution step: each frame resized and pasted on the mean-colour canvas; the padding is hatched,
and a clip with fewer frames than the model takes is padded with all-zero frames, shown fully hatched),
ask questions in a multi-turn chat whose answers stream in, and read how long the STAB and the LLM took.

Everything the model sees goes through `videopanda.chat.VideoConversation`, the chat command's path:
the processor, the Vicuna v1.1 history, `infer.generation_settings`. The times shown are those of
`VideoConversation.stream` (`RoundTiming`): wall-clock of `model.embed_inputs` (STAB + projector,
embedding the prompt) and of `model.generate` from those embeddings (prefill + decoding), per answer.
Decoding and resizing the clip are timed apart, when it is loaded, and counted in neither.

A file that cannot be used (not a video, undecodable, longer than `--max-seconds`) gets a message in the
page and the server keeps serving. Sessions keep their own clip and conversation; the model is shared and
answers one question at a time.
"""
from __future__ import annotations

import argparse
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from videopanda.chat import ContextLengthError, VideoConversation, load_conversation
from videopanda.infer import add_model_options
from videopanda.log import get_logger

if TYPE_CHECKING:
    import numpy as np

logger = get_logger(__name__)

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".gif", ".m4v")
STRIP_MIN_SIDE = 224
"""Frames smaller than this are enlarged (nearest neighbour, so the model's pixels stay visible) for the page."""
HATCH_PERIOD = 8
EMPTY_ANSWER = "(no answer: the model ended at once, or wrote only whitespace)"
TIMING_NOTE = ("Times are wall-clock per answer: **STAB** = `model.embed_inputs` (the STAB and projector on "
               "the frames, plus embedding the prompt); **LLM** = `model.generate` continuing from those embeddings "
               "(prefill of the prompt + one step per new token). Decoding and resizing the clip happen once, "
               "when it is loaded, and are in neither.")


@dataclass
class Session:
    """One browser session's clip and conversation (the model itself is shared)."""

    video: Path
    frames: object
    turns: list[tuple[str, str]] = field(default_factory=list)


class BadVideo(Exception):
    """An upload the demo cannot use; the message is shown in the page."""


def video_seconds(path: str | Path) -> float | None:
    """Duration of a video file from its container (PyAV), None when the container does not say or cannot
    be opened (decoding then reports why)."""
    import av

    try:
        with av.open(str(path)) as container:
            if container.duration:
                return container.duration / 1_000_000
            streams = container.streams.video
            if streams and streams[0].duration and streams[0].time_base:
                return float(streams[0].duration * streams[0].time_base)
    except (av.FFmpegError, OSError, ValueError):
        return None
    return None


def frame_strip(pixel_values, num_real: int) -> list[tuple[np.ndarray, str]]:
    """pixel_values (C, T, 4, S, S) of one video from the processor -> per frame (uint8 (S', S', 3), caption).

    Channels 0-2 are un-normalised back to RGB; where the mask channel is 0 (any-resolution padding, or a
    whole padding frame) diagonal stripes are drawn over the canvas colour. Frames under STRIP_MIN_SIDE
    pixels are enlarged by an integer factor, nearest neighbour."""
    import torch

    from videopanda.constants import PIXEL_MEAN, PIXEL_STD

    frames = pixel_values.flatten(0, 1).float().cpu()                        # (N, 4, S, S)
    mean = torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(PIXEL_STD).view(1, 3, 1, 1)
    rgb = (frames[:, :3] * std + mean).mul(255).round().clamp(0, 255)         # (N, 3, S, S)
    side = rgb.shape[-1]
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    stripes = ((rows + cols) // (HATCH_PERIOD // 2)) % 2 == 0                # (S, S)
    padding = (frames[:, 3] < 0.5) & stripes                                  # (N, S, S)
    rgb = torch.where(padding.unsqueeze(1), rgb * 0.55, rgb)
    images = rgb.to(torch.uint8).permute(0, 2, 3, 1).numpy()                  # (N, S, S, 3)
    scale = max(1, -(-STRIP_MIN_SIDE // side))
    if scale > 1:
        images = images.repeat(scale, axis=1).repeat(scale, axis=2)
    captions = [f"frame {i + 1}" if i < num_real else f"frame {i + 1}: padding" for i in range(len(images))]
    return list(zip(images, captions))


class Demo:
    """The page's handlers around one loaded model (`conversation` holds the model, processor and settings)."""

    def __init__(self, conversation: VideoConversation, max_seconds: float):
        self.base = conversation
        self.max_seconds = max_seconds
        self.lock = threading.Lock()

    def conversation(self, session: Session | None) -> VideoConversation:
        """A `VideoConversation` on the shared model holding `session`'s clip and turns."""
        base = self.base
        if session is None:
            return VideoConversation(base.model, base.processor, base.system, base.max_new_tokens)
        return VideoConversation(base.model, base.processor, base.system, base.max_new_tokens,
                                 frames=session.frames, video=session.video, turns=list(session.turns))

    def open_video(self, path: str | Path) -> tuple[Session, list, str]:
        """Decode and sample an upload -> (session, frame strip, status). Raises BadVideo."""
        from videopanda.data.video import VideoReadError

        name = Path(path).name
        seconds = video_seconds(path)
        if seconds is not None and seconds > self.max_seconds:
            raise BadVideo(f"`{name}` is {seconds:.0f} s long; this demo takes clips up to {self.max_seconds:.0f} s.")
        conversation = self.conversation(None)
        start = time.perf_counter()
        try:
            frames = conversation.set_video(path)
        except VideoReadError as err:
            raise BadVideo(f"`{name}` cannot be used as a video: {err.reason}.") from err
        visual = conversation.processor.video_processor(frames)["pixel_values_videos"][0]
        load_ms = 1000 * (time.perf_counter() - start)
        strip = frame_strip(visual, frames.shape[0])
        height, width = frames.shape[1:3]
        length = f"{seconds:.1f} s, " if seconds is not None else ""
        status = (f"**{name}** ({length}{width}x{height}): {frames.shape[0]} frames sampled"
                  + (f", {conversation.num_frames - frames.shape[0]} padding frames added" if
                     frames.shape[0] < conversation.num_frames else "")
                  + f"; decoded and resized in {load_ms:.0f} ms. Ask a question below.")
        return Session(Path(path), frames), strip, status

    def load(self, path):
        """Video component changed -> (session, strip, status, chat history, timing)."""
        if not path:
            return None, [], "Upload a video or pick an example.", [], ""
        try:
            session, strip, status = self.open_video(path)
        except BadVideo as err:
            logger.info("rejected upload %s: %s", path, err)
            return None, [], f"⚠️ {err}", [], ""
        return session, strip, status, [], ""

    def ask(self, question: str, session: Session | None, history: list):
        """Stream the answer -> yields (question box, chat history, session, status, timing)."""
        history = list(history or [])
        question = (question or "").strip()
        if session is None:
            yield question, history, session, "⚠️ Upload a video first (or pick an example).", ""
            return
        if not question:
            yield "", history, session, "⚠️ Type a question first.", ""
            return
        conversation = self.conversation(session)
        history += [{"role": "user", "content": question}, {"role": "assistant", "content": ""}]
        answer = ""
        with self.lock:
            try:
                for piece in conversation.stream(question):
                    answer += piece
                    history[-1] = {"role": "assistant", "content": answer.lstrip()}
                    yield "", history, session, "Answering…", ""
            except ContextLengthError as err:
                yield question, history[:-2], session, f"⚠️ {err}", ""
                return
        session = Session(session.video, session.frames, conversation.turns)
        history[-1] = {"role": "assistant", "content": conversation.turns[-1][1] or EMPTY_ANSWER}
        timing = conversation.last_timing
        rate = timing.new_tokens / timing.llm_seconds if timing.llm_seconds > 0 else 0.0
        table = (f"| STAB (visual) | LLM (prefill + decoding) |\n|---|---|\n"
                 f"| {1000 * timing.visual_seconds:.0f} ms | {1000 * timing.llm_seconds:.0f} ms |\n\n"
                 f"{timing.prompt_tokens} prompt tokens, {timing.new_tokens} new tokens ({rate:.1f}/s) on "
                 f"{conversation.model.device}."
                 + (" The answer was cut at the model's context length." if timing.capped else "")
                 + f"\n\n{TIMING_NOTE}")
        yield "", history, session, f"Round {len(conversation.turns)} done, on **{session.video.name}**.", table

    def reset(self, session: Session | None):
        """-> (session without turns, empty history, status, timing)."""
        if session is None:
            return None, [], "Upload a video or pick an example.", ""
        return Session(session.video, session.frames), [], "Conversation cleared; same video.", ""


def example_videos(items: list[str]) -> list[Path]:
    """Video files named in `items`: files as given, folders for their video files (sorted)."""
    found: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"{path}: example video not found")
    return found


def build_app(demo: Demo, examples: list[Path], model_name: str):
    """The Gradio Blocks of the page."""
    import gradio as gr

    base = demo.base
    with gr.Blocks(title="Video-Panda demo", analytics_enabled=False) as app:
        gr.Markdown(f"## Video-Panda: talk about a video\nModel `{model_name}` on {base.model.device}, "
                    f"{base.num_frames} frames per clip, greedy answers of up to {base.max_new_tokens} tokens "
                    f"(context {base.max_context} tokens).")
        session = gr.State(None)
        with gr.Row():
            with gr.Column(scale=2):
                video = gr.Video(label="Video", sources=["upload"], elem_id="video", height=260)
                if examples:
                    gr.Examples([[str(p)] for p in examples], inputs=[video], label="Or pick a clip",
                                elem_id="examples")
            with gr.Column(scale=3):
                status = gr.Markdown("Upload a video or pick an example.", elem_id="status")
                strip = gr.Gallery(label=f"The {base.num_frames} frames the model sees (hatched: padding)",
                                   columns=base.num_frames // 2, height="auto", object_fit="contain",
                                   allow_preview=True, elem_id="frames")
        chatbot = gr.Chatbot(label="Conversation", elem_id="chat", height=320)
        with gr.Row():
            question = gr.Textbox(placeholder="Ask about the video and press Enter", show_label=False,
                                  elem_id="question", scale=5, lines=1, max_lines=1)
            send = gr.Button("Ask", variant="primary", elem_id="ask", scale=1)
            clear = gr.Button("Reset conversation", elem_id="reset", scale=1)
        timing = gr.Markdown("", elem_id="timing")

        video.change(demo.load, inputs=[video], outputs=[session, strip, status, chatbot, timing],
                     concurrency_limit=4)
        answer_outputs = [question, chatbot, session, status, timing]
        for trigger in (question.submit, send.click):
            trigger(demo.ask, inputs=[question, session, chatbot], outputs=answer_outputs,
                    concurrency_id="model", concurrency_limit=1)
        clear.click(demo.reset, inputs=[session], outputs=[session, chatbot, status, timing])
    return app


def _parser() -> argparse.ArgumentParser:
    from videopanda.cli import CommandParser

    parser = CommandParser(prog="videopanda demo",
                           description="Web demo: upload a video, see its frames, chat about it.")
    add_model_options(parser)
    parser.add_argument("--examples", nargs="*", default=[],
                        help="video files, or folders of them, offered as clips to pick")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--max-seconds", type=float, default=600.0, help="longest clip accepted, seconds")
    parser.add_argument("--max-upload", default="200MB", help="largest upload accepted")
    return parser


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    from videopanda.infer import InferError, MemoryBudgetError, ModelFolderError, check_model_folder

    try:
        import gradio as gr
    except ImportError:
        print("videopanda demo: error: Gradio is not installed: pip install 'videopanda[demo]'", file=sys.stderr)
        return 1
    try:
        examples = example_videos(args.examples)
        check_model_folder(args.model)
        conversation = load_conversation(args)
    except (InferError, FileNotFoundError) as err:
        print(f"videopanda demo: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2 if isinstance(err, (ModelFolderError, MemoryBudgetError)) else 1
    app = build_app(Demo(conversation, args.max_seconds), examples, args.model)
    system_fonts = ["ui-sans-serif", "system-ui", "sans-serif"]
    theme = gr.themes.Default(font=system_fonts, font_mono=["ui-monospace", "monospace"])
    app.queue().launch(server_name=args.host, server_port=args.port, max_file_size=args.max_upload,
                       theme=theme, ssr_mode=False, show_error=True, footer_links=[],
                       allowed_paths=[str(p.resolve().parent) for p in examples])
    return 0
