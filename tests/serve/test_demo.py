"""`videopanda demo` served on 127.0.0.1 and used through headless Chromium (Selenium): upload a clip, see the
frame strip and the clip playing, ask two questions, get a message for bad uploads (not a video, too long, a
raw stream too long for its lack of a duration, frames too large) while the server keeps serving.

The clips are MPEG-4 Part 2, as the synthetic data's are, which browsers do not play: the player and the example
thumbnails show the demo's H.264 copies.

The browser is Debian's `chromium` with its `chromedriver` (scripts/setup.sh installs both as root). Without
them the test is skipped, except in CI (CI=true), where it fails. Answers of the untrained tiny model are
compared with `model.generate` on the same conversation, not for their content."""
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from helpers.media import make_frames, write_text_file, write_video

from videopanda.data.conversation import SYSTEM_USER
from videopanda.data.video import probe_video, read_video
from videopanda.serve.infer import generation_settings
from videopanda.serve.model_folder import load_model

NEW_TOKENS = 6
MAX_SECONDS = 4
QUESTIONS = ("what colour is the circle?", "which way does the square move?")
REPO = Path(__file__).resolve().parents[2]
BROWSER, DRIVER = "chromium", "chromedriver"


def _browser_or_skip() -> tuple[str, str]:
    pytest.importorskip("gradio", reason="the demo needs the `demo` extra (gradio)")
    pytest.importorskip("selenium", reason="the browser test needs selenium (the `test` extra)")
    browser, driver = shutil.which(BROWSER), shutil.which(DRIVER)
    if browser and driver:
        return browser, driver
    reason = (f"no {BROWSER} / {DRIVER} on PATH: run scripts/setup.sh as root (apt-get install chromium "
              "chromium-driver)")
    if os.environ.get("CI"):
        pytest.fail(reason + "; in CI the browser test must run")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def folder(streaming_model_folder) -> Path:
    return streaming_model_folder


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("uploads")
    return {
        "clip": write_video(folder / "clip.mp4", make_frames(24, height=48, width=64), fps=8, codec="mpeg4"),  # 3 s
        "long": write_video(folder / "long.mp4", make_frames(80, height=48, width=64), fps=8),        # 10 s
        "raw_long": write_video(folder / "long.h264", make_frames(80, height=48, width=64), fps=8),    # 10 s, no duration
        "raw_short": write_video(folder / "short.h264", make_frames(24, height=48, width=64), fps=8),  # 3 s, no duration
        "huge": write_video(folder / "huge.mp4", make_frames(1, height=4096, width=4096), fps=1),      # 16.8 megapixels
        "not_a_video": write_text_file(folder / "notes.mp4"),
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve(folder: Path, examples: list[Path], log_path: Path, **env) -> tuple[str, subprocess.Popen]:
    """Start `videopanda demo` on a free port and wait until it answers; -> (URL, process)."""
    port = _free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", GRADIO_ANALYTICS_ENABLED="False",
               **env)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "videopanda", "demo", "--model", str(folder), "--host", "127.0.0.1",
             "--port", str(port), "--max-new-tokens", str(NEW_TOKENS), "--device", "cpu", "--dtype", "float32",
             "--max-seconds", str(MAX_SECONDS), "--examples", *map(str, examples)],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 180
    while True:
        if process.poll() is not None:
            pytest.fail(f"the demo exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return url, process
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            process.terminate()
            pytest.fail(f"the demo did not answer on {url} within 180 s:\n{log_path.read_text()}")
        time.sleep(1)


def _stop(process: subprocess.Popen) -> int:
    """SIGTERM, as a service manager stops it; -> its exit code."""
    process.terminate()
    try:
        return process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


@pytest.fixture(scope="module")
def server(folder, media, tmp_path_factory):
    """The demo in its own process, offering the good clip as an example; -> (URL, process, log file)."""
    _browser_or_skip()
    log_path = tmp_path_factory.mktemp("server") / "demo.log"
    url, process = _serve(folder, [media["clip"]], log_path)
    yield url, process, log_path
    _stop(process)


@pytest.fixture
def browser(server):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = _browser_or_skip()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1400,1300"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.get(server[0])
    yield driver
    driver.quit()


def wait_for(driver, condition, what: str, server, timeout: float = 120.0):
    """condition(driver) until truthy; on timeout, fail naming `what`, with the page's status and the server log."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.25).until(condition)
    except TimeoutException:
        status = [e.text for e in driver.find_elements("css selector", "#status")]
        pytest.fail(f"timed out waiting for {what}; status: {status}; server log:\n{server[2].read_text()[-3000:]}")


def upload(driver, server, path: Path) -> None:
    """Hand `path` to the upload component's file input, once the page has rendered it."""
    inputs = wait_for(driver, lambda d: d.find_elements("css selector", "#upload input[type=file]"), "the page", server)
    inputs[0].send_keys(str(path))


def player_state(driver) -> dict | None:
    """The player's <video>: readyState (2+ = a frame decoded and shown), its MediaError code, its source."""
    return driver.execute_script("const v = document.querySelector('#video video');"
                                 "return v && {ready: v.readyState, error: v.error && v.error.code, src: v.currentSrc};")


def error_toasts(driver) -> list[str]:
    return [e.text for e in driver.find_elements("css selector", "[data-testid=toast-body]")]


def status_text(driver) -> str:
    return driver.find_element("css selector", "#status").text


def bot_messages(driver) -> list[str]:
    return [e.text.strip() for e in driver.find_elements("css selector", "#chat [data-testid=bot]")]


def ask(driver, server, question: str, rounds_before: int, press_enter: bool) -> str:
    """Type a question, send it, wait for the round to finish (the timing table appears) -> the answer shown."""
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element("css selector", "#question input, #question textarea")
    box.send_keys(question)
    if press_enter:
        box.send_keys(Keys.ENTER)
    else:
        driver.find_element("css selector", "#ask").click()
    wait_for(driver, lambda d: f"Round {rounds_before + 1} done" in status_text(d)
             and "ms" in d.find_element("css selector", "#timing").text, f"the answer to {question!r}", server)
    messages = bot_messages(driver)
    assert len(messages) == rounds_before + 1, messages
    return messages[-1]


def reference_answers(folder: Path, clip: Path) -> list[str]:
    """Greedy answers to QUESTIONS about `clip`, one `generate` call per round on the processor's inputs, the
    Vicuna v1.1 prompts written out here (docs/DESIGN.md, "Choices where the paper is silent": Data)."""
    model, processor = load_model(folder, "cpu", torch.float32)
    frames = read_video(clip, num_frames=8)
    prompt, answers = f"{SYSTEM_USER} USER: {'<image>' * 8}\n{QUESTIONS[0]} ASSISTANT:", []
    for i, question in enumerate(QUESTIONS):
        if i:
            prompt += f" {answers[-1]}</s>USER: {question} ASSISTANT:"
        inputs = processor(text=prompt, videos=frames)
        output = model.generate(**inputs, **generation_settings(processor.tokenizer, NEW_TOKENS))
        answers.append(processor.tokenizer.decode(output[0, inputs["input_ids"].shape[1]:],
                                                  skip_special_tokens=True).strip())
    return answers


def test_upload_see_the_frames_and_ask_two_questions(browser, server, media, folder, tmp_path):
    upload(browser, server, media["clip"])
    wait_for(browser, lambda d: len(d.find_elements("css selector", "#frames img")) == 8, "the frame strip", server)
    captions = [e.text for e in browser.find_elements("css selector", "#frames .caption-label")]
    assert captions == [f"frame {i}" for i in range(1, 9)]
    assert "clip.mp4" in status_text(browser) and "8 frames sampled" in status_text(browser)
    played = wait_for(browser, lambda d: (player_state(d) or {}).get("ready", 0) >= 2 and player_state(d),
                      "the player to show the clip", server)
    assert played["error"] is None and played["src"].endswith("/clip.mp4") and error_toasts(browser) == []

    first = ask(browser, server, QUESTIONS[0], rounds_before=0, press_enter=True)
    second = ask(browser, server, QUESTIONS[1], rounds_before=1, press_enter=False)
    timing = browser.find_element("css selector", "#timing").text
    assert "STAB" in timing and "LLM" in timing and "prompt tokens" in timing
    browser.save_screenshot(str(tmp_path / "demo.png"))
    assert (tmp_path / "demo.png").stat().st_size > 10_000

    want = reference_answers(folder, media["clip"])
    assert all(want), want  # this seed's tiny model says something visible to both questions
    assert [first, second] == want
    user_messages = [e.text.strip() for e in browser.find_elements("css selector", "#chat [data-testid=user]")]
    assert user_messages == list(QUESTIONS)


def test_bad_uploads_get_a_message_and_the_server_keeps_serving(browser, server, media, tmp_path):
    upload(browser, server, media["not_a_video"])
    wait_for(browser, lambda d: "cannot be used as a video" in status_text(d), "the message for a text file", server)
    assert "notes.mp4" in status_text(browser) and "/" not in status_text(browser)  # the file name, not the server's path
    assert browser.find_elements("css selector", "#frames img") == []

    browser.refresh()
    upload(browser, server, media["long"])
    wait_for(browser, lambda d: "long" in status_text(d) and f"up to {MAX_SECONDS} s" in status_text(d),
             "the message for a clip that is too long", server)

    for key, message in (("raw_long", f"over {MAX_SECONDS} s long"), ("huge", "4096x4096 frames")):
        browser.refresh()
        upload(browser, server, media[key])
        wait_for(browser, lambda d: message in status_text(d), f"the message for {media[key].name}", server)
        assert media[key].name in status_text(browser) and "/" not in status_text(browser)
        assert browser.find_elements("css selector", "#frames img") == []

    browser.refresh()
    thumbnails = wait_for(browser, lambda d: [v for v in d.find_elements("css selector", "#examples video")
                                              if d.execute_script("return arguments[0].readyState", v) >= 2],
                          "the examples' thumbnails", server)
    assert len(thumbnails) == 1 and "clip.mp4" in browser.find_element("css selector", "#examples").text
    browser.find_element("css selector", "#examples tbody tr").click()
    wait_for(browser, lambda d: len(d.find_elements("css selector", "#frames img")) == 8, "the frame strip", server)
    assert "clip.mp4" in status_text(browser)
    wait_for(browser, lambda d: (player_state(d) or {}).get("ready", 0) >= 2, "the player to show the example", server)
    assert error_toasts(browser) == []
    assert ask(browser, server, QUESTIONS[0], rounds_before=0, press_enter=True)
    assert server[1].poll() is None
    browser.save_screenshot(str(tmp_path / "after_bad_uploads.png"))


def test_frame_strip_hatches_the_padding_and_the_padding_frames(tmp_path):
    """No browser: the strip of a 3-frame portrait clip at 112 px (as the quickstart's model sees it)."""
    import numpy as np

    from videopanda.constants import PAD_COLOR
    from videopanda.data.processor import VideoPandaVideoProcessor
    from videopanda.serve.demo import frame_strip

    clip = write_video(tmp_path / "short.mp4", make_frames(3, height=64, width=48, seed=2), fps=10)
    frames = read_video(clip, num_frames=8)
    pixel_values = VideoPandaVideoProcessor(image_size=112, teacher_image_size=56)(frames)["pixel_values_videos"][0]
    strip = frame_strip(pixel_values, frames.shape[0])
    assert [caption for _, caption in strip] == ["frame 1", "frame 2", "frame 3"] + [
        f"frame {i}: padding" for i in range(4, 9)]
    scale = 2  # 112 px frames are enlarged to 224 for the page
    mask = pixel_values.flatten(0, 1)[:, 3].numpy().repeat(scale, axis=1).repeat(scale, axis=2) > 0.5
    canvas = np.array(PAD_COLOR)
    hatched = np.round(canvas * 0.55)
    for index, (image, _) in enumerate(strip):
        assert image.shape == (224, 224, 3) and image.dtype == np.uint8
        padding = image[~mask[index]].astype(int)
        near = lambda colour: (np.abs(padding - colour) <= 1).all(axis=1)  # noqa: E731
        assert padding.size and (near(canvas) | near(hatched)).all() and near(canvas).any() and near(hatched).any()
        if index < 3:  # 48x64 portrait: 3 of 4 patch columns hold the picture, the padding is on the right
            assert mask[index][:, :168].all() and not mask[index][:, 168:].any()
        else:
            assert not mask[index].any()


def test_a_question_past_the_context_is_a_message_and_the_chat_goes_on(folder, media, tmp_path):
    """No browser: the page's handlers on a copy of the model whose context holds one short round only."""
    import json

    from videopanda.serve.chat import VideoConversation
    from videopanda.serve.demo import Demo

    model, processor = load_model(folder, "cpu", torch.float32)
    probe = VideoConversation(model, processor)
    probe.set_video(media["clip"])
    first_prompt = probe.inputs(QUESTIONS[0])["input_ids"].shape[1]
    small = tmp_path / "small_context"
    shutil.copytree(folder, small)
    config = json.loads((small / "config.json").read_text())
    config["max_position_embeddings"] = first_prompt + 2
    (small / "config.json").write_text(json.dumps(config))
    model, processor = load_model(small, "cpu", torch.float32)
    demo = Demo(VideoConversation(model, processor, max_new_tokens=NEW_TOKENS), max_seconds=MAX_SECONDS)

    _, _, session, strip, status, history, _ = demo.load(str(media["clip"]))
    assert session is not None and len(strip) == 8 and history == []
    *streaming, (_, history, session, status, timing) = demo.ask(QUESTIONS[0], session, history)
    assert streaming and "Round 1 done" in status and "cut at the model's context length" in timing
    assert [m["role"] for m in history] == ["user", "assistant"] and len(session.turns) == 1
    *_, (box, refused, session, status, timing) = demo.ask(QUESTIONS[1], session, history)
    assert status.startswith("⚠️ this question makes the conversation") and timing == ""
    assert box == QUESTIONS[1] and refused == history and len(session.turns) == 1  # nothing was added
    session, history, status, _ = demo.reset(session)
    assert history == [] and session.turns == [] and "cleared" in status
    *_, (_, history, session, status, _) = demo.ask(QUESTIONS[0], session, history)
    assert "Round 1 done" in status and len(history) == 2


def test_limits_are_one_line_naming_the_upload_and_a_raw_stream_is_measured(folder, media):
    """No browser: the page's upload handler on the clips that break a limit, and on a raw stream within them."""
    from videopanda.serve.chat import VideoConversation
    from videopanda.serve.demo import Demo

    model, processor = load_model(folder, "cpu", torch.float32)
    demo = Demo(VideoConversation(model, processor, max_new_tokens=NEW_TOKENS), max_seconds=MAX_SECONDS)
    expected = {
        "raw_long": f"⚠️ `long.h264` is over {MAX_SECONDS} s long (found by decoding: the file records no duration); "
                    f"this demo takes clips up to {MAX_SECONDS} s.",
        "long": f"⚠️ `long.mp4` is 10.0 s long; this demo takes clips up to {MAX_SECONDS} s.",
        "huge": "⚠️ `huge.mp4` has 4096x4096 frames (16.8 megapixels); this demo takes frames up to 8.85 megapixels.",
        "not_a_video": "⚠️ `notes.mp4` cannot be used as a video: Invalid data found when processing input.",
    }
    for key, message in expected.items():
        upload, shown, session, strip, status, _, _ = demo.load(str(media[key]))
        assert (upload, shown, session, strip, status) == (None, None, None, [], message)

    upload, shown, session, strip, status, _, _ = demo.load(str(media["raw_short"]))
    assert session is not None and len(strip) == 8 and status.startswith("**short.h264** (3.0 s, 64x48)")
    assert Path(shown).suffix == ".mp4" and Path(shown) != media["raw_short"]  # a raw stream does not play as is
    header = probe_video(shown)
    assert (header.codec, header.pix_fmt, header.width, header.height) == ("h264", "yuv420p", 64, 48)
    assert header.seconds == pytest.approx(3.0, abs=0.01)  # played at the stream's 8 fps, not FFmpeg's 25 fps guess
    assert read_video(shown).shape == session.frames.shape

    small = Demo(demo.base, max_seconds=MAX_SECONDS, max_pixels=64 * 48 - 1)
    assert "64x48 frames" in small.load(str(media["raw_short"]))[4]


def test_an_example_the_demo_would_refuse_stops_it_at_start_with_one_line(folder, media):
    done = subprocess.run([sys.executable, "-m", "videopanda", "demo", "--model", str(folder), "--device", "cpu",
                           "--max-seconds", str(MAX_SECONDS), "--port", str(_free_port()),
                           "--examples", str(media["clip"]), str(media["long"])],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, GRADIO_ANALYTICS_ENABLED="False"))
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines() == [f"videopanda demo: error: example {media['long']}: `long.mp4` is 10.0 s long; "
                                        f"this demo takes clips up to {MAX_SECONDS} s."]


