"""The quickstart's accuracies as its summaries and tables give them: each with its 95% Wilson interval
(`videopanda.eval.intervals`) and the number of questions it is over, overall and per question type."""
from __future__ import annotations

from videopanda.eval.intervals import percent_interval


def accuracies(results: dict) -> dict:
    """An exact-match judge's results.json -> {"accuracy", "accuracy_ci95", "num_yes", "num_items",
    "per_type": {type: accuracy}, "per_type_ci95": {type: [low, high]}, "per_type_num_yes": {type: yes},
    "per_type_num_items": {type: questions}}: accuracies in percent over all questions of their kind (a
    question without an answer or a verdict counts as wrong), intervals computed from the counts."""
    types = dict(sorted((results.get("per_type") or {}).items()))
    right, total = results["num_yes"], results["num_items"]
    return {"accuracy": results["accuracy"], "accuracy_ci95": percent_interval(right, total),
            "num_yes": right, "num_items": total,
            "per_type": {t: m["accuracy"] for t, m in types.items()},
            "per_type_ci95": {t: percent_interval(m["num_yes"], m["num_items"]) for t, m in types.items()},
            "per_type_num_yes": {t: m["num_yes"] for t, m in types.items()},
            "per_type_num_items": {t: m["num_items"] for t, m in types.items()}}


def counts(numbers: dict, question_type: str | None) -> tuple[int, int] | None:
    """(right, questions) of `accuracies(...)`'s overall (`question_type` None) or one type's accuracy;
    None for a summary written before the counts were recorded."""
    if question_type is None:
        return (numbers["num_yes"], numbers["num_items"]) if "num_items" in numbers else None
    if question_type not in numbers.get("per_type_num_items", {}):
        return None
    return numbers["per_type_num_yes"][question_type], numbers["per_type_num_items"][question_type]


def accuracy_cell(numbers: dict, question_type: str | None = None) -> str:
    """"92.0 [80.0, 97.8] (25)": the accuracy, its 95% interval and its count; the bare accuracy for a summary
    without counts."""
    value = numbers["accuracy"] if question_type is None else numbers["per_type"][question_type]
    counted = counts(numbers, question_type)
    if counted is None:
        return f"{value:.1f}"
    return pooled_cell(*counted)


def pooled_cell(right: int, total: int) -> str:
    """The accuracy right / total with its 95% Wilson interval and count, as `accuracy_cell` writes it."""
    if total == 0:
        return "n/a (0)"
    low, high = percent_interval(right, total)
    return f"{100.0 * right / total:.1f} [{low:.1f}, {high:.1f}] ({total})"
