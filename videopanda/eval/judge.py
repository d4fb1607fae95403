"""The LLM judge: the openai client's retries, JSON-decoder parsing, resumable verdicts.

Protocol (the paper's evaluation with an LLM judge): an OpenAI-compatible chat model sees question,
correct answer and prediction and replies with `{"pred": "yes"|"no", "score": 0..5}` (benchmark aspects:
`{"score": ..}`).

Dependability choices:
- Transport: the openai client's own retries and backoff (`max_retries`; it retries 408, 409, 429,
  5xx, timeouts and connection errors with exponential backoff and honours `Retry-After` /
  `retry-after-ms` up to its own limit). What stays ours: a reply that does not parse into a valid
  verdict (or a body that is not a chat completion) is asked again, at most `max_retries` times.
- The first requests of a run go alone and without retries: `GET /models` (the models the server
  reports, recorded in `results.json`) and the first item. A refused connection, 401/403/404 or a 429
  saying `insufficient_quota` there stops the run at once (`JudgeFatalError`, one line); so do they
  later, once the client has given up on them. `max_unreachable` items in a row that ended, after the
  client's retries, in a timeout or a 5xx stop the run too (a server that stalls or died). Every
  waiting worker stops; the verdicts written so far are kept for the rerun.
- Parsing: JSON mode (`response_format={"type": "json_object"}`) where the server offers it
  (`json_mode="auto"` drops it for the rest of the run after a 400 that names `response_format`); the
  reply is read with `json.JSONDecoder.raw_decode` at each top-level `{`, so an object inside prose or a
  code fence is found; where that is not JSON, a Python dict literal there (`{'pred': 'yes', 'score': 4}`,
  the form the protocol's prompts show, which servers give even in JSON mode) is read with
  `ast.literal_eval`. An object that names a key twice (case and spaces aside) makes the reply invalid,
  in either form, never its last value winning. Then strict values: pred yes/no (any case), score an integer 0..5 ("4" and 4.0 are
  4; 4.5, 6, true are invalid - never truncated). A reply in which another object states a different
  valid verdict is invalid too (asked again), never read as its first one.
- Temperature 0 and a fixed seed; the model name the server reports is recorded per verdict.
- Every verdict is appended to `verdicts.jsonl` when it arrives, with a fingerprint of what was
  judged (judge identity + the exact messages) and a `content` hash of the judged item (id, reference,
  predictions) that `eval judge-agreement` pairs runs by; a rerun judges only items without a verdict
  with the current fingerprint, so stale verdicts are never counted. Items that never yield a valid
  verdict go to `failed.jsonl` (rewritten each run, retried on the next) with the inference error rows
  (`pred: null`, never sent to the judge).
- Metrics cover every item: accuracy = yes / all items and score = sum of scores / all items, where an
  item without a verdict (judge failure or inference error) counts as wrong with score 0. `results.json`
  says how many items that is (`coverage`, `complete`, `failed_ids`); the CLI exits non-zero when
  anything failed unless `--allow-incomplete` is given. With nothing failed, accuracy is yes / (yes + no).
  Each number has its 95% interval beside it (`accuracy_ci95`, `score_ci95`; see `intervals`).
  `results.json` is removed when a run starts and written when it ends, so it never outlives a stopped run.
- The API key is read from `OPENAI_API_KEY`, handed only to the client, and scrubbed from any
  message this module writes or logs.
"""
from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import string
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence
from urllib.parse import urlsplit, urlunsplit

from tqdm import tqdm

from videopanda.eval.intervals import INTERVAL_RULE, bootstrap_interval, percent_interval
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

class _RepeatedKey(Exception):
    """An object in a reply that names one key twice (keys compared as the verdict reads them)."""


def _key(name: Any) -> str:
    """How a verdict compares keys: "Pred", " pred" and "pred" are one key."""
    return str(name).strip().lower()


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json's object_pairs_hook: the object as a dict, or _RepeatedKey when a key comes twice."""
    keys = [_key(name) for name, _ in pairs]
    if len(set(keys)) != len(keys):
        raise _RepeatedKey(f"key {next(k for k in keys if keys.count(k) > 1)!r} appears twice in one object")
    return dict(pairs)


_DECODER = json.JSONDecoder(object_pairs_hook=_unique_pairs)
# A Python dict literal without a dict inside: quoted strings (which may hold braces) and anything but a
# brace between `{` and `}`; one regular-expression match, so prose full of braces stays cheap to read.
_FLAT_DICT = re.compile(r"""\{\s*(?=['"}])(?:[^{}'"]|'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*")*\}""")


