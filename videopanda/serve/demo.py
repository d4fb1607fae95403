"""`videopanda demo`: a web page (Gradio, the optional `demo` extra) to talk with a model about a video.

    videopanda demo --model FOLDER [--examples FILE_OR_FOLDER ...] [--host 127.0.0.1] [--port 7860]
                    [--max-seconds 600] [--max-pixels 8847360] [--max-upload 200MB]
                    [model options as in `videopanda chat`]

The page: upload a clip (or pick one of `--examples`), see the frames the model is given (sampled as the
model options say: the original's 8, `--num-frames N` or `--fps F`; after the any-resolution step: each frame
resized and pasted on the mean-colour canvas; the padding is hatched, and a clip with fewer frames than the
sampling's count is padded with all-zero frames, shown fully hatched; one row per STAB chunk),
ask questions in a multi-turn chat whose answers stream in, and read how long the STAB and the LLM took.

Everything the model sees goes through `videopanda.serve.chat.VideoConversation`, the chat command's path:
the processor, the Vicuna v1.1 history, `infer.generation_settings`. The times shown are those of
`VideoConversation.stream` (`RoundTiming`): wall-clock of `model.embed_inputs` (STAB + projector,
embedding the prompt) and of `model.generate` from those embeddings (prefill + decoding), per answer.
Decoding and resizing the clip are timed apart, when it is loaded, and counted in neither.

A file that cannot be used (not a video, undecodable, longer than `--max-seconds`, frames of more than
`--max-pixels`) gets a one-line message naming it by its file name, and the server keeps serving. The frame
size is checked from the stream header, before anything is decoded; a container that gives no duration (a
raw .h264 stream) is measured by decoding it, stopping as soon as `--max-seconds` is passed.

The player shows the clip itself when the browser can play it (H.264, VP8/VP9 or AV1 in mp4 / webm, 4:2:0),
and otherwise a copy re-encoded to H.264 yuv420p mp4 (the synthetic clips are MPEG-4 Part 2, which browsers
do not play); the model always gets the original file. The examples are shown with a first-frame thumbnail
(the same playable copy) and their file names.

Sessions keep their own clip and conversation; the model is shared and answers one question at a time.
"""
from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

from videopanda.serve.chat import ContextLengthError, VideoConversation, load_conversation
from videopanda.serve.infer import add_model_options
from videopanda.log import get_logger

if TYPE_CHECKING:
    import numpy as np

    from videopanda.data.video import VideoHeader

logger = get_logger(__name__)

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".gif", ".m4v")
MAX_PIXELS = 4096 * 2160
"""Default `--max-pixels`: DCI 4K frames, the largest common camera format."""
BROWSER_CODECS = {".mp4": ("h264", "vp9", "av1"), ".m4v": ("h264", "vp9", "av1"), ".webm": ("vp8", "vp9", "av1")}
"""File suffix -> codecs Chromium and Firefox play in it (4:2:0 only); anything else is re-encoded for the player."""
BROWSER_PIX_FMTS = ("yuv420p", "yuvj420p")
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


def browser_playable(path: str | Path, header: VideoHeader) -> bool:
    """Whether browsers play `path` as it is (its suffix, codec and pixel format; see BROWSER_CODECS)."""
    return header.codec in BROWSER_CODECS.get(Path(path).suffix.lower(), ()) and header.pix_fmt in BROWSER_PIX_FMTS


