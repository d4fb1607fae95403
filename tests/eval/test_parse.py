"""The judge reply parser: a JSON decoder (else a Python dict literal) finds the verdict anywhere in the
reply; strict about what it says, and a key named twice makes the reply invalid."""
import pytest

from videopanda.eval.judge import Verdict, VerdictError, normalize_answer, parse_verdict

VALID = [
    ('{"pred": "yes", "score": 5}', Verdict("yes", 5)),
    ('{"pred": "no", "score": 0}', Verdict("no", 0)),
    ('  {"pred": "YES", "score": 3}\n', Verdict("yes", 3)),
    ('{"Pred": " No ", "Score": 2}', Verdict("no", 2)),
    ('Sure! Here is my evaluation: {"pred": "no", "score": 1}. Let me know if you need more.', Verdict("no", 1)),
    ('```json\n{"pred": "yes", "score": 4}\n```', Verdict("yes", 4)),
    ('```\n{"pred": "no", "score": 2}\n```\nThe prediction misses the colour.', Verdict("no", 2)),
    ('{"pred": "yes", "score": "4"}', Verdict("yes", 4)),
    ('{"pred": "yes", "score": "4.0"}', Verdict("yes", 4)),
    ('{"pred": "yes", "score": 4.0}', Verdict("yes", 4)),
    ('{"reason": "close {but} not exact", "pred": "no", "score": 2}', Verdict("no", 2)),
    ('First {"note": 1} then {"pred": "yes", "score": 5}', Verdict("yes", 5)),
    ('{"pred": "yes", "score": 3, "extra": [1, 2]}', Verdict("yes", 3)),
    ('{"pred": "yes", "score": 4, "example": {"pred": "no", "score": 0}}', Verdict("yes", 4)),
    ('{"pred": "no", "score": 2}\n```json\n{"pred": "No", "score": "2"}\n```', Verdict("no", 2)),
    ('{"pred": "yes", "score": 3} trailing {broken', Verdict("yes", 3)),
    ('{"pred": "no", "note": "a } and a \\" inside", "score": 1}', Verdict("no", 1)),
    # Python dict literals, the form the protocol's prompts show
    ("{'pred': 'yes', 'score': 4}", Verdict("yes", 4)),
    ("Here's my evaluation: {'pred': 'No', 'score': '2'} I hope it's useful.", Verdict("no", 2)),
    ("```python\n{'pred': 'yes', 'score': 5.0}\n```", Verdict("yes", 5)),
    ("{ 'pred' : 'no',\n  'reason': \"it's a } and a { inside\",\n  'score': 1,\n}", Verdict("no", 1)),
    ("{'pred': 'yes', 'score': 3, 'sure': True, 'tags': ['a', ('b', None)]}", Verdict("yes", 3)),
    ("{'pred': 'no', 'score': 1} and as JSON {\"pred\": \"no\", \"score\": 1}", Verdict("no", 1)),
]

INVALID = [
    "",
    # a key named twice: which value the judge meant is unknown (never the last one winning)
    '{"pred": "yes", "score": 4, "score": 1}',
    '{"pred": "yes", "Pred": "no", "score": 3}',
    '{"pred": "yes", "score": 2, "detail": {"colour": 1, "colour": 2}}',
    "{'pred': 'yes', 'score': 4, 'score': 1}",
    "{'pred': 'no', 'score': 1, ' PRED': 'yes'}",
    # Python literals are read with the same checks, and nothing in them runs
    "{'pred': 'yes', 'score': 4.5}",
    "{'pred': 'yes', 'score': True}",
    "{'pred': b'yes', 'score': 4}",
    "{'pred': 'yes', 'score': __import__('os').getpid()}",
    "{'pred': 'yes', 'score': 4",
    "{'pred': 'yes', 'score': 4} but on reflection {'pred': 'no', 'score': 4}",
    "yes, score 4",
    '{"pred": "yes"}',
    '{"score": 4}',
    '{"pred": "maybe", "score": 3}',
    '{"pred": true, "score": 3}',
    '{"pred": "yes", "score": 4.5}',
    '{"pred": "yes", "score": "4.5"}',
    '{"pred": "yes", "score": 6}',
    '{"pred": "yes", "score": -1}',
    '{"pred": "yes", "score": true}',
    '{"pred": "yes", "score": "four"}',
    '{"pred": "yes", "score": null}',
    '{"pred": "yes", "score": 4',
    "[1, 2, 3]",
    'The format is {"pred": "yes", "score": 5}. My verdict: {"pred": "no", "score": 1}',
    '```json\n{"score": 3, "pred": "yes"}\n```\nOn reflection: {"pred": "yes", "score": 2}',
]


@pytest.mark.parametrize("text,expected", VALID)
def test_valid_replies(text, expected):
    assert parse_verdict(text) == expected


@pytest.mark.parametrize("text", INVALID)
def test_invalid_replies_are_rejected(text):
    with pytest.raises(VerdictError):
        parse_verdict(text)


def test_none_content_is_rejected():
    with pytest.raises(VerdictError):
        parse_verdict(None)


def test_score_only_verdicts():
    assert parse_verdict('Rating: {"score": 3}', need_pred=False) == Verdict(None, 3)
    assert parse_verdict('```json\n{"score": 0}\n```', need_pred=False) == Verdict(None, 0)
    with pytest.raises(VerdictError):
        parse_verdict('{"score": 2.5}', need_pred=False)


def test_normalize_answer():
    assert normalize_answer("The  Dog!") == "dog"
    assert normalize_answer("a man, an apple") == "man apple"
    assert normalize_answer("Theatre") == "theatre"
    assert normalize_answer("  RED.  ") == normalize_answer("red")
