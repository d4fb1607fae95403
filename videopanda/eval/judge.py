"""The LLM judge: bounded retries, tolerant parsing with strict checks, resumable verdicts.

Protocol (SPEC section 7): an OpenAI-compatible chat model sees question, correct answer and
prediction and replies with `{"pred": "yes"|"no", "score": 0..5}` (benchmark aspects: `{"score": ..}`).

Dependability choices:
- The openai>=1 client is built with `max_retries=0`; retries are ours and bounded (`max_retries`):
  429, 408, 409, 5xx, timeouts and connection errors wait (the server's `Retry-After` /
  `retry-after-ms` when given, capped at `max_wait`; else exponential backoff with jitter) and try
  again; a reply that cannot be parsed into a valid verdict is asked again at once. 401/403/404 and a
  429 saying `insufficient_quota` stop the whole run (nothing else could succeed); other 4xx fail the item.
- The run stops early (`JudgeFatalError`, one line) when the server cannot be reached: a connection
  error before any reply of this run (nothing listens there), or `max_unreachable` requests in a row,
  across all items, that ended in a timeout, a connection error or a 5xx (a server that stalls or
  died). Every waiting worker stops at once; the verdicts written so far are kept for the rerun.
- Parsing: the first JSON-like object anywhere in the reply (plain, in prose, in a code fence, or a
  Python-style dict with single quotes), then strict values: pred yes/no (any case), score an integer
  0..5 ("4" and 4.0 are 4; 4.5, 6, true are invalid - never truncated). A reply in which another object
  states a different valid verdict is invalid too (asked again), never read as its first one.
- Temperature 0 and a fixed seed; the model name the server reports is recorded per verdict.
- Every verdict is appended to `verdicts.jsonl` when it arrives, with a fingerprint of what was
  judged (judge identity + the exact messages); a rerun judges only items without a verdict with the
  current fingerprint, so stale verdicts are never counted. Items that never yield a valid verdict go
  to `failed.jsonl` (rewritten each run, retried on the next) with the inference error rows
  (`pred: null`, never sent to the judge).
- Metrics cover every item: accuracy = yes / all items and score = sum of scores / all items, where an
  item without a verdict (judge failure or inference error) counts as wrong with score 0. `results.json`
  says how many items that is (`coverage`, `complete`, `failed_ids`); the CLI exits non-zero when
  anything failed unless `--allow-incomplete` is given. With nothing failed, accuracy is yes / (yes + no).
  `results.json` is removed when a run starts and written when it ends, so it never outlives a stopped run.
- The API key is read from `OPENAI_API_KEY`, handed only to the client, and scrubbed from any
  message this module writes or logs.
"""
from __future__ import annotations

import ast
import hashlib
import json
import os
import random
import re
import string
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, Protocol, Sequence
from urllib.parse import urlsplit, urlunsplit

from tqdm import tqdm

from videopanda.eval.prompts import PROMPT_VERSION, Messages, qa_messages
from videopanda.eval.records import JsonlAppender
from videopanda.io import make_dirs, write_json_atomic, write_jsonl_atomic
from videopanda.log import get_logger

logger = get_logger(__name__)

EXACT_LABEL = "exact-match (not comparable with GPT-judged numbers)"
API_KEY_ENV = "OPENAI_API_KEY"
_QUOTA = "insufficient_quota"  # OpenAI's 429 for an account without credit: no retry can succeed


class VerdictError(ValueError):
    """A judge reply without a valid verdict."""


class JudgeFatalError(RuntimeError):
    """An error no retry can fix (bad key, unknown model or endpoint): the run stops."""


@dataclass(frozen=True)
class Verdict:
    pred: str | None   # "yes" / "no"; None for score-only (benchmark) verdicts
    score: int         # 0..5


# ---------------------------------------------------------------------------------------------- parsing

_FENCE = re.compile(r"```[a-zA-Z]*\s*(.*?)```", re.DOTALL)


