"""The judge against a misbehaving OpenAI-compatible server on 127.0.0.1 (real HTTP, real openai client).

Transport faults (429 with Retry-After, 5xx, timeouts) are retried by the openai client itself, within
one call; replies without a valid verdict are asked again by the judge. Both count in `--max-retries`."""
import json
import logging
import os
import subprocess
import sys
import time

import pytest

from helpers.judge_server import JudgeServer, model_list, raw, reply, slow, status
from videopanda.eval.cli import main
from videopanda.eval.judge import JudgeConfig, JudgeItem, OpenAIJudge, run_judge
from videopanda.eval.prompts import qa_messages

KEY = "sk-test-SECRET-4d1f9a7c"
MODEL = "judge-test-0613"


def verdict(pred, score):
    return reply(json.dumps({"pred": pred, "score": score}))


# item -> (script, expected verdict or None for failed, expected number of calls) with --max-retries 3
SCRIPT = {
    "item-1": ([verdict("yes", 5)], ("yes", 5), 1),
    "item-2": ([reply('The prediction is wrong. {"pred": "no", "score": 1} Hope this helps.')], ("no", 1), 1),
    "item-3": ([reply('```json\n{"pred": "Yes", "score": 4}\n```')], ("yes", 4), 1),
    # a key named twice is no verdict (not the last value winning): asked again
    "item-4": ([reply('{"pred": "yes", "score": 4, "pred": "no"}'), verdict("no", 0)], ("no", 0), 2),
    "item-5": ([status(429, retry_after=0.3), verdict("yes", 3)], ("yes", 3), 2),
    "item-6": ([status(500), status(503), verdict("no", 2)], ("no", 2), 3),
    "item-7": ([slow(1.0, '{"pred": "yes", "score": 5}'), verdict("yes", 4)], ("yes", 4), 2),
    "item-8": ([raw("not json {"), raw('{"choices": []}'), reply('{"pred": "yes", "score": "4.0"}')], ("yes", 4), 3),
    "item-9": ([verdict("yes", 4.5), verdict("maybe", 3), verdict("no", 2)], ("no", 2), 3),
    "item-10": ([status(500)], None, 4),
    "item-11": ([reply("I am unable to judge this answer.")], None, 4),
    "item-12": ([slow(1.0, '{"pred": "yes", "score": 5}')], None, 4),
}
JUDGED = {k: v[1] for k, v in SCRIPT.items() if v[1]}