def playable_copy(path: str | Path, header: VideoHeader, folder: Path) -> Path:
    """Re-encode `path` for the page's player -> folder/<new subfolder>/<stem>.mp4, H.264 yuv420p (sides
    rounded down to even), the frames' own timestamps kept (at millisecond precision; frames without any
    are spaced at the header's rate). Raises VideoReadError when nothing can be decoded."""
    import av

    from videopanda.data.video import UNKNOWN_RATE_FPS, VideoReadError, decoder_reason

    target = Path(tempfile.mkdtemp(dir=folder)) / f"{Path(path).stem}.mp4"
    millisecond = Fraction(1, 1000)
    written = 0
    try:
        with av.open(str(path)) as source, av.open(str(target), mode="w",
                                                   options={"movflags": "+faststart"}) as sink:
            stream = source.streams.video[0]
            rate = Fraction(header.fps or UNKNOWN_RATE_FPS).limit_denominator(1000)
            width, height = stream.codec_context.width // 2 * 2, stream.codec_context.height // 2 * 2
            out = sink.add_stream("libx264", rate=rate)
            out.width, out.height, out.pix_fmt = max(2, width), max(2, height), "yuv420p"
            out.codec_context.time_base = millisecond
            out.options = {"crf": "18", "preset": "veryfast"}
            last = -1
            for index, frame in enumerate(source.decode(stream)):
                seconds = frame.time if frame.time is not None else index / float(rate)
                picture = frame.reformat(width=out.width, height=out.height, format="yuv420p")
                picture.pts, picture.time_base = max(last + 1, round(seconds * 1000)), millisecond
                last = picture.pts
                sink.mux(out.encode(picture))
                written += 1
            sink.mux(out.encode())
    except (av.FFmpegError, OSError, ValueError) as err:
        raise VideoReadError(path, f"cannot re-encode it for the player: {decoder_reason(err, Path(path))}") from None
    if not written:
        raise VideoReadError(path, "no decodable frames")
    return target


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

    def __init__(self, conversation: VideoConversation, max_seconds: float, max_pixels: int = MAX_PIXELS,
                 player_folder: Path | None = None):
        """`player_folder` receives the re-encoded copies the player shows (the system temporary folder
        when None)."""
        self.base = conversation
        self.max_seconds = max_seconds
        self.max_pixels = max_pixels
        self.player_folder = Path(player_folder or tempfile.gettempdir())
        self.lock = threading.Lock()
        self.examples: dict[str, tuple[Path, Path]] = {}
        """Example name -> (original file, the file the player shows)."""

    def conversation(self, session: Session | None) -> VideoConversation:
        """A `VideoConversation` on the shared model holding `session`'s clip and turns."""
        base = self.base
        if session is None:
            return VideoConversation(base.model, base.processor, base.system, base.max_new_tokens)
        return VideoConversation(base.model, base.processor, base.system, base.max_new_tokens,
                                 frames=session.frames, video=session.video, turns=list(session.turns))

    def check_video(self, path: str | Path, name: str) -> VideoHeader:
        """The limits, before the clip is decoded for the model -> its header, with `seconds` filled in by
        decoding (up to just past --max-seconds) when the container gives none. Raises BadVideo."""
        from dataclasses import replace

        from videopanda.data.video import VideoReadError, decoded_seconds, probe_video

        try:
            header = probe_video(path)
            if header.pixels > self.max_pixels:
                raise BadVideo(f"`{name}` has {header.width}x{header.height} frames ({header.pixels / 1e6:.3g} "
                               f"megapixels); this demo takes frames up to {self.max_pixels / 1e6:.3g} megapixels.")
            if header.seconds is None:
                header = replace(header, seconds=decoded_seconds(path, limit=self.max_seconds))
                if header.seconds > self.max_seconds:
                    raise BadVideo(f"`{name}` is over {self.max_seconds:g} s long (found by decoding: the file records "
                                   f"no duration); this demo takes clips up to {self.max_seconds:g} s.")
        except VideoReadError as err:
            raise BadVideo(f"`{name}` cannot be used as a video: {err.reason}.") from None
        if header.seconds > self.max_seconds:
            raise BadVideo(f"`{name}` is {header.seconds:.1f} s long; this demo takes clips up to "
                           f"{self.max_seconds:g} s.")
        return header

    def open_video(self, path: str | Path, name: str | None = None) -> tuple[Session, list, str, Path]:
        """Check, decode and sample a clip named `name` (its file name by default) -> (session, frame strip,
        status, the file the player shows). Raises BadVideo."""
        from videopanda.data.video import VideoReadError

        name = name or Path(path).name
        header = self.check_video(path, name)
        conversation = self.conversation(None)
        try:
            start = time.perf_counter()
            frames = conversation.set_video(path)
            visual = conversation.processor.video_processor(frames)["pixel_values_videos"][0]
            load_ms = 1000 * (time.perf_counter() - start)
            shown = Path(path) if browser_playable(path, header) else playable_copy(path, header, self.player_folder)
        except VideoReadError as err:
            raise BadVideo(f"`{name}` cannot be used as a video: {err.reason}.") from None
        strip = frame_strip(visual, frames.shape[0])
        height, width = frames.shape[1:3]
        padding = len(strip) - frames.shape[0]
        status = (f"**{name}** ({header.seconds:.1f} s, {width}x{height}): {frames.shape[0]} frames sampled"
                  + (f", {padding} padding frames added" if padding else "")
                  + f"; decoded and resized in {load_ms:.0f} ms. Ask a question below.")
        return Session(Path(path), frames), strip, status, shown

    def load(self, path):
        """An upload (None: the upload removed) -> (upload, player, session, strip, status, chat history, timing);
        a rejected upload is removed from the page."""
        if not path:
            return None, None, None, [], "Upload a video or pick an example.", [], ""
        try:
            session, strip, status, shown = self.open_video(path)
        except BadVideo as err:
            logger.info("rejected upload %s: %s", path, err)
            return None, None, None, [], f"⚠️ {err}", [], ""
        return path, str(shown), session, strip, status, [], ""

    def add_example(self, path: Path) -> Path:
        """Offer `path` as an example, under its file name -> the file its thumbnail and the player show.
        Raises BadVideo when it breaks the limits or cannot be decoded."""
        from videopanda.data.video import VideoReadError

        header = self.check_video(path, path.name)
        try:
            shown = path if browser_playable(path, header) else playable_copy(path, header, self.player_folder)
        except VideoReadError as err:
            raise BadVideo(f"`{path.name}` cannot be used as a video: {err.reason}.") from None
        self.examples[path.name] = (path, shown)
        return shown

    def pick(self, shown, name: str):
        """An example clicked (the player's copy, its name) -> as `load`, the model given the original file."""
        if name not in self.examples:
            return None, None, None, [], f"⚠️ `{name}` is not one of this page's examples.", [], ""
        original, _ = self.examples[name]
        try:
            session, strip, status, _ = self.open_video(original)
        except BadVideo as err:
            return None, None, None, [], f"⚠️ {err}", [], ""
        return None, shown, session, strip, status, [], ""

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