def _balanced_objects(text: str) -> list[str]:
    """Every `{...}` substring with balanced braces (quotes respected), outermost first, left to right."""
    found: list[str] = []
    for start, char in enumerate(text):
        if char != "{":
            continue
        depth, quote, escaped = 0, "", False
        for end in range(start, len(text)):
            c = text[end]
            if quote:
                if escaped:
                    escaped = False
                elif c == "\\":
                    escaped = True
                elif c == quote:
                    quote = ""
            elif c in "\"'":
                quote = c
            elif c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    found.append(text[start:end + 1])
                    break
    return found


def _load_object(candidate: str) -> dict | None:
    try:
        value = json.loads(candidate)
    except (json.JSONDecodeError, RecursionError):
        try:
            value = ast.literal_eval(candidate)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return None
    return value if isinstance(value, dict) else None


def extract_objects(text: str, required: Sequence[str]) -> list[dict[str, Any]]:
    """The dicts in `text` having all `required` keys (compared case-insensitively; returned with
    lower-case keys), in order: the whole text alone when it is one, else those in code fences, then
    any `{...}`. Raises VerdictError when there is none."""
    if not isinstance(text, str):
        raise VerdictError(f"reply content is {type(text).__name__}, not text")
    candidates = [text.strip(), *(m.strip() for m in _FENCE.findall(text)), *_balanced_objects(text)]
    found = []
    for index, candidate in enumerate(candidates):
        obj = _load_object(candidate)
        if obj is None:
            continue
        lowered = {str(k).strip().lower(): v for k, v in obj.items()}
        if all(key in lowered for key in required):
            if index == 0:
                return [lowered]
            found.append(lowered)
    if not found:
        raise VerdictError(f"no object with keys {list(required)} in reply {text[:200]!r}")
    return found


def _strict_score(value: Any) -> int:
    if isinstance(value, bool):
        raise VerdictError(f"score {value!r} is not a number")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise VerdictError(f"score {value!r} is not a number") from None
    if isinstance(value, float):
        if not value.is_integer():
            raise VerdictError(f"score {value!r} is not an integer")
        value = int(value)
    if not isinstance(value, int):
        raise VerdictError(f"score {value!r} is not a number")
    if not 0 <= value <= 5:
        raise VerdictError(f"score {value} is outside 0..5")
    return value


def parse_verdict(text: str, need_pred: bool = True) -> Verdict:
    """Tolerant extraction, strict validation. Raises VerdictError on anything not a clean verdict,
    including a reply whose objects state different valid verdicts (which one the judge meant is unknown)."""
    first, *others = extract_objects(text, ("pred", "score") if need_pred else ("score",))
    verdict = _verdict(first, need_pred)
    for other in others:
        try:
            alternative = _verdict(other, need_pred)
        except VerdictError:
            continue
        if alternative != verdict:
            raise VerdictError(f"conflicting verdicts {verdict} and {alternative} in reply {text[:200]!r}")
    return verdict


def _verdict(obj: dict[str, Any], need_pred: bool) -> Verdict:
    pred = None
    if need_pred:
        raw = obj["pred"]
        pred = raw.strip().lower() if isinstance(raw, str) else None
        if pred not in ("yes", "no"):
            raise VerdictError(f"pred {raw!r} is not 'yes' or 'no'")
    return Verdict(pred=pred, score=_strict_score(obj["score"]))


# ---------------------------------------------------------------------------------------------- judges


@dataclass
class JudgeItem:
    """One thing to judge. `preds` are the prediction(s) shown (two for consistency); `answer` the reference."""

    id: str
    messages: Messages
    answer: str
    preds: tuple[str, ...]
    need_pred: bool = True
    type: str | None = None


@dataclass
class Outcome:
    verdict: Verdict | None
    judge_model: str | None = None
    reply: str | None = None
    attempts: int = 0
    usage: dict[str, int] = field(default_factory=lambda: {"prompt_tokens": 0, "completion_tokens": 0})
    error: str | None = None