def _literal_dict(text: str, start: int) -> tuple[dict[Any, Any], int] | None:
    """The Python dict literal (`{'pred': 'yes', 'score': 4}`) opening at `text[start]` and the index
    after it, read with `ast.literal_eval` (no code runs); None when there is none. _RepeatedKey when it
    names a key twice (in a literal the later value would silently win)."""
    match = _FLAT_DICT.match(text, start)
    if match is None:
        return None
    try:
        tree = ast.parse(match.group(), mode="eval")
        if not isinstance(tree.body, ast.Dict):
            return None
        _unique_pairs([(key.value, None) for key in tree.body.keys if isinstance(key, ast.Constant)])
        return ast.literal_eval(tree), match.end()
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
        return None


def _top_level_objects(text: str) -> list[Any]:
    """Every object at top level in `text`, left to right: what `json.JSONDecoder.raw_decode` reads from
    each `{` that is not inside an object read before, else the Python dict literal there.
    Raises _RepeatedKey for an object (or one inside it) that names a key twice."""
    found: list[Any] = []
    position = text.find("{")
    while position >= 0:
        try:
            value, end = _DECODER.raw_decode(text, position)
        except (json.JSONDecodeError, RecursionError):
            literal = _literal_dict(text, position)
            if literal is None:
                position = text.find("{", position + 1)
                continue
            value, end = literal
        found.append(value)
        position = text.find("{", end)
    return found


def extract_objects(text: str, required: Sequence[str]) -> list[dict[str, Any]]:
    """The objects in `text` (JSON, else Python dict literals) having all `required` keys (compared
    case-insensitively; returned with lower-case keys), in order. Raises VerdictError when there is
    none, or when an object names a key twice (which of its values the judge meant is unknown)."""
    if not isinstance(text, str):
        raise VerdictError(f"reply content is {type(text).__name__}, not text")
    try:
        objects = _top_level_objects(text)
    except _RepeatedKey as error:
        raise VerdictError(f"{error} in reply {text[:200]!r}") from None
    found = []
    for value in objects:
        lowered = {_key(k): v for k, v in value.items()}
        if all(key in lowered for key in required):
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

    def description(self) -> dict[str, Any]: ...


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

    def description(self) -> dict[str, Any]:
        return {}


@dataclass
class JudgeConfig:
    api_base: str | None = None      # None: the client's default (OpenAI)
    model: str = "gpt-3.5-turbo"
    timeout: float = 60.0            # seconds per request
    max_retries: int = 5             # the client's retries per request; also our re-asks after a bad reply
    seed: int | None = 1234
    temperature: float = 0.0
    json_mode: str = "auto"          # "auto" | "on" | "off": send response_format json_object
    max_unreachable: int = 4         # items in a row without a usable reply (after the client's retries)


JSON_MODES = ("auto", "on", "off")


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


