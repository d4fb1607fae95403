"""`videopanda chat` in a pseudo-terminal with a tiny released-layout model, and the conversation it keeps.

The tiny model is untrained: its answers are checked against what `model.generate(**processor_inputs)`
(the `eval qa` path) gives greedily for the same conversation, not for their content."""
import json
import os
import pty
import re
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers.media import make_frames, write_text_file, write_video

from videopanda.serve.chat import VideoConversation
from videopanda.data.conversation import SYSTEM_USER
from videopanda.serve.infer import generation_settings
from videopanda.serve.model_folder import load_model

NEW_TOKENS = 6
REPO = Path(__file__).resolve().parents[2]
ROUND = re.compile(r"panda> (.*?)\r\n\[STAB (\d+) ms \| LLM (\d+) ms \((\d+) prompt tokens, (\d+) new")


@pytest.fixture(scope="module")
def folder(streaming_model_folder) -> Path:
    return streaming_model_folder


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> tuple[Path, Path]:
    """A wide clip of 24 frames and a portrait clip of 3 frames (padded to 8 by the processor)."""
    folder = tmp_path_factory.mktemp("clips")
    wide = write_video(folder / "wide.mp4", make_frames(24, height=48, width=64), fps=8)
    short = write_video(folder / "short.mp4", make_frames(3, height=64, width=48, seed=5), fps=10)
    return wide, short


@pytest.fixture(scope="module")
def loaded(folder):
    return load_model(folder, "cpu", torch.float32)


def generate_answer(model, processor, prompt: str, frames, **sampling) -> str:
    """The reference: one `generate` call on the processor's inputs with the shared settings (`frames`: uint8
    frames, or a path the processor samples with `sampling`)."""
    inputs = processor(text=prompt, videos=frames, **sampling)
    length = inputs["input_ids"].shape[1]
    output = model.generate(**inputs, **generation_settings(processor.tokenizer, NEW_TOKENS))
    return processor.tokenizer.decode(output[0, length:], skip_special_tokens=True).strip()


def reference_answers(model, processor, script: list[tuple[Path, str]]) -> list[str]:
    """Greedy answers to a script of (clip, question) rounds; a new clip starts a new conversation. Each
    prompt is written out here in the original's Vicuna v1.1 form (docs/DESIGN.md, "Choices where the paper
    is silent": Data), not taken from the chat template."""
    from videopanda.data.video import read_video

    answers, history, current = [], "", None
    for clip, question in script:
        if clip != current:
            frames, current = read_video(clip, num_frames=8), clip
            history = f"{SYSTEM_USER} USER: {'<image>' * 8}\n{question} ASSISTANT:"
        else:
            history += f"USER: {question} ASSISTANT:"
        answers.append(generate_answer(model, processor, history, frames))
        history += f" {answers[-1]}</s>"
    return answers


class Terminal:
    """A command on a pseudo-terminal: what it prints is read as bytes until a marker shows up."""

    def __init__(self, argv: list[str]):
        self.master, slave = pty.openpty()
        env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", TERM="dumb")
        self.process = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, cwd=REPO, env=env,
                                        close_fds=True)
        os.close(slave)
        self.pending = b""
        self.transcript = b""

    def read_until(self, marker: str, timeout: float = 120.0) -> str:
        """Text printed up to `marker` (consumed); fails with the transcript when it does not come in time."""
        wanted = marker.encode()
        deadline = time.monotonic() + timeout
        while wanted not in self.pending:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.master], [], [], max(0.0, left))
            chunk = b""
            if ready:
                try:
                    chunk = os.read(self.master, 4096)
                except OSError:  # the other side closed
                    chunk = b""
            if not chunk:
                pytest.fail(f"no {marker!r} from the chat in time; it printed:\n{self.transcript.decode(errors='replace')}")
            self.pending += chunk
            self.transcript += chunk
        text, self.pending = self.pending.split(wanted, 1)
        return text.decode(errors="replace")

    def send(self, line: str) -> None:
        os.write(self.master, line.encode() + b"\n")

    def close(self, timeout: float = 30.0) -> int:
        try:
            return self.process.wait(timeout=timeout)
        finally:
            os.close(self.master)


def start_chat(folder: Path, clip: Path, *options: str) -> Terminal:
    """The chat on `clip`, once it is ready for a question; `options`: more command-line options."""
    terminal = Terminal([sys.executable, "-m", "videopanda", "chat", "--model", str(folder), "--video", str(clip),
                         "--max-new-tokens", str(NEW_TOKENS), "--device", "cpu", "--dtype", "float32", *options])
    terminal.read_until("you> ")
    return terminal