def build_app(demo: Demo, model_name: str):
    """The Gradio Blocks of the page, offering `demo.examples`."""
    import gradio as gr

    base = demo.base
    with gr.Blocks(title="Video-Panda demo", analytics_enabled=False) as app:
        gr.Markdown(f"## Video-Panda: talk about a video\nModel `{model_name}` on {base.model.device}, "
                    f"{base.sampling_text()}, greedy answers of up to {base.max_new_tokens} tokens "
                    f"(context {base.max_context} tokens).")
        session = gr.State(None)
        status = gr.Markdown("Upload a video or pick an example.", elem_id="status", render=False)
        strip = gr.Gallery(label="The frames the model sees (hatched: padding)",
                           columns=base.processor.video_processor.frames_per_chunk, height="auto", object_fit="contain",
                           allow_preview=True, elem_id="frames", render=False)
        chatbot = gr.Chatbot(label="Conversation", elem_id="chat", height=320, render=False)
        timing = gr.Markdown("", elem_id="timing", render=False)
        with gr.Row():
            with gr.Column(scale=2):
                # The player never receives an upload itself: the browser would try to play a codec it cannot
                # (and say so in an error toast) before the handler could swap in a playable copy.
                video = gr.Video(label="Video", interactive=False, elem_id="video", height=260)
                upload = gr.File(label="Upload a video", elem_id="upload", height=120)
                clip_outputs = [upload, video, session, strip, status, chatbot, timing]
                if demo.examples:
                    example_name = gr.Textbox(label="Clip", visible=False)
                    gr.Examples([[str(shown), name] for name, (_, shown) in demo.examples.items()],
                                inputs=[video, example_name], outputs=clip_outputs, fn=demo.pick,
                                run_on_click=True, cache_examples=False, label="Or pick a clip",
                                elem_id="examples")
            with gr.Column(scale=3):
                status.render()
                strip.render()
        chatbot.render()
        with gr.Row():
            question = gr.Textbox(placeholder="Ask about the video and press Enter", show_label=False,
                                  elem_id="question", scale=5, lines=1, max_lines=1)
            send = gr.Button("Ask", variant="primary", elem_id="ask", scale=1)
            clear = gr.Button("Reset conversation", elem_id="reset", scale=1)
        timing.render()

        for trigger in (upload.upload, upload.clear):
            trigger(demo.load, inputs=[upload], outputs=clip_outputs, concurrency_limit=4)
        answer_outputs = [question, chatbot, session, status, timing]
        for trigger in (question.submit, send.click):
            trigger(demo.ask, inputs=[question, session, chatbot], outputs=answer_outputs,
                    concurrency_id="model", concurrency_limit=1)
        clear.click(demo.reset, inputs=[session], outputs=[session, chatbot, status, timing])
    return app


