"""Multiple-choice benchmarks: each loader on a small set written in the benchmark's released format,
strict letter reading, exact hand-checked accuracy through `eval mc`, and a killed `eval mc` run with a
real tiny model that resumes without losing or repeating a question."""
import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.media import make_frames, write_video

from videopanda.eval.cli import main
from videopanda.eval.datasets import DatasetError
from videopanda.eval.mc import INSTRUCTION, extract_letter, load_mc
from videopanda.eval.qa import chunk_file, run_qa
from videopanda.eval.records import read_jsonl

from .test_faults import one_error_line, videopanda


def touch(path: Path, content: bytes = b"clip") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)


# ------------------------------------------------------------------------------------------ MVBench

def write_mvbench(data_root: Path) -> Path:
    root = data_root / "eval" / "MVBench"
    (root / "json").mkdir(parents=True)
    (root / "json" / "action_count.json").write_text(json.dumps([
        {"video": "clip_a.mp4", "question": "How many times does the person jump?",
         "candidates": ["2", "3", "4"], "answer": "3"},
        {"video": "clip_b.mp4", "question": "How many times does the ball bounce?",
         "candidates": ["1", "0", "5"], "answer": "1"},
        {"video": "clip_c.mp4", "question": "How many cups are moved?", "candidates": ["one", "two", "three"],
         "answer": "three"},
        {"video": "clip_a.mp4", "question": "How many claps?", "candidates": ["6", "7"], "answer": "6"},
    ]))
    (root / "json" / "action_sequence.json").write_text(json.dumps([
        {"video": "S1.mp4", "question": "What did the person do after sitting?",
         "candidates": ["Opened the door.", "Took the cup.", "Put down the book.", "Closed the box."],
         "answer": "Took the cup.", "start": 1.5, "end": 7.25},
    ]))
    (root / "json" / "moving_direction.json").write_text(json.dumps([
        {"video": "video_10000.mp4", "question": "Where does the cube move?", "candidates": ["left", "right", "up"],
         "answer": "up"},
        {"video": "video_10001.mp4", "question": "Where does the sphere move?", "candidates": ["left", "right", "up"],
         "answer": "right"},
        {"video": "video_10002.mp4", "question": "Where does the cone move?", "candidates": ["left", "right"],
         "answer": "left"},
        {"video": "video_10003.mp4", "question": "Where does the cylinder move?", "candidates": ["left", "right", "down"],
         "answer": "right"},
    ]))
    for name in ("clip_a.mp4", "clip_b.mp4", "clip_c.mp4"):
        touch(root / "video" / "perception" / "videos" / name)
    touch(root / "video" / "star" / "Charades_v1_480" / "S1.mp4")
    for name in ("video_10000.mp4", "video_10001.mp4", "video_10003.mp4"):     # video_10002 is missing
        touch(root / "video" / "clevrer" / "video_validation" / name)
    return root


def test_mvbench_loader(tmp_path):
    root = write_mvbench(tmp_path)
    items = {item.id: item for item in load_mc(tmp_path, "mvbench")}
    # tasks in MVBench's own order
    assert list(items) == ["action_sequence/0", *(f"moving_direction/{i}" for i in range(4)),
                           *(f"action_count/{i}" for i in range(4))]
    jump = items["action_count/0"]
    assert jump.answer == "B" and jump.options == ("2", "3", "4") and jump.categories == (("task", "Action Count"),)
    assert jump.question == ("How many times does the person jump?\n(A) 2\n(B) 3\n(C) 4\n" + INSTRUCTION)
    assert jump.video_path == root / "video" / "perception" / "videos" / "clip_a.mp4"
    sequence = items["action_sequence/0"]
    assert (sequence.answer, sequence.start, sequence.end) == ("B", 1.5, 7.25)
    assert sequence.video_path == root / "video" / "star" / "Charades_v1_480" / "S1.mp4"
    assert items["moving_direction/2"].video_path is None and items["moving_direction/0"].answer == "C"


