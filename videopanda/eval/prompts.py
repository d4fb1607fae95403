"""Judge prompts (the paper's LLM-judged evaluation protocol), written for this project.

Zero-shot QA: the judge sees the question, the correct answer and the prediction and replies with a
JSON object `{"pred": "yes"|"no", "score": 0..5}`. Video-ChatGPT benchmark: one prompt per aspect,
each replying `{"score": 0..5}`; the consistency judge sees both questions and both predictions.
Changing any text here changes `PROMPT_VERSION`, which makes earlier verdicts stale (re-judged).
"""
from __future__ import annotations

import hashlib

Messages = list[dict[str, str]]

_QA_SYSTEM = (
    "You grade answers to questions about videos. You compare a predicted answer with the correct "
    "answer and decide whether they mean the same thing. Judge meaning, not wording: synonyms, "
    "paraphrases and extra words that do not change the meaning still match; a different or "
    "contradicting answer does not."
)

_QA_USER = (
    "Question: {question}\n"
    "Correct answer: {answer}\n"
    "Predicted answer: {pred}\n\n"
    "Does the predicted answer match the correct answer? Also rate the match with an integer from 0 "
    "(completely wrong) to 5 (fully correct).\n"
    'Reply with nothing but a JSON object such as {{"pred": "yes", "score": 4}}, where "pred" is '
    '"yes" or "no" and "score" is an integer from 0 to 5.'
)

_ASPECT_SYSTEM = (
    "You grade answers that a video assistant gave to questions about videos. You are given the "
    "correct answer written by a person who watched the video, and you rate one quality of the "
    "predicted answer: {quality}"
)

_SCORE_REPLY = (
    "Rate it with an integer from 0 (worst) to 5 (best).\n"
    'Reply with nothing but a JSON object such as {{"score": 3}}, where "score" is an integer from 0 to 5.'
)

ASPECTS: dict[str, str] = {
    "correctness": (
        "factual correctness. Does the prediction state the same facts as the correct answer, without "
        "errors, misread details or invented content? Small omissions matter less than wrong statements."
    ),
    "detail": (
        "detail orientation. Does the prediction cover everything the correct answer covers, and is it "
        "specific rather than vague or generic?"
    ),
    "context": (
        "contextual understanding. Does the prediction fit the overall situation the correct answer "
        "describes, staying relevant to what actually happens in the video?"
    ),
    "temporal": (
        "temporal understanding. Does the prediction describe the events in the same order, with the "
        "same before/after relations and changes over time, as the correct answer?"
    ),
    "consistency": (
        "consistency. The same content was asked about twice with differently worded questions. Are the "
        "two predictions consistent with each other and with the correct answer? Contradictions between "
        "them, or with the correct answer, lower the rating."
    ),
}

ASPECT_LABELS = {
    "correctness": "Correctness of information",
    "detail": "Detail orientation",
    "context": "Contextual understanding",
    "temporal": "Temporal understanding",
    "consistency": "Consistency",
}

_ASPECT_USER = "Question: {question}\nCorrect answer: {answer}\nPredicted answer: {pred}\n\n" + _SCORE_REPLY

_CONSISTENCY_USER = (
    "Question 1: {question1}\n"
    "Question 2: {question2}\n"
    "Correct answer (to both): {answer}\n"
    "Predicted answer to question 1: {pred1}\n"
    "Predicted answer to question 2: {pred2}\n\n" + _SCORE_REPLY
)


def qa_messages(question: str, answer: str, pred: str) -> Messages:
    return [{"role": "system", "content": _QA_SYSTEM},
            {"role": "user", "content": _QA_USER.format(question=question, answer=answer, pred=pred)}]


def aspect_messages(aspect: str, question: str, answer: str, pred: str) -> Messages:
    if aspect not in ASPECTS or aspect == "consistency":
        raise ValueError(f"aspect must be one of {[a for a in ASPECTS if a != 'consistency']}, got {aspect!r}")
    return [{"role": "system", "content": _ASPECT_SYSTEM.format(quality=ASPECTS[aspect])},
            {"role": "user", "content": _ASPECT_USER.format(question=question, answer=answer, pred=pred)}]


def consistency_messages(question1: str, question2: str, answer: str, pred1: str, pred2: str) -> Messages:
    return [{"role": "system", "content": _ASPECT_SYSTEM.format(quality=ASPECTS["consistency"])},
            {"role": "user", "content": _CONSISTENCY_USER.format(question1=question1, question2=question2,
                                                                 answer=answer, pred1=pred1, pred2=pred2)}]


PROMPT_VERSION = hashlib.sha1("\x00".join(
    [_QA_SYSTEM, _QA_USER, _ASPECT_SYSTEM, _SCORE_REPLY, _ASPECT_USER, _CONSISTENCY_USER, *ASPECTS.values()]
).encode()).hexdigest()[:12]