class Judge(Protocol):
    identity: str     # what the fingerprint of a verdict depends on
    label: str        # recorded as results["judge"]

    def judge(self, item: JudgeItem) -> Outcome: ...


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans({c: " " for c in string.punctuation})


def normalize_answer(text: str) -> str:
    """Lower case, punctuation to spaces, articles removed, whitespace collapsed."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split())


class ExactMatchJudge:
    """Offline judge: yes/5 when every prediction equals the answer after `normalize_answer`, else no/0."""

    identity = "exact-match"
    label = EXACT_LABEL

    def judge(self, item: JudgeItem) -> Outcome:
        match = all(normalize_answer(p) == normalize_answer(item.answer) for p in item.preds)
        verdict = Verdict(pred=("yes" if match else "no") if item.need_pred else None, score=5 if match else 0)
        return Outcome(verdict=verdict, judge_model="exact-match", attempts=1)


@dataclass
class JudgeConfig:
    api_base: str | None = None      # None: the client's default (OpenAI)
    model: str = "gpt-3.5-turbo"
    timeout: float = 60.0            # seconds per request
    max_retries: int = 5             # extra attempts after the first, per item
    backoff_base: float = 1.0        # seconds; attempt k waits base * 2**k (x1..1.25 jitter), capped
    backoff_max: float = 60.0
    max_wait: float = 300.0          # cap on a server's Retry-After
    seed: int | None = 1234
    temperature: float = 0.0
    max_unreachable: int = 16        # requests in a row without a usable reply that stop the run


def redact(text: str) -> str:
    """`text` with the API key (if set) replaced by `***`."""
    key = os.environ.get(API_KEY_ENV, "")
    return text.replace(key, "***") if len(key) >= 4 else text


def safe_url(url: str | None) -> str | None:
    """A URL without user:password@ and without a query string (never saved with secrets)."""
    if not url:
        return url
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _root_cause(error: BaseException) -> str:
    """The innermost cause's message (e.g. "[Errno 111] Connection refused" behind "Connection error.")."""
    seen: set[int] = set()
    while id(error) not in seen and (error.__cause__ or error.__context__) is not None:
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return " ".join(str(error).split()) or type(error).__name__


def _retry_after(headers: Any) -> float | None:
    if headers is None:
        return None
    try:
        millis = headers.get("retry-after-ms")
        if millis is not None:
            return max(0.0, float(millis) / 1000)
        value = headers.get("retry-after")
        if value is None:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, OverflowError):
        return None