class OpenAIJudge:
    """Judge through any OpenAI-compatible chat-completions endpoint (see the module docstring)."""

    label = "gpt"

    def __init__(self, config: JudgeConfig):
        import openai

        if config.json_mode not in JSON_MODES:
            raise ValueError(f"json_mode must be one of {JSON_MODES}, got {config.json_mode!r}")
        key = os.environ.get(API_KEY_ENV)
        if not key:
            raise JudgeFatalError(f"set {API_KEY_ENV} (any non-empty value for a local server without authentication)")
        self.openai = openai
        self.config = config
        self.identity = f"openai:{config.model}:t={config.temperature}:seed={config.seed}"
        self.client = openai.OpenAI(base_url=config.api_base, api_key=key, max_retries=config.max_retries,
                                    timeout=config.timeout)
        self.endpoint = safe_url(config.api_base) or "the default endpoint"
        self.json_mode = config.json_mode != "off"
        self.server_models: list[dict[str, Any]] | None = None
        self._first_lock = threading.Lock()
        self._first_done = False
        self._health_lock = threading.Lock()
        self._unreachable = 0         # items in a row without a usable reply
        self._stop = threading.Event()
        self._fatal = ""

    def description(self) -> dict[str, Any]:
        """What results.json records about the judge beyond its verdicts."""
        return {"judge_server_models": self.server_models, "json_mode": self.json_mode,
                "max_retries": self.config.max_retries, "timeout": self.config.timeout}

    # -- run health

    def _stop_run(self, message: str) -> JudgeFatalError:
        with self._health_lock:
            if not self._fatal:
                self._fatal = message
            self._stop.set()
            return JudgeFatalError(self._fatal)

    def _usable(self) -> None:
        with self._health_lock:
            self._unreachable = 0

    def _unusable(self, error: BaseException) -> None:
        with self._health_lock:
            self._unreachable += 1
            count = self._unreachable
        if count >= self.config.max_unreachable:
            raise self._stop_run(
                f"the judge at {self.endpoint} gave no usable reply to {count} items in a row, each tried "
                f"{self.config.max_retries + 1} times (last: {redact(_root_cause(error))[:200]}); stopped, "
                "rerun to continue")

    def _fatal_status(self, error: Any) -> JudgeFatalError | None:
        """The run-stopping error for an HTTP status error no retry can fix, else None."""
        status = error.status_code
        if status in (401, 403, 404):
            hint = "check --model and --api-base" if status == 404 else f"check {API_KEY_ENV}"
            return self._stop_run(f"HTTP {status} from the judge at {self.endpoint} ({hint})")
        if status == 429 and _QUOTA in (getattr(error, "code", None), getattr(error, "type", None)):
            return self._stop_run(f"HTTP 429 {_QUOTA} from the judge at {self.endpoint} (the account behind "
                                  f"{API_KEY_ENV} has no quota left; waiting does not help)")
        return None

    def _unreachable_error(self, error: BaseException) -> JudgeFatalError:
        return self._stop_run(f"cannot reach the judge at {self.endpoint}: {redact(_root_cause(error))[:200]} "
                              "(is the server running? check --api-base)")

    def _list_models(self) -> None:
        """Record the models the server reports (`GET /models`, no retries). A refused connection or a
        rejected key stops the run; a server without the route is fine."""
        openai = self.openai
        try:
            page = self.client.with_options(max_retries=0).models.list()
            self.server_models = [model.model_dump(exclude_none=True) for model in page.data]
        except openai.APIConnectionError as error:
            if not isinstance(error, openai.APITimeoutError):
                raise self._unreachable_error(error) from None
        except openai.APIStatusError as error:
            if error.status_code in (401, 403):
                raise self._fatal_status(error) from None
            logger.debug("GET /models at %s: HTTP %d", self.endpoint, error.status_code)
        except (openai.APIResponseValidationError, ValueError, TypeError, AttributeError) as error:
            logger.debug("GET /models at %s: unusable reply (%s)", self.endpoint, error)

    # -- requests

    def _request(self, item: JudgeItem, retries: int) -> Any:
        config = self.config
        extra: dict[str, Any] = {} if config.seed is None else {"seed": config.seed}
        if self.json_mode:
            extra["response_format"] = {"type": "json_object"}
        client = self.client if retries == config.max_retries else self.client.with_options(max_retries=retries)
        return client.chat.completions.create(model=config.model, messages=item.messages,
                                              temperature=config.temperature, **extra)

    def _send(self, item: JudgeItem) -> Any:
        """One chat request with the client's retries. The run's first goes alone, after `GET /models`,
        without retries, so that a dead server or a rejected key stops the run after one request; when
        it fails in a way retries may fix (408, 409, 429 but no quota, 5xx, a timeout) it is sent again
        with them."""
        openai = self.openai
        if not self._first_done:
            with self._first_lock:
                if not self._first_done:
                    try:
                        self._list_models()
                        return self._request(item, retries=0)
                    except openai.APIStatusError as error:
                        fatal = self._fatal_status(error)
                        if fatal is not None:
                            raise fatal from None
                        if not (error.status_code in (408, 409, 429) or error.status_code >= 500):
                            raise
                    except openai.APITimeoutError:
                        pass
                    except openai.APIConnectionError as error:
                        raise self._unreachable_error(error) from None
                    finally:
                        self._first_done = True
        if self._stop.is_set():
            raise JudgeFatalError(self._fatal)
        return self._request(item, self.config.max_retries)

    def judge(self, item: JudgeItem) -> Outcome:
        openai, config = self.openai, self.config
        outcome = Outcome(verdict=None)
        asks = 0
        while asks <= config.max_retries:
            if self._stop.is_set():
                raise JudgeFatalError(self._fatal)
            asks += 1
            outcome.attempts += 1
            try:
                response = self._send(item)
            except openai.APIStatusError as error:
                fatal = self._fatal_status(error)
                if fatal is not None:
                    raise fatal from None
                if (error.status_code == 400 and config.json_mode == "auto" and self.json_mode
                        and "response_format" in str(error)):
                    self.json_mode = False
                    logger.warning("the judge at %s refuses JSON mode (HTTP 400); asking without it", self.endpoint)
                    asks -= 1
                    continue
                outcome.error = f"HTTP {error.status_code}: {redact(str(error))[:300]}"
                if error.status_code >= 500 or error.status_code in (408, 429):
                    self._unusable(error)
                return outcome
            except openai.APITimeoutError as error:
                outcome.error = f"{type(error).__name__}: {redact(str(error))[:300]}"
                self._unusable(error)
                return outcome
            except openai.APIConnectionError as error:
                raise self._unreachable_error(error) from None
            except (ValueError, openai.APIResponseValidationError) as error:  # a body that is not JSON
                self._usable()
                outcome.error = f"malformed response: {redact(str(error))[:300]}"
                continue
            self._usable()
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
                logger.debug("item %s ask %d: %s; asking again", item.id, asks, outcome.error)
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