def test_mvbench_answer_not_among_candidates_is_one_line(tmp_path):
    root = write_mvbench(tmp_path)
    path = root / "json" / "action_count.json"
    entries = json.loads(path.read_text())
    entries[1]["answer"] = "9"
    path.write_text(json.dumps(entries))
    with pytest.raises(DatasetError, match=rf"^{path}: entry 1: answer '9' is not exactly one of the candidates$"):
        load_mc(tmp_path, "mvbench")


# ------------------------------------------------------------------------------------------ Video-MME

def test_videomme_loader(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    root = tmp_path / "eval" / "Video-MME"
    (root / "videomme").mkdir(parents=True)
    rows = [
        {"video_id": "001", "duration": "short", "domain": "Knowledge", "sub_category": "Humanity & History",
         "url": "https://www.youtube.com/watch?v=fFjv93ACGo8", "videoID": "fFjv93ACGo8", "question_id": "001-1",
         "task_type": "Counting Problem", "question": "How many red socks are shown?",
         "options": ["A. 6.", "B. 3.", "C. 2.", "D. 4."], "answer": "D"},
        {"video_id": "601", "duration": "long", "domain": "Sports Competition", "sub_category": "Football",
         "url": "https://www.youtube.com/watch?v=xyz", "videoID": "xyzLong0001", "question_id": "601-3",
         "task_type": "Temporal Reasoning", "question": "What happens after the goal?",
         "options": ["A. The crowd leaves.", "B. A replay.", "C. Half time.", "D. A penalty."], "answer": "B"},
    ]
    pq.write_table(pa.Table.from_pylist(rows), root / "videomme" / "test-00000-of-00001.parquet")
    touch(root / "data" / "fFjv93ACGo8.mp4")
    items = load_mc(tmp_path, "videomme")
    assert [i.id for i in items] == ["001-1", "601-3"]
    assert items[0].options == ("6.", "3.", "2.", "4.") and items[0].answer == "D"
    assert items[0].video_path == root / "data" / "fFjv93ACGo8.mp4" and items[1].video_path is None
    assert dict(items[1].categories) == {"task_type": "Temporal Reasoning", "duration": "long",
                                         "domain": "Sports Competition", "sub_category": "Football"}
    rows[1]["options"][2] = "X. Half time."
    pq.write_table(pa.Table.from_pylist(rows), root / "videomme" / "test-00000-of-00001.parquet")
    with pytest.raises(DatasetError, match="row 1: option 2 'X. Half time.' does not start with C."):
        load_mc(tmp_path, "videomme")


# ------------------------------------------------------------------------------------------ EgoSchema

EGOSCHEMA_UIDS = ["0074f737-11cb-497d-8d07-77c3a8127391", "00b9a0de-c59e-49cb-a127-6081e2fb8c8e",
                  "00f93e1e-cf4e-4835-88b4-4ad68216e86f"]


def write_egoschema(data_root: Path) -> Path:
    root = data_root / "eval" / "EgoSchema"
    root.mkdir(parents=True)
    questions = [{"q_uid": uid, "google_drive_id": f"drive{i}", "question": f"What is c doing in video {i}?",
                  **{f"option {k}": f"option text {i}.{k}" for k in range(5)}} for i, uid in enumerate(EGOSCHEMA_UIDS)]
    (root / "questions.json").write_text(json.dumps(questions))
    (root / "subset_answers.json").write_text(json.dumps({EGOSCHEMA_UIDS[0]: 3, EGOSCHEMA_UIDS[2]: 0}))
    touch(root / "videos" / f"{EGOSCHEMA_UIDS[0]}.mp4")
    return root


def test_egoschema_loader_keeps_the_questions_with_public_answers(tmp_path):
    root, uids = write_egoschema(tmp_path), EGOSCHEMA_UIDS
    items = load_mc(tmp_path, "egoschema")
    assert [i.id for i in items] == [uids[0], uids[2]] and [i.answer for i in items] == ["D", "A"]
    assert items[0].video_path == root / "videos" / f"{uids[0]}.mp4" and items[1].video_path is None
    assert items[0].options[3] == "option text 0.3" and items[0].categories == ()


# ------------------------------------------------------------------------------------------ NExT-QA

def test_nextqa_loader(tmp_path):
    root = tmp_path / "eval" / "NExTQA"
    root.mkdir(parents=True)
    header = ["video", "frame_count", "width", "height", "question", "answer", "qid", "type", "a0", "a1", "a2", "a3", "a4"]
    rows = [["4010069381", 369, 640, 480, "how do the two man play the instrument", 4, 6, "CH",
             "roll the handle", "tap their feet", "strum the string", "hit with sticks", "pat with hand"],
            ["4882821564", 1044, 640, 360, "what did the boy do after he fell", 1, 2, "TN",
             "cry", "stand up", "run away", "sit", "laugh"],
            ["4882821564", 1044, 640, 360, "where is this happening", 0, 5, "DL",
             "park", "beach", "room", "road", "field"]]
    with open(root / "val.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    (root / "map_vid_vidorID.json").write_text(json.dumps({"4010069381": "1006/4010069381",
                                                           "4882821564": "1017/4882821564"}))
    touch(root / "NExTVideo" / "1006" / "4010069381.mp4")
    items = load_mc(tmp_path, "nextqa")
    assert [(i.id, i.answer) for i in items] == [("4010069381_6", "E"), ("4882821564_2", "B"), ("4882821564_5", "A")]
    assert items[0].video_path == root / "NExTVideo" / "1006" / "4010069381.mp4" and items[1].video_path is None
    assert [dict(i.categories) for i in items] == [{"type": "CH", "group": "causal"}, {"type": "TN", "group": "temporal"},
                                                   {"type": "DL", "group": "descriptive"}]
    rows[2][5] = "park"
    with open(root / "val.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    with pytest.raises(DatasetError, match=r"val.csv: row 4: answer 'park' is not an option index$"):
        load_mc(tmp_path, "nextqa")


# ------------------------------------------------------------------------------------------ Perception Test

def write_perceptiontest(data_root: Path) -> Path:
    root = data_root / "eval" / "PerceptionTest"
    root.mkdir(parents=True)
    data = {
        "video_10909": {"metadata": {"video_id": "video_10909", "num_frames": 1044, "resolution": [1080, 1920]},
                        "mc_question": [
                            {"id": 0, "question": "Is the camera moving or static?", "options": ["moving", "static",
                             "I don't know"], "answer_id": 1, "area": "physics", "reasoning": "descriptive",
                             "tag": ["motion"]},
                            {"id": 1, "question": "How many objects were put in the bowl?", "options": ["1", "2", "3"],
                             "answer_id": 2, "area": "memory", "reasoning": "counting", "tag": ["counting"]}]},
        "video_7720": {"metadata": {"video_id": "video_7720"}, "mc_question": [
            {"id": 0, "question": "What will the person do next?", "options": ["pour", "stir", "leave"],
             "answer_id": 0, "area": "semantics", "reasoning": "predictive", "tag": []}]},
    }
    (root / "mc_question_valid.json").write_text(json.dumps(data))
    touch(root / "videos" / "video_10909.mp4")
    return root


def test_perceptiontest_loader(tmp_path):
    root = write_perceptiontest(tmp_path)
    items = load_mc(tmp_path, "perceptiontest")
    assert [(i.id, i.answer) for i in items] == [("video_10909/0", "B"), ("video_10909/1", "C"), ("video_7720/0", "A")]
    assert dict(items[1].categories) == {"area": "memory", "reasoning": "counting"}
    assert items[0].video_path == root / "videos" / "video_10909.mp4" and items[2].video_path is None


# ------------------------------------------------------------------------------------------ bad samples

def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


BAD_SAMPLES = {  # benchmark, file, change, the error's end after the file's path
    "mvbench start not a number": (
        write_mvbench, "json/action_sequence.json", lambda d: d[0].update(start="soon"),
        ": entry 0: start 'soon' is not a time in seconds"),
    "mvbench candidates as one string": (   # would be read as the options "1", "0", "5"
        write_mvbench, "json/action_count.json", lambda d: d[1].update(candidates="105"),
        ": entry 1: candidates '105' is not a list of option texts"),
    "egoschema fractional answer": (        # would be read as option 2
        write_egoschema, "subset_answers.json", lambda d: d.update({EGOSCHEMA_UIDS[2]: 2.9}),
        f": {EGOSCHEMA_UIDS[2]}: answer 2.9 is not an option index"),
    "perceptiontest answer_id not a number": (
        write_perceptiontest, "mc_question_valid.json",
        lambda d: d["video_10909"]["mc_question"][1].update(answer_id="x"),
        ": video video_10909 question 1: answer_id 'x' is not an option index"),
}


@pytest.mark.parametrize("fault", list(BAD_SAMPLES))
def test_a_bad_sample_is_one_line_naming_file_and_sample(tmp_path, fault):
    """Through `videopanda eval mc` (a real process): a sample no reader can use for sure is refused in one
    line naming the annotation file and the sample, before anything is written."""
    write, name, change, message = BAD_SAMPLES[fault]
    root = write(tmp_path / "data")
    edit_json(root / name, change)
    out = tmp_path / "out"
    code, stderr = videopanda("eval", "mc", "--benchmark", fault.split()[0], "--data-root", tmp_path / "data",
                              "--output-dir", out, "--stage", "score")
    assert code == 1
    assert one_error_line(stderr).endswith(f"ERROR videopanda.eval.cli: {root / name}{message}")
    assert not out.exists()


@pytest.mark.parametrize("write,name,change,message", [
    (write_mvbench, "json/action_sequence.json", lambda d: d[0].update(start="nan"), "start 'nan' is not a time in seconds"),
    (write_mvbench, "json/action_sequence.json", lambda d: d[0].update(start=True), "start True is not a time in seconds"),
    (write_mvbench, "json/action_sequence.json", lambda d: d[0].update(end=1.0), "end 1 is not after start 1.5"),
    (write_perceptiontest, "mc_question_valid.json", lambda d: d["video_7720"]["mc_question"][0].update(options="pour"),
     "question 0: options 'pour' is not a list of option texts"),
    (write_perceptiontest, "mc_question_valid.json", lambda d: d["video_7720"]["mc_question"][0].update(answer_id=True),
     "question 0: answer_id True is not an option index"),
    (write_egoschema, "subset_answers.json", lambda d: d.update({EGOSCHEMA_UIDS[0]: "3"}), None),
    (write_egoschema, "subset_answers.json", lambda d: d.update({EGOSCHEMA_UIDS[0]: 3.0}), None),
])
def test_sample_values_are_read_strictly(tmp_path, write, name, change, message):
    root = write(tmp_path)
    edit_json(root / name, change)
    benchmark = {"MVBench": "mvbench", "PerceptionTest": "perceptiontest", "EgoSchema": "egoschema"}[root.name]
    if message is None:                     # the same index written another way
        assert load_mc(tmp_path, benchmark)[0].answer == "D"
        return
    with pytest.raises(DatasetError, match=f"^{re.escape(str(root / name))}: .*{re.escape(message)}$"):
        load_mc(tmp_path, benchmark)


# ------------------------------------------------------------------------------------------ reading letters

@pytest.mark.parametrize("reply,letter", [
    ("B", "B"), (" B. ", "B"), ("(C) three", "C"), ("[a]", "A"), ("B) cats", "B"), ("Answer: C", "C"),
    ("The answer is B.", "B"), ("Best option: (A)", "A"), ("Option C", "C"), ("three", "C"), ("Three.", "C"),
    ("D", None), ("A dog runs", None), ("b", None), ("I cannot tell", None), ("", None), (None, None),
    ("BC", None), ("two or three", None),
])
def test_extract_letter(reply, letter):
    assert extract_letter(reply, ["one", "two", "three"]) == letter


# ------------------------------------------------------------------------------------------ eval mc

REPLIES = {  # id -> reply; right letters: action_count B A C A, moving_direction C B - B, action_sequence B
    "action_count/0": "B",                 # right
    "action_count/1": "(A) 1",             # right
    "action_count/2": "A dog runs",        # unparsable: wrong
    "action_count/3": "A",                 # right
    "moving_direction/0": "up",            # the text of option C: right
    "moving_direction/1": "E",             # beyond the 3 options: unparsable, wrong
    "moving_direction/3": "The answer is B",  # right
    "action_sequence/0": "C. Put down the book.",  # wrong
}                                          # moving_direction/2 has no video: no prediction, wrong


def scripted(batch):
    return [FileNotFoundError(f"no video {item.video}") if item.video_path is None else REPLIES[item.id]
            for item in batch]


def test_eval_mc_accuracy_is_exact(tmp_path, capsys):
    write_mvbench(tmp_path / "data")
    items = load_mc(tmp_path / "data", "mvbench")
    out = tmp_path / "mvbench"
    for index in range(2):
        part = items[index * len(items) // 2:(index + 1) * len(items) // 2]
        run_qa(part, scripted, chunk_file(out / "predictions", 2, index), progress=False)
    args = ["mc", "--benchmark", "mvbench", "--data-root", str(tmp_path / "data"), "--output-dir", str(out),
            "--stage", "score"]
    assert main(args) == 1                 # a question without a prediction: incomplete
    assert not (out / "results.json").exists()
    assert main(args + ["--allow-incomplete"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert (results["num_items"], results["num_correct"]) == (9, 5)
    assert results["accuracy"] == pytest.approx(100 * 5 / 9)
    # Wilson 95% intervals, by hand with z = 1.95996: 5/9 -> [26.67, 81.12]; 3/4 -> [30.06, 95.44];
    # 0/1 -> [0, z^2 / (1 + z^2)] = [0, 79.35]; 2/4 -> 50 -+ 35.00
    assert results["accuracy_ci95"] == pytest.approx([26.665, 81.121], abs=0.01)
    assert results["per_category"]["task"] == {
        "Action Count": {"num_items": 4, "num_correct": 3, "accuracy": pytest.approx(75.0),
                         "accuracy_ci95": pytest.approx([30.064, 95.441], abs=0.01)},
        "Action Sequence": {"num_items": 1, "num_correct": 0, "accuracy": 0.0,
                            "accuracy_ci95": pytest.approx([0.0, 79.345], abs=0.01)},
        "Moving Direction": {"num_items": 4, "num_correct": 2, "accuracy": pytest.approx(50.0),
                             "accuracy_ci95": pytest.approx([15.004, 84.996], abs=0.01)}}
    assert results["unparsable"] == [{"id": "moving_direction/1", "pred": "E"},
                                     {"id": "action_count/2", "pred": "A dog runs"}]
    assert [r["id"] for r in results["failed"]] == ["moving_direction/2"]
    printed = capsys.readouterr().out
    assert "accuracy 55.56 [26.67, 81.12] (5 of 9; 2 unparsable, 1 without a prediction)" in printed
    assert "task Action Sequence: 0.00 [0.00, 79.35] (0/1)" in printed


@pytest.mark.slow
def test_killed_eval_mc_resumes_without_losing_or_repeating(model_dir, tmp_path):
    data_root = tmp_path / "data"
    root = data_root / "eval" / "PerceptionTest"
    data = {f"video_{v}": {"metadata": {"video_id": f"video_{v}"}, "mc_question": [
        {"id": q, "question": f"which shape moves {q}", "options": ["red", "green", "blue"], "answer_id": q % 3,
         "area": "physics" if q % 2 else "memory", "reasoning": "descriptive"} for q in range(3)]} for v in range(3)}
    (root / "videos").mkdir(parents=True)
    (root / "mc_question_valid.json").write_text(json.dumps(data))
    for v in range(3):
        write_video(root / "videos" / f"video_{v}.mp4", make_frames(10, height=32, width=32, seed=v))
    out = tmp_path / "run"
    command = [sys.executable, "-m", "videopanda", "eval", "mc", "--benchmark", "perceptiontest",
               "--data-root", str(data_root), "--output-dir", str(out), "--model", str(model_dir), "--device", "cpu",
               "--max-new-tokens", "3", "--no-progress"]
    chunk = chunk_file(out / "predictions", 1, 0)
    proc = subprocess.Popen(command + ["--stage", "infer"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not (chunk.exists() and len(chunk.read_text().splitlines()) >= 2):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = read_jsonl(chunk)
    assert 2 <= len(before) < 9, "the kill must land half-way"

    result = subprocess.run(command + ["--stage", "all", "--allow-incomplete"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    rows = read_jsonl(chunk)
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == 9
    assert rows[:len(before)] == before, "rows written before the kill are kept as they were"
    results = json.loads((out / "results.json").read_text())
    assert results["num_items"] == 9 and results["num_failed"] == 0 and results["method"] == "generate"
    right = sum(extract_letter(r["pred"], ["red", "green", "blue"]) == r["answer"] for r in rows)
    assert results["num_correct"] == right
    assert sum(c["num_items"] for c in results["per_category"]["area"].values()) == 9


def test_loglikelihood_ranking_matches_one_option_at_a_time(model_dir, tmp_path):
    """The batched, left-padded option scores equal those computed for each option alone, and the
    answer is the best-scoring letter; through `eval mc` every reply is a letter."""
    import torch

    from videopanda.eval.mc import LETTERS, MCAnswerer
    from videopanda.eval.qa import ModelAnswererConfig

    data_root = tmp_path / "data"
    root = data_root / "eval" / "EgoSchema"
    (root / "videos").mkdir(parents=True)
    questions = [{"q_uid": f"uid{i}", "question": f"what colour is the circle {i}",
                  **{f"option {k}": ["red", "green blue", "yellow", "the square moves left", "up"][k] for k in range(5)}}
                 for i in range(2)]
    (root / "questions.json").write_text(json.dumps(questions))
    (root / "subset_answers.json").write_text(json.dumps({"uid0": 1, "uid1": 4}))
    for i in range(2):
        write_video(root / "videos" / f"uid{i}.mp4", make_frames(8, height=40, width=56, seed=i))
    items = load_mc(data_root, "egoschema")

    answerer = MCAnswerer(ModelAnswererConfig(model=str(model_dir), device="cpu"), method="loglikelihood")
    prompt, frames, count = answerer.prepare(items[0])
    batched = answerer.option_logprobs(prompt, frames, count)
    for index in range(count):
        text = f"{prompt} {LETTERS[index]}"
        inputs = answerer.processor(text=[prompt, text], videos=[frames, frames])
        extra = int(inputs["attention_mask"][1].sum() - inputs["attention_mask"][0].sum())
        with torch.inference_mode():
            logits = answerer.model(input_ids=inputs["input_ids"][1:], attention_mask=inputs["attention_mask"][1:],
                                    pixel_values_videos=inputs["pixel_values_videos"][1:]).logits
        logprobs = torch.log_softmax(logits.float(), dim=-1)[0]
        targets = inputs["input_ids"][1, -extra:]
        alone = float(logprobs[-extra - 1:-1].gather(1, targets[:, None]).sum())
        assert batched[index] == pytest.approx(alone, abs=1e-4)
    assert answerer([items[0]]) == [LETTERS[max(range(count), key=lambda i: batched[i])]]

    out = tmp_path / "ll"
    assert main(["mc", "--benchmark", "egoschema", "--data-root", str(data_root), "--output-dir", str(out),
                 "--model", str(model_dir), "--device", "cpu", "--method", "loglikelihood", "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["method"] == "loglikelihood" and results["num_unparsable"] == 0 and results["num_items"] == 2
    # another method is another fingerprint: the folder is refused, never mixed
    assert main(["mc", "--benchmark", "egoschema", "--data-root", str(data_root), "--output-dir", str(out),
                 "--model", str(model_dir), "--device", "cpu", "--no-progress"]) == 2


def test_eval_mc_samples_16_frames_within_windows_and_refuses_windows_by_rate(model_dir, tmp_path, caplog):
    """--num-frames 16: a windowed MVBench question is answered on 16 frames of its window (`read_video` with
    start/end), a whole-clip question on 16 frames of the clip, each as `infer.answer` gives on those frames,
    and the fingerprint records the count; --fps is refused in one line before anything is written, since a
    window is sampled by count only."""
    import logging

    from videopanda.data.video import read_video
    from videopanda.serve.infer import answer, with_sampling
    from videopanda.serve.model_folder import load_model

    data_root = tmp_path / "data"
    root = data_root / "eval" / "MVBench"
    (root / "json").mkdir(parents=True)
    (root / "json" / "action_sequence.json").write_text(json.dumps([
        {"video": "S1.mp4", "question": "What did the person do after sitting?",
         "candidates": ["Opened the door.", "Took the cup."], "answer": "Took the cup.", "start": 1.5, "end": 7.25}]))
    (root / "json" / "action_count.json").write_text(json.dumps([
        {"video": "clip_a.mp4", "question": "How many claps?", "candidates": ["6", "7"], "answer": "6"}]))
    (root / "video" / "star" / "Charades_v1_480").mkdir(parents=True)
    (root / "video" / "perception" / "videos").mkdir(parents=True)
    long_clip = write_video(root / "video" / "star" / "Charades_v1_480" / "S1.mp4",
                            make_frames(80, height=32, width=48, seed=1))                      # 8 s at 10 fps
    clip = write_video(root / "video" / "perception" / "videos" / "clip_a.mp4", make_frames(30, height=48, width=32, seed=2))
    common = ["mc", "--benchmark", "mvbench", "--data-root", str(data_root), "--model", str(model_dir),
              "--device", "cpu", "--max-new-tokens", "3", "--no-progress"]

    assert main([*common, "--output-dir", str(tmp_path / "by_rate"), "--fps", "2"]) == 2
    [message] = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert "1 of 2 questions are about a window of their clip (e.g. action_sequence/0)" in message
    assert "sampled by count (--num-frames)" in message and not (tmp_path / "by_rate").exists()

    out = tmp_path / "by_count"
    assert main([*common, "--output-dir", str(out), "--num-frames", "16"]) == 0
    frames = json.loads((out / "predictions" / "chunk-0-of-1.run.json").read_text())["fingerprint"]["frames"]
    assert frames["num_frames"] == 16 and "sampling" not in frames
    rows = {row["id"]: row["pred"] for row in read_jsonl(chunk_file(out / "predictions", 1, 0))}
    items = {item.key: item for item in load_mc(data_root, "mvbench")}
    model, processor = load_model(model_dir, "cpu", None)
    processor = with_sampling(processor, num_frames=16)
    window = read_video(long_clip, num_frames=16, start=1.5, end=7.25)
    assert window.shape[0] == 16
    assert rows["action_sequence/0"] == answer(model, processor, window, items["action_sequence/0"].question, 3)
    assert rows["action_count/0"] == answer(model, processor, clip, items["action_count/0"].question, 3)
