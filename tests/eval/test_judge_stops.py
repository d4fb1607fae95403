"""The judge never reports a number with exit 0 that its verdicts do not support: a server that refuses
connections, rejects the key, stalls, errors or talks nonsense stops the run early or ends it with a
non-zero exit, and the numbers always cover every question. Real HTTP on 127.0.0.1."""
import json
import logging
import time

import pytest
from helpers.judge_server import JudgeServer, closed_url, raw, reply, slow, status

from videopanda.eval.cli import main

KEY = "sk-stops-KEY-0b7e"
N = 10


def verdict(pred, score):
    return reply(json.dumps({"pred": pred, "score": score}))


def write_predictions(path, n=N):
    rows = [{"id": f"item-{i}", "question": f"what happens in item-{i}?", "answer": "a dog runs",
             "pred": f"pred of item-{i}"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def judge(pred_file, out, url, *extra):
    """The judge with its default retries and workers unless `extra` says otherwise."""
    return main(["judge", "--pred-file", str(pred_file), "--output-dir", str(out), "--api-base", url,
                 "--model", "gpt-test", "--dataset", "msvd", "--no-progress", *extra])


def error_lines(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.fixture(autouse=True)
def key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


def test_refused_connections_stop_the_run_within_seconds(tmp_path, caplog):
    pred_file, out = write_predictions(tmp_path / "merge.jsonl"), tmp_path / "judge"
    with JudgeServer(default=verdict("yes", 5)) as server:
        url = server.url
        assert judge(pred_file, out, url) == 0
    assert (out / "results.json").exists()
    # the server is gone (its port refuses connections) and the predictions changed: nothing can be judged
    write_predictions(pred_file, n=N + 5)
    caplog.clear()
    start = time.monotonic()
    assert judge(pred_file, out, url) == 1
    elapsed = time.monotonic() - start
    assert elapsed < 10, f"took {elapsed:.1f}s"
    [message] = error_lines(caplog)
    assert message.startswith(f"cannot reach the judge at {url}: ") and "refused" in message.lower()
    assert not (out / "results.json").exists(), "the results of the earlier run must not outlive this one"


def test_nothing_listening_from_the_start(tmp_path, caplog):
    pred_file, url = write_predictions(tmp_path / "merge.jsonl"), closed_url()
    start = time.monotonic()
    assert judge(pred_file, tmp_path / "judge", url) == 1
    assert time.monotonic() - start < 10
    assert len(error_lines(caplog)) == 1 and "cannot reach the judge" in error_lines(caplog)[0]
    assert not (tmp_path / "judge" / "results.json").exists()


@pytest.mark.parametrize("code", [401, 403])
def test_rejected_key_stops_after_one_request(tmp_path, caplog, code):
    """The run's first request goes alone: the other workers never send theirs."""
    pred_file = write_predictions(tmp_path / "merge.jsonl", n=40)
    with JudgeServer(default=status(code)) as server:
        assert judge(pred_file, tmp_path / "judge", server.url, "--workers", "4") == 1
        assert len(server.calls()) == 1
    [message] = error_lines(caplog)
    assert f"HTTP {code} from the judge" in message and "OPENAI_API_KEY" in message
    assert not (tmp_path / "judge" / "results.json").exists()


@pytest.mark.parametrize("fault", ["stall", "server errors"])
def test_a_server_without_usable_replies_stops_the_run(tmp_path, caplog, fault):
    """After the client's own retries, 4 items in a row without a usable reply stop the run: at most the
    first request, 4 failed items and 3 more in flight, each tried twice (--max-retries 1)."""
    pred_file = write_predictions(tmp_path / "merge.jsonl", n=40)
    action = slow(3.0, '{"pred": "yes", "score": 5}') if fault == "stall" else status(503)
    with JudgeServer(default=action) as server:
        start = time.monotonic()
        assert judge(pred_file, tmp_path / "judge", server.url, "--workers", "4", "--timeout", "0.2",
                     "--max-retries", "1") == 1
        elapsed = time.monotonic() - start
        calls = len(server.calls())
    assert elapsed < 10 and calls <= 1 + (4 + 3) * 2, (elapsed, calls)
    [message] = error_lines(caplog)
    assert "gave no usable reply to 4 items in a row, each tried 2 times" in message
    assert "rerun to continue" in message


def test_every_verdict_failed_is_an_error_with_numbers_over_all_questions(tmp_path, caplog, capsys):
    pred_file, out = write_predictions(tmp_path / "merge.jsonl"), tmp_path / "judge"
    with JudgeServer(default=reply("I cannot judge this.")) as server:
        assert judge(pred_file, out, server.url, "--max-retries", "1") == 1
        assert len(server.calls()) == 2 * N
        results = json.loads((out / "results.json").read_text())
        assert results["accuracy"] == 0.0 and results["score"] == 0.0 and results["complete"] is False
        assert results["coverage"] == f"{N} questions: 0 judged, {N} failed (0 without a prediction, {N} without a verdict)"
        assert len(results["failed_ids"]["judge"]) == N
        assert "incomplete" in error_lines(caplog)[-1]
        # Wilson 0/10: [0, z^2 / (10 + z^2)] = [0, 27.75]; every score 0
        assert (f"accuracy 0.00 [0.00, 27.75]  score 0.000 [0.000, 0.000]  ({N} questions: 0 judged, {N} failed"
                in capsys.readouterr().out)
        # accepted explicitly: exit 0, the same numbers over all questions
        assert judge(pred_file, out, server.url, "--max-retries", "0", "--allow-incomplete") == 0
        again = json.loads((out / "results.json").read_text())
        assert (again["accuracy"], again["num_items"], again["complete"]) == (0.0, N, False)


# Faults that leave some verdicts standing: whatever the exit code, a results.json claims only what its
# verdicts support, and exit 0 only comes with every question judged (or with --allow-incomplete).
FAULTS = {
    "healthy": {},
    "rate limited": {"item-1": [status(429, retry_after=0.05), verdict("no", 1)]},
    "one item always 500": {"item-2": [status(500)]},
    "one item nonsense": {"item-3": [raw("<html>busy</html>", content_type="text/html")]},
    "one item too slow": {"item-4": [slow(1.0, '{"pred": "yes", "score": 5}')]},
    "bad verdicts": {"item-5": [verdict("maybe", 3)], "item-6": [verdict("yes", 7)]},
}


@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize("allow", [False, True])
def test_no_number_without_support(tmp_path, fault, allow):
    pred_file, out = write_predictions(tmp_path / "merge.jsonl"), tmp_path / "judge"
    with JudgeServer(FAULTS[fault], default=verdict("yes", 4)) as server:
        code = judge(pred_file, out, server.url, "--workers", "3", "--max-retries", "2", "--timeout", "0.3",
                     *(["--allow-incomplete"] if allow else []))
    results = json.loads((out / "results.json").read_text())
    verdicts = [json.loads(line) for line in (out / "verdicts.jsonl").read_text().splitlines()]
    yes = sum(1 for v in verdicts if v["verdict"] == "yes")
    assert results["num_items"] == N and results["num_judged"] == len(verdicts)
    assert results["accuracy"] == pytest.approx(100 * yes / N)
    assert results["score"] == pytest.approx(sum(v["score"] for v in verdicts) / N)
    assert results["complete"] == (len(verdicts) == N)
    assert code == (0 if results["complete"] or allow else 1)
    assert (fault == "healthy" or fault == "rate limited") == results["complete"]