def write_predictions(path):
    rows = [{"id": key, "question": f"what happens in {key}?", "answer": "a dog runs", "pred": f"pred of {key}",
             "type": "even" if int(key.split("-")[1]) % 2 == 0 else "odd"} for key in SCRIPT]
    rows.append({"id": "item-13", "question": "what happens in item-13?", "answer": "x", "pred": None,
                 "error": "VideoReadError: clip.mp4: cannot decode"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def judge_cli(pred_file, out_dir, server, *extra):
    return main(["judge", "--pred-file", str(pred_file), "--output-dir", str(out_dir), "--api-base", server.url,
                 "--model", "gpt-test", "--workers", "4", "--max-retries", "3", "--timeout", "0.5",
                 "--dataset", "msvd", *extra])


def assert_no_key_anywhere(out_dir, captured_text, server):
    for path in out_dir.rglob("*"):
        if path.is_file():
            assert KEY not in path.read_text(errors="replace"), path
    assert KEY not in captured_text
    for request in server.calls():
        assert request.headers.get("authorization") == f"Bearer {KEY}"
        others = {k: v for k, v in request.headers.items() if k.lower() != "authorization"}
        assert KEY not in json.dumps(others) and KEY.encode() not in request.body


def test_misbehaving_server_exact_metrics_bounded_calls_and_rerun(tmp_path, monkeypatch, capsys, caplog):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    caplog.set_level(logging.DEBUG)
    pred_file, out = tmp_path / "merge.jsonl", tmp_path / "judge"
    write_predictions(pred_file)
    with JudgeServer({k: v[0] for k, v in SCRIPT.items()}) as server:
        assert judge_cli(pred_file, out, server) == 1       # 3 items without a verdict, 1 without a prediction
        results = json.loads((out / "results.json").read_text())
        yes = sum(1 for v in JUDGED.values() if v[0] == "yes")
        no = len(JUDGED) - yes
        assert (results["num_yes"], results["num_no"]) == (yes, no) == (5, 4)
        # over all 13 items; the 4 without a verdict count as wrong, score 0
        assert results["accuracy"] == pytest.approx(100 * 5 / 13)
        assert results["score"] == pytest.approx(sum(v[1] for v in JUDGED.values()) / 13) == pytest.approx(25 / 13)
        assert results["num_failed"] == 3 and results["num_failed_inference"] == 1 and results["num_items"] == 13
        assert results["complete"] is False
        assert results["failed_ids"] == {"inference": ["item-13"], "judge": ["item-10", "item-11", "item-12"]}
        assert results["coverage"] == "13 questions: 9 judged, 4 failed (1 without a prediction, 3 without a verdict)"
        assert results["judge_model"] == MODEL and results["judge"] == "gpt"
        assert results["api_base"] == server.url and results["dataset"] == "msvd"
        # every completed reply counts: 12 behind verdicts (items 1-8 one each but item-4 two, item-9 three),
        # 4 of item-11
        assert results["usage"] == {"prompt_tokens": 16 * 50, "completion_tokens": 16 * 10}
        assert results["judge_server_models"] == [{"id": MODEL, "object": "model", "created": 0, "owned_by": "test",
                                                   "root": f"/models/{MODEL}"}]
        assert results["json_mode"] is True and server.model_listings == 1
        assert results["per_type"]["odd"]["num_yes"] == 4

        for key, (_, _, calls) in SCRIPT.items():
            assert len(server.calls(key)) == calls, key
        assert server.calls("item-13") == []
        assert len(server.calls()) == sum(v[2] for v in SCRIPT.values()) == 30
        first, second = server.calls("item-5")
        assert second.time - first.time >= 0.29, "Retry-After must be honoured"
        body = server.calls("item-1")[0].json
        assert body["temperature"] == 0 and body["seed"] == 1234 and body["model"] == "gpt-test"
        assert body["response_format"] == {"type": "json_object"}

        verdicts = [json.loads(x) for x in (out / "verdicts.jsonl").read_text().splitlines()]
        assert {v["id"]: (v["verdict"], v["score"]) for v in verdicts} == JUDGED
        failed = [json.loads(x) for x in (out / "failed.jsonl").read_text().splitlines()]
        assert [(f["id"], f["stage"]) for f in failed] == [
            ("item-13", "inference"), ("item-10", "judge"), ("item-11", "judge"), ("item-12", "judge")]

        # rerun: only the failed items are asked again; now the server answers them
        server.set_script("item-10", [verdict("no", 1)])
        server.set_script("item-11", [verdict("yes", 5)])
        server.set_script("item-12", [verdict("yes", 5)])
        before = len(server.calls())
        assert judge_cli(pred_file, out, server) == 1       # item-13 still has no prediction
        new = server.calls()[before:]
        assert sorted(r.key for r in new) == ["item-10", "item-11", "item-12"]
        results = json.loads((out / "results.json").read_text())
        assert (results["num_yes"], results["num_no"], results["num_failed"]) == (7, 5, 0)
        assert results["score"] == pytest.approx((25 + 1 + 5 + 5) / 13)

        # rerun of a finished judgement, accepting the missing prediction: no call at all, same numbers
        before = len(server.calls())
        assert judge_cli(pred_file, out, server, "--allow-incomplete") == 0
        assert len(server.calls()) == before
        assert json.loads((out / "results.json").read_text())["score"] == results["score"]

        captured = capsys.readouterr()
        assert "accuracy 53.85" in captured.out and "13 questions: 12 judged, 1 failed" in captured.out
        assert_no_key_anywhere(tmp_path, captured.out + captured.err + caplog.text, server)


def test_changed_prediction_is_rejudged_not_counted_stale(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    pred_file, out = tmp_path / "merge.jsonl", tmp_path / "judge"
    rows = [{"id": f"item-{i}", "question": f"q item-{i}", "answer": "cat", "pred": "cat"} for i in range(3)]
    pred_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with JudgeServer(default=verdict("yes", 5)) as server:
        assert judge_cli(pred_file, out, server, "--no-progress") == 0
        rows[1]["pred"] = "dog"
        pred_file.write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))
        server.set_script("item-1", [verdict("no", 0)])
        before = len(server.calls())
        assert judge_cli(pred_file, out, server, "--no-progress") == 0
        assert [r.key for r in server.calls()[before:]] == ["item-1"]
    results = json.loads((out / "results.json").read_text())
    assert (results["num_yes"], results["num_no"], results["num_items"]) == (1, 1, 2)


def test_retry_after_beyond_the_clients_limit_fails_the_item_and_key_in_error_bodies_is_scrubbed(
        tmp_path, monkeypatch, caplog):
    """The client does not wait for a Retry-After over its limit (two minutes): the item fails at once and
    is asked again on the next run; a 500 repeating the key has it scrubbed from failed.jsonl and the log."""
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    caplog.set_level(logging.DEBUG)
    leaky = raw(json.dumps({"error": {"message": f"Incorrect API key provided: {KEY}"}}), code=500)
    script = {"item-1": [verdict("yes", 5), status(429, retry_after=600)], "item-2": [leaky]}
    items = [JudgeItem(id=k, messages=qa_messages(f"q {k}", "a", "p"), answer="a", preds=("p",))
             for k in ("item-1", "item-2")]
    with JudgeServer(script) as server:
        judge = OpenAIJudge(JudgeConfig(api_base=server.url, model="m", timeout=0.5, max_retries=1))
        start = time.monotonic()
        results = run_judge(items, judge, tmp_path / "out", workers=1, progress=False)
        assert time.monotonic() - start < 5
        assert results["num_yes"] == 1 and results["num_failed"] == 1 and len(server.calls("item-2")) == 2
        assert "***" in (tmp_path / "out" / "failed.jsonl").read_text()
        assert_no_key_anywhere(tmp_path, caplog.text, server)

        items[0] = JudgeItem(id="item-1", messages=qa_messages("q item-1 changed", "a", "p"), answer="a", preds=("p",))
        again = OpenAIJudge(JudgeConfig(api_base=server.url, model="m", timeout=0.5, max_retries=1))
        start = time.monotonic()
        results = run_judge(items[:1], again, tmp_path / "out", workers=1, progress=False)
        assert time.monotonic() - start < 2, "a Retry-After of 600 s must not be waited for"
        # the run's first request goes without retries, then once more with them: the client does not wait
        assert len(server.calls("item-1")) == 1 + 2 and results["num_failed"] == 1
        assert "HTTP 429" in json.loads((tmp_path / "out" / "failed.jsonl").read_text())["error"]


def test_json_mode_is_dropped_when_the_server_refuses_it(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    refusal = raw(json.dumps({"error": {"message": "response_format json_object is not supported by this model",
                                        "type": "invalid_request_error"}}), code=400)
    items = [JudgeItem(id=f"item-{i}", messages=qa_messages(f"q item-{i}", "a", "p"), answer="a", preds=("p",))
             for i in range(4)]
    with JudgeServer({"item-0": [refusal, verdict("no", 2)]}, default=verdict("yes", 5),
                     models_action=status(404)) as server:
        judge = OpenAIJudge(JudgeConfig(api_base=server.url, model="m", timeout=2, max_retries=1))
        results = run_judge(items, judge, tmp_path / "out", workers=1, progress=False)
        first, *later = server.calls()
    assert (results["num_yes"], results["num_no"], results["complete"]) == (3, 1, True)
    assert first.json["response_format"] == {"type": "json_object"}
    assert len(later) == 4 and all("response_format" not in r.json for r in later)
    assert results["json_mode"] is False and results["judge_server_models"] is None


def test_bad_key_stops_the_run_with_one_clear_error(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    pred_file = tmp_path / "merge.jsonl"
    write_predictions(pred_file)
    denied = raw(json.dumps({"error": {"message": f"Incorrect API key provided: {KEY}"}}), code=401)
    with JudgeServer(default=denied) as server:
        assert judge_cli(pred_file, tmp_path / "judge", server, "--workers", "1", "--no-progress") == 1
        assert len(server.calls()) <= 2
    assert "HTTP 401" in caplog.text and "OPENAI_API_KEY" in caplog.text
    assert KEY not in caplog.text


def test_missing_key_is_a_clear_error(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    pred_file = tmp_path / "merge.jsonl"
    write_predictions(pred_file)
    assert main(["judge", "--pred-file", str(pred_file), "--output-dir", str(tmp_path / "j")]) == 1
    assert "OPENAI_API_KEY" in caplog.text


def python_dict(pred, score):
    return reply(repr({"pred": pred, "score": score}))


def test_python_dict_replies_through_eval_judge(tmp_path):
    """A server that ignores JSON mode and answers in the Python-dict form the protocol's prompts show:
    `videopanda eval judge` (a real process) reads every verdict; an object naming a key twice, in either
    form, is asked again."""
    expected = {f"item-{i}": ("yes" if i % 3 else "no", i % 6) for i in range(1, 21)}
    script = {key: [python_dict(*value)] for key, value in expected.items()}
    script["item-19"] = [reply("{'pred': 'yes', 'score': 5, 'score': 0}"), python_dict(*expected["item-19"])]
    script["item-20"] = [reply('{"pred": "no", "score": 2, "Score": 5}'), python_dict(*expected["item-20"])]
    pred_file, out = tmp_path / "merge.jsonl", tmp_path / "judge"
    pred_file.write_text("".join(json.dumps({"id": key, "question": f"what happens in {key}?", "answer": "a dog runs",
                                             "pred": f"pred of {key}"}) + "\n" for key in expected))
    with JudgeServer(script) as server:
        result = subprocess.run(
            [sys.executable, "-m", "videopanda", "eval", "judge", "--pred-file", str(pred_file), "--output-dir", str(out),
             "--api-base", server.url, "--model", "gpt-test", "--workers", "4", "--max-retries", "3", "--timeout", "5",
             "--dataset", "msvd", "--no-progress"],
            capture_output=True, text=True, timeout=120, env={**os.environ, "OPENAI_API_KEY": KEY})
        assert result.returncode == 0, result.stderr
        assert {key: len(server.calls(key)) for key in expected} == {key: 2 if key in ("item-19", "item-20") else 1
                                                                    for key in expected}
        assert all(r.json["response_format"] == {"type": "json_object"} for r in server.calls())
    verdicts = [json.loads(line) for line in (out / "verdicts.jsonl").read_text().splitlines()]
    assert {v["id"]: (v["verdict"], v["score"]) for v in verdicts} == expected
    results = json.loads((out / "results.json").read_text())
    assert (results["num_yes"], results["num_no"], results["num_items"], results["complete"]) == (14, 6, 20, True)
    assert results["accuracy"] == pytest.approx(70.0)
    assert results["score"] == pytest.approx(sum(score for _, score in expected.values()) / 20) == pytest.approx(2.4)