def content_hash(item: JudgeItem) -> str:
    """What was judged, whoever judged it and with whichever prompt: id, reference and predictions."""
    payload = json.dumps([item.id, item.answer, list(item.preds), item.need_pred])
    return hashlib.sha1(payload.encode("utf-8")).hexdigest()[:16]


METRIC_RULE = ("accuracy = yes / all items, score = sum of scores / all items; an item without a verdict "
               "(inference error or judge failure) counts as wrong with score 0")


def compute_metrics(verdicts: Sequence[dict[str, Any]], num_failed: int = 0, accuracy: bool = True) -> dict[str, Any]:
    """verdicts: records with "verdict" (yes/no or None) and "score"; `num_failed` more items have none.

    Accuracy in percent = yes / all items (None for score-only judging), score = sum / all items;
    both None when there are no items at all. Their 95% intervals (`intervals`): `accuracy_ci95`
    [low, high] in percent (Wilson), `score_ci95` (bootstrap over the `num_items` items, a failed one
    scoring 0); None with the number they belong to."""
    yes = sum(1 for v in verdicts if v.get("verdict") == "yes")
    no = sum(1 for v in verdicts if v.get("verdict") == "no")
    scores = [v["score"] for v in verdicts]
    total = len(verdicts) + num_failed
    return {
        "accuracy": 100.0 * yes / total if accuracy and total else None,
        "accuracy_ci95": percent_interval(yes, total) if accuracy else None,
        "score": sum(scores) / total if total else None,
        "score_ci95": bootstrap_interval([*scores, *[0] * num_failed]),
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

    with JsonlAppender(output_dir / "verdicts.jsonl") as writer:
        current = _current_verdicts(writer, prints)
        todo = [item for item in items if item.id not in current]
        if current:
            logger.info("%d of %d items already judged, %d to go", len(items) - len(todo), len(items), len(todo))
        new, failures, spent = _judge_pending(todo, judge, prints, writer, workers, progress)
        current.update(new)

    # a verdict counts under its item's type now (a dataset relabelled since keeps its verdicts)
    judged = [{**current[item.id], "type": item.type} for item in items if item.id in current]
    failed_rows = [{"id": r["id"], "stage": "inference", "error": r.get("error"),
                    "type": None if r.get("type") is None else str(r["type"])} for r in failed_inference]
    order = {item_id: index for index, item_id in enumerate(ids)}
    failures.sort(key=lambda r: order[r["id"]])
    write_jsonl_atomic(output_dir / "failed.jsonl", failed_rows + failures)
    results = dict(metadata or {})
    results.update(_results(judged, failed_rows, failures, spent, judge, accuracy, unit))
    write_json_atomic(output_dir / "results.json", results)
    return results


def _current_verdicts(writer: JsonlAppender, prints: dict[str, str]) -> dict[str, dict[str, Any]]:
    """The verdict lines already in `writer`'s file whose fingerprint is the item's current one, by id;
    the others (other predictions, prompts or judges) are ignored with a warning."""
    def is_current(record: dict[str, Any]) -> bool:
        return record.get("fingerprint") is not None and prints.get(str(record.get("id"))) == record["fingerprint"]

    current = {str(r["id"]): r for r in writer.records if is_current(r)}
    stale = sum(1 for r in writer.records if not is_current(r))
    if stale:
        logger.warning("%s: ignoring %d line(s) that are not verdicts for these predictions, prompt and judge",
                       writer.path, stale)
    return current


def _judge_pending(todo: Sequence[JudgeItem], judge: Judge, prints: dict[str, str], writer: JsonlAppender,
                   workers: int, progress: bool
                   ) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]], dict[str, int]]:
    """Judge `todo` on `workers` threads, appending each verdict line to `writer` as it arrives.

    -> (the new verdict lines by id, a failure row per item left without a valid verdict, the tokens
    spent this run). A `JudgeFatalError` stops every waiting worker; the verdicts of the requests already
    under way when it came are still written (they are paid for), then it is raised."""
    verdicts: dict[str, dict[str, Any]] = {}
    failures: list[dict[str, Any]] = []
    spent = {"prompt_tokens": 0, "completion_tokens": 0}

    def record(item: JudgeItem, outcome: Outcome) -> None:
        for key in spent:
            spent[key] += outcome.usage[key]
        if outcome.verdict is None:
            logger.warning("item %s: no valid verdict after %d attempt(s): %s", item.id, outcome.attempts, outcome.error)
            failures.append({"id": item.id, "stage": "judge", "attempts": outcome.attempts, "error": outcome.error,
                             "reply": _redacted(outcome.reply), "usage": outcome.usage, "type": item.type})
            return
        verdicts[item.id] = _verdict_line(item, outcome, prints[item.id])
        writer.append(verdicts[item.id])

    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    futures = {pool.submit(judge.judge, item): item for item in todo}
    recorded = set()
    try:
        for future in tqdm(as_completed(futures), total=len(futures), desc="judge", unit="item",
                           disable=not progress):
            recorded.add(future)
            record(futures[future], future.result())
    except JudgeFatalError:
        pool.shutdown(wait=True, cancel_futures=True)
        for future, item in futures.items():
            if future not in recorded and not future.cancelled() and future.exception() is None:
                outcome = future.result()
                if outcome.verdict is not None:
                    record(item, outcome)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return verdicts, failures, spent


