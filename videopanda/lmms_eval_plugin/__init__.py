"""lmms-eval plugin: the `videopanda` model and task YAMLs for the four zero-shot QA sets of the paper.

Installed with the `lmms` extra (in lmms-eval's own environment: `scripts/setup_lmms_eval.sh`), the
package's `lmms_eval.models` entry point (`manifest`) registers the model with lmms-eval, so

    lmms-eval --model videopanda --model_args pretrained=MODEL_FOLDER \\
        --tasks videopanda_msvd_qa --include_path "$(python -m videopanda.lmms_eval_plugin)"

runs it; `VIDEOPANDA_DATA_ROOT` is the evaluation DATA_ROOT (the folder holding `eval/`; docs/DESIGN.md,
"Choices where the paper is silent": Evaluation).

- `model.VideoPandaLMMS`: lmms-eval's `generate_until` and `loglikelihood` over the project's
  `ModelAnswerer` (load_model, the processor's chat template, greedy generation).
- `qa_task.ZeroShotQATask` and `tasks/*.yaml`: MSVD-QA, MSRVTT-QA, TGIF-QA, ActivityNet-QA read from the
  project's layout with `videopanda.eval.datasets.load_zero_shot_qa`.

This module imports nothing from lmms-eval until lmms-eval asks for the manifest.
"""
from __future__ import annotations

from pathlib import Path

MODEL_ID = "videopanda"
TASKS_DIR = Path(__file__).resolve().parent / "tasks"
"""The folder to pass to lmms-eval's `--include_path`."""


def manifest():
    """The `lmms_eval.models` entry point: `videopanda` -> `VideoPandaLMMS` (a "simple" lmms-eval model)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path="videopanda.lmms_eval_plugin.model.VideoPandaLMMS")