@pytest.mark.parametrize("option", ["--max-pixels", "--max-seconds"])
def test_a_limit_must_be_positive(tmp_path, option):
    done = subprocess.run([sys.executable, "-m", "videopanda", "demo", "--model", str(tmp_path), option, "0"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.splitlines()[-1] == f"videopanda demo: error: {option} must be positive, got 0"


def test_a_demo_stopped_with_sigterm_closes_and_leaves_no_temporary_files(folder, media, tmp_path):
    pytest.importorskip("gradio", reason="the demo needs the `demo` extra (gradio)")
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    _, process = _serve(folder, [media["clip"]], tmp_path / "demo.log", TMPDIR=str(temporary))
    assert [p.name for p in temporary.glob("videopanda-demo-*")], "the demo keeps its playable copies in TMPDIR"
    assert _stop(process) == 0, (tmp_path / "demo.log").read_text()
    assert not list(temporary.glob("videopanda-demo-*"))


def test_frames_sampled_by_rate_fill_the_strip_and_the_status(folder, media, tmp_path):
    """No browser: a demo sampling 4 frames a second shows the 3 s clip's 12 frames, and a 0.3 s clip's 3 frames
    padded to one chunk of 4."""
    from videopanda.serve.chat import VideoConversation
    from videopanda.serve.demo import Demo
    from videopanda.serve.infer import with_sampling

    model, processor = load_model(folder, "cpu", torch.float32)
    demo = Demo(VideoConversation(model, with_sampling(processor, fps=4.0)), max_seconds=MAX_SECONDS)
    _, _, session, strip, status, _, _ = demo.load(str(media["clip"]))
    assert len(strip) == session.frames.shape[0] == 12 and "12 frames sampled;" in status, status
    short = write_video(tmp_path / "short.mp4", make_frames(3, height=64, width=48, seed=5), fps=10)
    _, _, session, strip, status, _, _ = demo.load(str(short))
    assert session.frames.shape[0] == 3 and len(strip) == 4 and "3 frames sampled, 1 padding frames added" in status
    assert [caption for _, caption in strip][-1] == "frame 4: padding"