def _parser() -> argparse.ArgumentParser:
    from videopanda.argparsing import CommandParser

    parser = CommandParser(prog="videopanda demo",
                           description="Web demo: upload a video, see its frames, chat about it.")
    add_model_options(parser)
    parser.add_argument("--examples", nargs="*", default=[],
                        help="video files, or folders of them, offered as clips to pick")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--max-seconds", type=float, default=600.0, help="longest clip accepted, seconds")
    parser.add_argument("--max-pixels", type=int, default=MAX_PIXELS,
                        help="largest frame accepted, width x height in pixels (4096x2160 by default), "
                             "read from the stream header before decoding")
    parser.add_argument("--max-upload", default="200MB", help="largest upload accepted")
    return parser


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    for option in ("max_seconds", "max_pixels"):
        if not getattr(args, option) > 0:
            _parser().error(f"--{option.replace('_', '-')} must be positive, got {getattr(args, option):g}")
    from videopanda.serve.model_folder import InferError, MemoryBudgetError, ModelFolderError, read_model_folder

    try:
        import gradio as gr
    except ImportError:
        print("videopanda demo: error: Gradio is not installed: pip install 'videopanda[demo]'", file=sys.stderr)
        return 1
    try:
        examples = example_videos(args.examples)
        conversation = load_conversation(args, read_model_folder(args.model))
    except (InferError, FileNotFoundError) as err:
        print(f"videopanda demo: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2 if isinstance(err, (ModelFolderError, MemoryBudgetError)) else 1
    with tempfile.TemporaryDirectory(prefix="videopanda-demo-") as player_folder:
        demo = Demo(conversation, args.max_seconds, args.max_pixels, Path(player_folder))
        for path in examples:
            try:
                demo.add_example(path)
            except BadVideo as err:
                print(f"videopanda demo: error: example {path}: {err}", file=sys.stderr)
                return 1
        app = build_app(demo, args.model)
        system_fonts = ["ui-sans-serif", "system-ui", "sans-serif"]
        theme = gr.themes.Default(font=system_fonts, font_mono=["ui-monospace", "monospace"])
        # A service manager stops the demo with SIGTERM: end it as Ctrl+C does, at any point of the launch, so
        # the server is closed and the folder of playable copies removed on the way out.
        signal.signal(signal.SIGTERM, _interrupt)
        try:
            app.queue().launch(server_name=args.host, server_port=args.port, max_file_size=args.max_upload,
                               theme=theme, ssr_mode=False, show_error=True, footer_links=[],
                               allowed_paths=[player_folder, *{str(p.resolve().parent) for p in examples}])
        except KeyboardInterrupt:
            app.close()
    return 0