def ask(terminal: Terminal, question: str) -> re.Match:
    terminal.send(question)
    printed = terminal.read_until("you> ")
    match = ROUND.search(printed)
    assert match, printed
    return match


QUESTIONS = ("what colour is the circle?", "which way does the square move?", "how many shapes are there?")


def test_two_turns_and_a_clip_switch_in_a_terminal(folder, clips, loaded):
    wide, short = clips
    terminal = start_chat(folder, wide)
    first = ask(terminal, QUESTIONS[0])
    second = ask(terminal, QUESTIONS[1])
    terminal.send(f"/video {short}")
    switched = terminal.read_until("you> ")
    assert f"(video {short}: 3 frames of 48x64, padded to 8; new conversation)" in switched
    third = ask(terminal, QUESTIONS[2])
    terminal.send("/quit")
    assert terminal.close() == 0

    want = reference_answers(*loaded, [(wide, QUESTIONS[0]), (wide, QUESTIONS[1]), (short, QUESTIONS[2])])
    assert all(want), want  # this seed's tiny model says something visible to each question
    assert [m.group(1).strip() for m in (first, second, third)] == want
    # The second round's prompt holds the first round (so it is longer by more than the question); after the
    # switch the conversation starts over on the other clip.
    prompt_tokens = [int(m.group(4)) for m in (first, second, third)]
    assert prompt_tokens[1] > prompt_tokens[0] + len(QUESTIONS[1].split())
    assert all(int(m.group(5)) <= NEW_TOKENS for m in (first, second, third))


def test_commands_and_bad_input_keep_the_session(folder, clips, tmp_path):
    wide, _ = clips
    not_a_video = write_text_file(tmp_path / "notes.mp4")
    terminal = start_chat(folder, wide)
    terminal.send(f"/video {not_a_video}")
    printed = terminal.read_until("you> ")
    assert "videopanda chat: error:" in printed and str(not_a_video) in printed and f"still talking about {wide}" in printed
    terminal.send("/frobnicate")
    assert "unknown command /frobnicate" in terminal.read_until("you> ")
    first = ask(terminal, QUESTIONS[0])
    terminal.send("/reset")
    assert "(conversation cleared" in terminal.read_until("you> ")
    again = ask(terminal, QUESTIONS[0])
    assert again.group(1) == first.group(1) and again.group(4) == first.group(4)  # same prompt as round one
    os.write(terminal.master, b"\x04")  # Ctrl-D ends the chat like /quit
    assert terminal.close() == 0


def test_a_conversation_that_outgrows_the_context_is_refused_before_it_runs(folder, clips, tmp_path, loaded):
    wide, _ = clips
    model, processor = loaded
    conversation = VideoConversation(model, processor, max_new_tokens=NEW_TOKENS)
    conversation.set_video(wide)
    first_prompt = conversation.inputs(QUESTIONS[0])["input_ids"].shape[1]
    small = tmp_path / "small_context"
    shutil.copytree(folder, small)
    config = json.loads((small / "config.json").read_text())
    config["max_position_embeddings"] = first_prompt + 2  # room for a 2-token first answer, not for a second round
    (small / "config.json").write_text(json.dumps(config))

    terminal = start_chat(small, wide)
    first = ask(terminal, QUESTIONS[0])
    assert int(first.group(5)) <= 2 and "cut at the context length" in first.group(0) + terminal.transcript.decode()
    terminal.send(QUESTIONS[1])
    refused = terminal.read_until("you> ")
    assert "videopanda chat: error: this question makes the conversation" in refused
    assert f"over the model's context of {first_prompt + 2} tokens: reset the conversation" in refused
    terminal.send("/reset")
    terminal.read_until("you> ")
    assert ask(terminal, QUESTIONS[0]).group(1) == first.group(1)  # the session goes on after the refusal
    terminal.send("/quit")
    assert terminal.close() == 0