class OpenAIJudge:
    """Judge through any OpenAI-compatible chat-completions endpoint."""

    label = "gpt"

    def __init__(self, config: JudgeConfig):
        import openai

        key = os.environ.get(API_KEY_ENV)
        if not key:
            raise JudgeFatalError(f"set {API_KEY_ENV} (any non-empty value for a local server without authentication)")
        self.openai = openai
        self.config = config
        self.identity = f"openai:{config.model}:t={config.temperature}:seed={config.seed}"
        self.client = openai.OpenAI(base_url=config.api_base, api_key=key, max_retries=0, timeout=config.timeout)
        self.endpoint = safe_url(config.api_base) or "the default endpoint"
        self._random = random.Random(config.seed)
        self._random_lock = threading.Lock()
        self._health_lock = threading.Lock()
        self._replied = False         # any HTTP reply in this run
        self._unreachable = 0         # requests in a row without a usable reply
        self._stop = threading.Event()
        self._fatal = ""

    def _stop_run(self, message: str) -> JudgeFatalError:
        with self._health_lock:
            if not self._fatal:
                self._fatal = message
            self._stop.set()
            return JudgeFatalError(self._fatal)

    def _reply_seen(self, usable: bool) -> None:
        with self._health_lock:
            self._replied = True
            if usable:
                self._unreachable = 0

    def _no_reply(self, error: BaseException, connection: bool) -> None:
        """Count a request without a usable reply; raise JudgeFatalError when the server is out of reach."""
        with self._health_lock:
            self._unreachable += 1
            count, replied = self._unreachable, self._replied
        if connection and not replied:
            raise self._stop_run(f"cannot reach the judge at {self.endpoint}: {redact(_root_cause(error))[:200]} "
                                 "(is the server running? check --api-base)")
        if count >= self.config.max_unreachable:
            raise self._stop_run(f"the judge at {self.endpoint} gave no usable reply to {count} requests in a row "
                                 f"(last: {redact(_root_cause(error))[:200]}); stopped, rerun to continue")

    def _backoff(self, attempt: int, headers: Any = None) -> float:
        server = _retry_after(headers)
        if server is not None:
            return min(server, self.config.max_wait)
        with self._random_lock:
            jitter = 1 + 0.25 * self._random.random()
        return min(self.config.backoff_max, self.config.backoff_base * 2 ** attempt) * jitter

    def judge(self, item: JudgeItem) -> Outcome:
        openai, config = self.openai, self.config
        outcome = Outcome(verdict=None)
        extra = {} if config.seed is None else {"seed": config.seed}
        for attempt in range(config.max_retries + 1):
            if self._stop.is_set():
                raise JudgeFatalError(self._fatal)
            outcome.attempts += 1
            try:
                response = self.client.chat.completions.create(
                    model=config.model, messages=item.messages, temperature=config.temperature, **extra)
            except openai.APIStatusError as error:
                status = error.status_code
                self._reply_seen(usable=status < 500)
                if status in (401, 403, 404):
                    hint = "check --model and --api-base" if status == 404 else f"check {API_KEY_ENV}"
                    raise self._stop_run(f"HTTP {status} from the judge at {self.endpoint} ({hint})") from None
                if status == 429 and _QUOTA in (getattr(error, "code", None), getattr(error, "type", None)):
                    raise self._stop_run(f"HTTP 429 {_QUOTA} from the judge at {self.endpoint} (the account behind "
                                         f"{API_KEY_ENV} has no quota left; waiting does not help)") from None
                outcome.error = f"HTTP {status}: {redact(str(error))[:300]}"
                if status >= 500:
                    self._no_reply(error, connection=False)
                if status in (408, 409, 429) or status >= 500:
                    wait = self._backoff(attempt, error.response.headers)
                else:
                    return outcome
            except openai.APITimeoutError as error:
                outcome.error = f"{type(error).__name__}: {redact(str(error))[:300]}"
                self._no_reply(error, connection=False)
                wait = self._backoff(attempt)
            except openai.APIConnectionError as error:
                outcome.error = f"{type(error).__name__}: {redact(_root_cause(error))[:300]}"
                self._no_reply(error, connection=True)
                wait = self._backoff(attempt)
            except (ValueError, openai.APIResponseValidationError) as error:  # a body that is not JSON
                self._reply_seen(usable=True)
                outcome.error = f"malformed response: {redact(str(error))[:300]}"
                wait = 0.0
            else:
                self._reply_seen(usable=True)
                wait = 0.0
                try:
                    model = getattr(response, "model", None)
                    outcome.judge_model = None if model is None else str(model)
                    usage = getattr(response, "usage", None)
                    if usage is not None:
                        outcome.usage["prompt_tokens"] += int(getattr(usage, "prompt_tokens", 0) or 0)
                        outcome.usage["completion_tokens"] += int(getattr(usage, "completion_tokens", 0) or 0)
                    outcome.reply = response.choices[0].message.content
                    outcome.verdict = parse_verdict(outcome.reply, need_pred=item.need_pred)
                    outcome.error = None
                    return outcome
                except (VerdictError, AttributeError, IndexError, KeyError, TypeError, ValueError) as error:
                    outcome.error = f"invalid reply: {redact(str(error))[:300]}"
            if attempt < config.max_retries:
                logger.debug("item %s attempt %d: %s; retrying in %.2fs", item.id, attempt + 1, outcome.error, wait)
                if self._stop.wait(wait):
                    raise JudgeFatalError(self._fatal)
        return outcome