def _verdict_line(item: JudgeItem, outcome: Outcome, item_fingerprint: str) -> dict[str, Any]:
    """The verdicts.jsonl line of an item judged with a valid verdict."""
    line = {"id": item.id, "verdict": outcome.verdict.pred, "score": outcome.verdict.score,
            "judge_model": outcome.judge_model, "attempts": outcome.attempts, "usage": outcome.usage,
            "reply": _redacted(outcome.reply), "fingerprint": item_fingerprint, "content": content_hash(item)}
    if item.type is not None:
        line["type"] = item.type
    return line


def _results(judged: list[dict[str, Any]], failed_inference: list[dict[str, Any]], failures: list[dict[str, Any]],
             spent: dict[str, int], judge: Judge, accuracy: bool, unit: str) -> dict[str, Any]:
    """results.json's fields after the metadata: the metrics over all items (overall and per type), the
    coverage, the failed ids, the judge and the tokens spent."""
    # tokens behind the verdicts counted here plus those spent this run on items that failed
    usage = {key: sum(r.get("usage", {}).get(key, 0) for r in judged + failures) for key in spent}
    models = sorted({str(r.get("judge_model")) for r in judged if r.get("judge_model") is not None})
    failed_all = failed_inference + failures
    results = compute_metrics(judged, num_failed=len(failed_all), accuracy=accuracy)
    results.update({
        "num_failed": len(failures),
        "num_failed_inference": len(failed_inference),
        "complete": not failed_all,
        "coverage": coverage_text(len(judged) + len(failed_all), len(judged), len(failed_inference), len(failures),
                                  unit),
        "failed_ids": {"inference": [r["id"] for r in failed_inference], "judge": [r["id"] for r in failures]},
        "metric_rule": METRIC_RULE,
        "interval_rule": INTERVAL_RULE,
        "judge": judge.label,
        "judge_model": models[0] if len(models) == 1 else models,
        "usage": usage,
        "usage_this_run": spent,
        "prompt_version": PROMPT_VERSION,
        **judge.description(),
    })
    types = sorted({str(r["type"]) for r in judged + failed_all if r.get("type") is not None})
    if types:
        results["per_type"] = {
            t: compute_metrics([r for r in judged if r.get("type") == t],
                               num_failed=sum(1 for r in failed_all if r.get("type") == t), accuracy=accuracy)
            for t in types}
    if len(models) > 1:
        logger.warning("verdicts come from several judge models: %s", ", ".join(models))
    return results