def test_history_is_vicuna_v1_1_with_the_video_in_the_first_turn_only(loaded, clips):
    model, processor = loaded
    wide, short = clips
    conversation = VideoConversation(model, processor, max_new_tokens=NEW_TOKENS)
    conversation.set_video(wide)
    pieces = list(conversation.stream(QUESTIONS[0]))
    first_answer = conversation.turns[0][1]
    assert "".join(pieces).strip() == first_answer
    assert len(pieces) > 1, pieces  # handed out as it is generated, not in one piece at the end
    assert conversation.prompt(QUESTIONS[1]) == (
        f"{SYSTEM_USER} USER: <video>\n{QUESTIONS[0]} ASSISTANT: {first_answer}</s>"
        f"USER: {QUESTIONS[1]} ASSISTANT:")
    streamed = "".join(conversation.stream(QUESTIONS[1])).strip()
    assert streamed == reference_answers(model, processor, [(wide, QUESTIONS[0]), (wide, QUESTIONS[1])])[1]
    timing = conversation.last_timing
    assert timing.visual_seconds > 0 and timing.llm_seconds > 0 and 1 <= timing.new_tokens <= NEW_TOKENS
    conversation.set_video(short)
    assert conversation.turns == [] and conversation.prompt("x").count("<video>") == 1


def test_closing_the_stream_early_stops_generation_and_forgets_the_round(loaded, clips):
    model, processor = loaded
    conversation = VideoConversation(model, processor, max_new_tokens=200)
    conversation.set_video(clips[0])
    stream = conversation.stream(QUESTIONS[0])
    next(stream)
    stream.close()
    assert conversation.turns == [] and conversation.last_timing is None


def test_a_folder_that_is_not_a_model_or_a_bad_first_video_is_one_line(folder, clips, tmp_path, capsys):
    from videopanda.serve.chat import main

    assert main(["--model", str(tmp_path / "absent"), "--video", str(clips[0])]) == 2
    assert main(["--model", str(folder), "--video", str(tmp_path / "absent.mp4"), "--device", "cpu"]) == 1
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert captured.out == "" and len(lines) == 2 and all(line.startswith("videopanda chat: error:") for line in lines)
    assert str(tmp_path / "absent") in lines[0] and "absent.mp4: file not found" in lines[1]


def test_a_chat_sampled_by_frame_rate_answers_on_the_frames_the_video_processor_samples(folder, clips, loaded):
    """--fps 4: the 3 s wide clip gives 12 frames (3 chunks), the 0.3 s portrait clip its 3 frames padded to one
    chunk; the answers are those of `generate` on the processor's inputs for the path sampled at that rate."""
    model, processor = loaded
    wide, short = clips
    terminal = start_chat(folder, wide, "--fps", "4")
    header = terminal.transcript.decode(errors="replace")
    assert "4 frames a second (4 to 32 frames)" in header and f"video {wide} (12 frames of 64x48)" in header, header
    first = ask(terminal, QUESTIONS[0])
    terminal.send(f"/video {short}")
    assert f"(video {short}: 3 frames of 48x64, padded to 4; new conversation)" in terminal.read_until("you> ")
    second = ask(terminal, QUESTIONS[1])
    terminal.send("/quit")
    assert terminal.close() == 0

    want = [generate_answer(model, processor, f"{SYSTEM_USER} USER: <video>\n{question} ASSISTANT:", str(clip), fps=4.0)
            for clip, question in ((wide, QUESTIONS[0]), (short, QUESTIONS[1]))]
    assert [m.group(1).strip() for m in (first, second)] == want
    eight = start_chat(folder, wide)
    at_eight = ask(eight, QUESTIONS[0])
    eight.send("/quit")
    assert eight.close() == 0
    assert int(first.group(4)) > int(at_eight.group(4)), "12 frames take more prompt tokens than 8"


@pytest.mark.parametrize("options, code, message", [
    (["--num-frames", "6"], 1, "multiple of frames_per_chunk"),
    (["--fps", "0"], 1, "fps must be a positive number of frames per second, got 0.0"),
    (["--fps", "1", "--num-frames", "8"], 2, "argument --num-frames: not allowed with argument --fps"),
])
def test_a_bad_sampling_is_one_line(folder, clips, capsys, options, code, message):
    from videopanda.serve.chat import main

    try:
        result = main(["--model", str(folder), "--video", str(clips[0]), "--device", "cpu", *options])
    except SystemExit as exit:  # a usage error: argparse's usage, then the one error line
        result = exit.code
    captured = capsys.readouterr()
    assert result == code and captured.out == ""
    last = captured.err.strip().splitlines()[-1]
    assert last.startswith("videopanda chat: error:") and message in last, captured.err
    if code == 1:
        assert len(captured.err.strip().splitlines()) == 1