# ---------------------------------------------------------------------------------------------- running


def _redacted(text: str | None) -> str | None:
    return redact(text) if isinstance(text, str) else text


def qa_judge_items(records: Sequence[dict[str, Any]]) -> tuple[list[JudgeItem], list[dict[str, Any]]]:
    """Merged prediction rows -> (items to judge, inference error rows that are not judged)."""
    items, failed = [], []
    for record in records:
        if record.get("pred") is None:
            failed.append(record)
            continue
        question, answer, pred = str(record["question"]), str(record["answer"]), str(record["pred"])
        items.append(JudgeItem(id=str(record["id"]), messages=qa_messages(question, answer, pred), answer=answer,
                               preds=(pred,), type=None if record.get("type") is None else str(record["type"])))
    return items, failed


def fingerprint(judge: Judge, item: JudgeItem) -> str:
    payload = json.dumps([judge.identity, item.messages, item.answer, list(item.preds), item.need_pred])
    return hashlib.sha1(payload.encode("utf-8")).hexdigest()


METRIC_RULE = ("accuracy = yes / all items, score = sum of scores / all items; an item without a verdict "
               "(inference error or judge failure) counts as wrong with score 0")


def compute_metrics(verdicts: Sequence[dict[str, Any]], num_failed: int = 0, accuracy: bool = True) -> dict[str, Any]:
    """verdicts: records with "verdict" (yes/no or None) and "score"; `num_failed` more items have none.

    Accuracy in percent = yes / all items (None for score-only judging), score = sum / all items;
    both None when there are no items at all."""
    yes = sum(1 for v in verdicts if v.get("verdict") == "yes")
    no = sum(1 for v in verdicts if v.get("verdict") == "no")
    scores = [v["score"] for v in verdicts]
    total = len(verdicts) + num_failed
    return {
        "accuracy": 100.0 * yes / total if accuracy and total else None,
        "score": sum(scores) / total if total else None,
        "num_yes": yes,
        "num_no": no,
        "num_judged": len(scores),
        "num_items": total,
    }


def coverage_text(total: int, judged: int, failed_inference: int, failed_judge: int, unit: str = "questions") -> str:
    """E.g. "400 questions: 396 judged, 4 failed (1 without a prediction, 3 without a verdict)"."""
    failed = failed_inference + failed_judge
    text = f"{total} {unit}: {judged} judged"
    if failed:
        text += f", {failed} failed ({failed_inference} without a prediction, {failed_judge} without a verdict)"
    return text


