"""`videopanda data check` end to end: a real corpus, the real command in a subprocess."""
import json
import subprocess
import sys

import pytest
from helpers.media import CORPUS

from videopanda.cli import main as videopanda_main
from videopanda.data.cli import main


def sample(sid, video=None, answer="it is red"):
    out = {"id": sid, "conversations": [{"from": "human", "value": ("<video>\n" if video else "") + "what is it?"},
                                        {"from": "gpt", "value": answer}]}
    if video:
        out["video"] = video
    return out


@pytest.fixture(scope="module")
def corpus_json(tmp_path_factory, media_dir):
    root = tmp_path_factory.mktemp("check")
    first = [sample(f"id_{name}", f"clips/{name}") for name in CORPUS]
    second = [
        sample("text_only"),
        sample("wide_again", "clips/wide.mp4", answer="a second question on the same file"),
        {"id": "no_reply", "video": "clips/wide.mp4", "conversations": [{"from": "human", "value": "<video>\nhi"}]},
        {"id": "video_not_a_string", "video": 5, "conversations": sample("x")["conversations"]},
    ]
    (root / "first.json").write_text(json.dumps(first))
    (root / "second.json").write_text(json.dumps(second))
    (root / "videos").mkdir()
    (root / "videos" / "clips").symlink_to(media_dir, target_is_directory=True)
    good = [s for s in first if CORPUS[s["id"][3:]] is None] + second[:2]
    return root, first + second, good


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "videopanda", "data", "check", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def test_check_sorts_the_corpus_and_writes_report_and_clean_json(corpus_json):
    root, samples, good = corpus_json
    result = run_cli("--data-path", root / "first.json", root / "second.json", "--video-folder", root / "videos",
                     "--report", root / "out" / "report.json", "--output", root / "out" / "clean.json", "--workers", 2)
    assert result.returncode == 1, result.stderr
    report = json.loads((root / "out" / "report.json").read_text())
    assert set(report) == {"ok", "bad"} and report["ok"] == len(good)
    bad = {entry["id"]: entry for entry in report["bad"]}
    expected_bad = [s["id"] for s in samples if s not in good]
    assert [entry["id"] for entry in report["bad"]] == expected_bad  # in sample order
    for name, kind in CORPUS.items():
        if kind:
            entry = bad[f"id_{name}"]
            assert entry["video"] == f"clips/{name}"
            assert {"missing": "file not found", "empty": "empty file", "unreadable": "cannot decode"}[kind] in entry["reason"]
    assert "without a reply" in bad["no_reply"]["reason"] and "string path" in bad["video_not_a_string"]["reason"]
    assert json.loads((root / "out" / "clean.json").read_text()) == good  # original form, original order
    assert f"{len(good)} ok, {len(expected_bad)} bad" in result.stdout
    assert "id_random.mp4" in result.stdout


def test_in_process_run_agrees_and_all_good_data_exits_zero(corpus_json, tmp_path):
    root, _, good = corpus_json
    assert main(["check", "--data-path", str(root / "first.json"), str(root / "second.json"), "--video-folder",
                 str(root / "videos"), "--report", str(tmp_path / "r0.json"), "--workers", "0"]) == 1
    assert json.loads((tmp_path / "r0.json").read_text())["ok"] == len(good)
    (tmp_path / "good.json").write_text(json.dumps(good))
    assert main(["check", "--data-path", str(tmp_path / "good.json"), "--video-folder", str(root / "videos"),
                 "--output", str(tmp_path / "clean.json"), "--workers", "0"]) == 0
    assert json.loads((tmp_path / "clean.json").read_text()) == good


def test_usage_errors_exit_two(corpus_json, tmp_path, capsys):
    root, _, _ = corpus_json
    assert videopanda_main(["data", "check", "--data-path", str(tmp_path / "nope.json"), "--video-folder", str(root)]) == 2
    assert "nope.json: data JSON not found" in capsys.readouterr().err
    assert main(["check", "--data-path", str(root / "first.json"), "--video-folder", str(tmp_path / "no_dir")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert main(["check", "--data-path", str(root / "first.json"), "--video-folder", str(root), "--num-frames", "6"]) == 2
    assert main(["check", "--video-folder", str(root)]) == 2  # --data-path missing
    assert main(["check", "--help"]) == 0


def test_an_output_that_is_an_input_is_refused_and_the_input_kept(corpus_json, tmp_path, capsys):
    root, _, _ = corpus_json
    data = tmp_path / "train.json"
    data.write_bytes((root / "second.json").read_bytes())
    before = data.read_bytes()
    (tmp_path / "linked.json").hardlink_to(data)
    (tmp_path / "sub").mkdir()
    common = ["--data-path", str(root / "first.json"), str(data), "--video-folder", str(root / "videos"),
              "--workers", "0"]
    result = run_cli(*common, "--output", data)
    assert result.returncode == 2
    assert result.stderr.strip() == (f"videopanda data check: error: --output {data} is the input JSON {data}; "
                                     "write it to another file")
    for extra, message in [
        (["--report", str(tmp_path / "sub" / ".." / "train.json")], f"--report {tmp_path}/sub/../train.json is the "
                                                                     f"input JSON {data}"),
        (["--output", str(tmp_path / "linked.json")], f"--output {tmp_path / 'linked.json'} is the input JSON {data}"),
        (["--report", str(tmp_path / "out.json"), "--output", str(tmp_path / "out.json")],
         f"--report and --output are the same file {tmp_path / 'out.json'}"),
    ]:
        assert main(["check", *common, *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert data.read_bytes() == before and not (tmp_path / "out.json").exists()