def run_judge(items: Sequence[JudgeItem], judge: Judge, output_dir: str | os.PathLike,
              failed_inference: Sequence[dict[str, Any]] = (), workers: int = 8,
              metadata: dict[str, Any] | None = None, progress: bool = True, accuracy: bool = True,
              unit: str = "questions") -> dict[str, Any]:
    """Judge every item without a current verdict; write verdicts.jsonl, failed.jsonl, results.json.

    failed_inference: prediction rows with `pred: null` (listed in failed.jsonl, never judged, counted
    as wrong). `accuracy`: False for score-only judging. Returns the results dict written to
    `results.json` (see the module docstring for the metrics and `complete`).
    """
    output_dir = make_dirs(output_dir)
    ids = [item.id for item in items]
    if len(set(ids)) != len(ids):
        raise ValueError("judge items must have unique ids")
    prints = {item.id: fingerprint(judge, item) for item in items}
    for stale in ("results.json", "failed.jsonl"):
        (output_dir / stale).unlink(missing_ok=True)

    failures: list[dict[str, Any]] = []
    spent = {"prompt_tokens": 0, "completion_tokens": 0}
    with JsonlAppender(output_dir / "verdicts.jsonl") as writer:
        current: dict[str, dict[str, Any]] = {}
        for record in writer.records:
            if prints.get(str(record.get("id"))) == record.get("fingerprint"):
                current[str(record["id"])] = record
        stale = sum(1 for r in writer.records if prints.get(str(r.get("id"))) != r.get("fingerprint"))
        if stale:
            logger.warning("%s: ignoring %d verdict line(s) for other predictions, prompts or judges",
                           writer.path, stale)
        todo = [item for item in items if item.id not in current]
        if current:
            logger.info("%d of %d items already judged, %d to go", len(items) - len(todo), len(items), len(todo))

        pool = ThreadPoolExecutor(max_workers=max(1, workers))
        try:
            futures = {pool.submit(judge.judge, item): item for item in todo}
            for future in tqdm(as_completed(futures), total=len(futures), desc="judge", unit="item",
                               disable=not progress):
                item = futures[future]
                outcome = future.result()
                for key in spent:
                    spent[key] += outcome.usage[key]
                if outcome.verdict is None:
                    logger.warning("item %s: no valid verdict after %d attempt(s): %s",
                                   item.id, outcome.attempts, outcome.error)
                    failures.append({"id": item.id, "stage": "judge", "attempts": outcome.attempts,
                                     "error": outcome.error, "reply": _redacted(outcome.reply),
                                     "usage": outcome.usage, "type": item.type})
                    continue
                record = {"id": item.id, "verdict": outcome.verdict.pred, "score": outcome.verdict.score,
                          "judge_model": outcome.judge_model, "attempts": outcome.attempts,
                          "usage": outcome.usage, "reply": _redacted(outcome.reply), "fingerprint": prints[item.id]}
                if item.type is not None:
                    record["type"] = item.type
                writer.append(record)
                current[item.id] = record
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    judged = [current[item.id] for item in items if item.id in current]
    failed_rows = [{"id": r["id"], "stage": "inference", "error": r.get("error"), "type": r.get("type")}
                   for r in failed_inference]
    order = {item_id: index for index, item_id in enumerate(ids)}
    failures.sort(key=lambda r: order[r["id"]])
    write_jsonl_atomic(output_dir / "failed.jsonl", failed_rows + failures)

    # tokens behind the verdicts counted here plus those spent this run on items that failed
    usage = {key: sum(r.get("usage", {}).get(key, 0) for r in judged + failures) for key in spent}
    models = sorted({str(r.get("judge_model")) for r in judged if r.get("judge_model") is not None})
    failed_all = failed_rows + failures
    results: dict[str, Any] = dict(metadata or {})
    results.update(compute_metrics(judged, num_failed=len(failed_all), accuracy=accuracy))
    results.update({
        "num_failed": len(failures),
        "num_failed_inference": len(failed_rows),
        "complete": not failed_all,
        "coverage": coverage_text(len(judged) + len(failed_all), len(judged), len(failed_rows), len(failures), unit),
        "failed_ids": {"inference": [r["id"] for r in failed_rows], "judge": [r["id"] for r in failures]},
        "metric_rule": METRIC_RULE,
        "judge": judge.label,
        "judge_model": models[0] if len(models) == 1 else models,
        "usage": usage,
        "usage_this_run": spent,
        "prompt_version": PROMPT_VERSION,
    })
    types = sorted({str(r["type"]) for r in judged + failed_all if r.get("type") is not None})
    if types:
        results["per_type"] = {
            t: compute_metrics([r for r in judged if r.get("type") == t],
                               num_failed=sum(1 for r in failed_all if r.get("type") == t), accuracy=accuracy)
            for t in types}
    if len(models) > 1:
        logger.warning("verdicts come from several judge models: %s", ", ".join(models))
    write_json_atomic(output_dir / "results.json", results)
    return results
