"""What produced a prediction file: its fingerprint, stored beside it, checked before anything is reused.

Every prediction file `X.jsonl` (a chunk of `eval qa`, or the output of `eval merge`) has a sidecar
`X.run.json`:

    {"format": "videopanda-predictions/2",
     "fingerprint": {"model": {"id": ..., "experiment": ..., "switches": {...}}, "generation": {"max_new_tokens": ..., "greedy": true},
                     "system": <system text>, "frames": {num_frames, frames_per_chunk, image_size,
                     teacher_image_size, patch_size}, "dtype": ..., "code_version": ..., "dataset": ...},
     "fingerprint_id": <16 hex digits>,
     ...information that does not take part in the comparison (model path, device, batch size, ...)}

With frames sampled by rate (`--fps`), "frames" has no num_frames and holds "sampling": {fps, min_frames,
max_frames} instead; sampling by count (the default, or `--num-frames`) adds nothing, so the folders written
before sampling by rate existed keep their fingerprints and still resume.

Two runs may share a prediction folder only when their fingerprints are equal: `eval qa` checks every
sidecar of its output folder before answering anything (and writes its own before the first answer),
`eval merge` refuses chunks with different fingerprints and writes the merged file's sidecar with a
SHA-256 of the merged file, which `eval judge` checks before recording the fingerprint in
`results.json`. A prediction file with rows but no sidecar has no known origin: `eval qa` never
resumes into one.

Format 2 prediction lines record the video they answer (`qa.prediction_record`); format 1 lines did
not, so nothing tells which clip a format-1 answer is about: `eval qa` and `eval merge` refuse a
folder with a format-1 chunk (`check_current_format`; re-run into a new folder), while `eval judge`
still scores a format-1 merged file, which was checked against the dataset when it was merged.

The model's identity (`model_identity`, `videopanda.serve.model_folder`) is a hash of its small files and a
checksum of every weight byte, read without loading the weights: two checkpoints of one training run (same
names and sizes, other weights, even a single changed value) differ, and predictions of an adapter, of its
base and of another adapter on the same base never mix. Beside the identity,
the fingerprint names the experiment that trained the model and its ablation switches (`model_experiment`:
the folder's `experiment.json` and config), so `results.json` says which model variant it scores.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from videopanda.io import write_json_atomic
from videopanda.log import get_logger
from videopanda.serve.model_folder import model_identity

logger = get_logger(__name__)

FORMAT = "videopanda-predictions/2"
_OLDER_FORMATS = ("videopanda-predictions/1",)   # lines without the video they answer
SIDECAR_SUFFIX = ".run.json"


class ProvenanceError(Exception):
    """Predictions whose origin does not match (or cannot be known); the message names the file."""


# ------------------------------------------------------------------------------------ the model


def model_experiment(folder: str | os.PathLike, model_config: Any) -> dict[str, Any]:
    """Which experiment trained a model folder and with which switches: {"experiment": its name (None for a
    folder this project did not train), "switches": the STAB's ablation switches from `model_config` (the
    folder's VideoPandaConfig) and "distillation" (cosine, mse, off; None when unknown)}."""
    from videopanda.constants import EXPERIMENT_RECORD
    from videopanda.model.stab import ABLATION_SWITCHES

    path = Path(folder) / EXPERIMENT_RECORD
    record: dict[str, Any] = {}
    if path.is_file():
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ProvenanceError(f"{path}: unreadable ({' '.join(str(error).split())})") from None
    switches = {k: model_config.stab[k] for k in ABLATION_SWITCHES}
    switches["distillation"] = (record.get("switches") or {}).get("distillation")
    return {"experiment": record.get("name"), "switches": switches}


# ------------------------------------------------------------------------------------ fingerprints


def fingerprint_id(fingerprint: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(value, dict):
        return {prefix: value}
    flat: dict[str, Any] = {}
    for key, inner in value.items():
        flat.update(_flatten(inner, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _short(value: Any, at: int = 0) -> str:
    """`value` in at most ~40 characters; a long text around position `at` (where two texts differ)."""
    if not isinstance(value, str):
        return json.dumps(value)
    if len(value) <= 40:
        return repr(value)
    start = max(0, at - 15)
    return ("..." if start else "") + repr(value[start:start + 35])[1:-1] + "..."


def describe_difference(old: dict[str, Any], new: dict[str, Any], old_info: dict[str, Any] | None = None,
                        new_info: dict[str, Any] | None = None) -> str:
    """`old` -> `new` in a few words: the fields that differ, the model as its folder paths."""
    a, b = _flatten(old), _flatten(new)
    parts = []
    for key in sorted(a.keys() | b.keys()):
        if a.get(key) == b.get(key):
            continue
        if key == "model.id":
            where = [(info or {}).get("model_path") for info in (old_info, new_info)]
            parts.append(f"model {where[0] or a.get(key)} -> {where[1] or b.get(key)} (other config or weights)")
        else:
            old_value, new_value = a.get(key), b.get(key)
            at = 0
            if isinstance(old_value, str) and isinstance(new_value, str):
                at = next((i for i, (x, y) in enumerate(zip(old_value, new_value)) if x != y),
                          min(len(old_value), len(new_value)))
            parts.append(f"{key} {_short(old_value, at)} -> {_short(new_value, at)}")
    return "; ".join(parts) or "same settings"


# ------------------------------------------------------------------------------------ sidecars


def sidecar_path(predictions: str | os.PathLike) -> Path:
    """`X.jsonl` -> `X.run.json`."""
    path = Path(predictions)
    return path.with_name(path.name.removesuffix(".jsonl") + SIDECAR_SUFFIX)


def read_sidecar(predictions: str | os.PathLike) -> dict[str, Any] | None:
    """The sidecar of a prediction file, or None when there is none."""
    path = sidecar_path(predictions)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ProvenanceError(f"{path}: unreadable ({' '.join(str(error).split())})") from None
    if not isinstance(data, dict) or data.get("format") not in (FORMAT, *_OLDER_FORMATS) or not isinstance(
            data.get("fingerprint"), (dict, type(None))):
        raise ProvenanceError(f"{path}: not a prediction sidecar ({FORMAT})")
    return data


def check_current_format(predictions: str | os.PathLike, sidecar: dict[str, Any] | None) -> None:
    """Raise ProvenanceError when `sidecar` (of the chunk file `predictions`) is of an older format, whose
    lines cannot be reused or merged (see the module docstring)."""
    if sidecar is not None and sidecar["format"] != FORMAT:
        raise ProvenanceError(f"{predictions}: written in the older {sidecar['format']} format, whose lines do not "
                              f"record which video they answer; re-run `videopanda eval qa` into a new --output-dir")


def is_merged_file(predictions: str | os.PathLike) -> bool:
    """True for the output of `eval merge` (its sidecar holds the file's SHA-256), never a chunk."""
    sidecar = read_sidecar(predictions)
    return sidecar is not None and sidecar.get("sha256") is not None


def chunk_files(folder: str | os.PathLike) -> list[Path]:
    """The `*.jsonl` prediction files of `folder` that are chunks (merged files left out), sorted."""
    return [path for path in sorted(Path(folder).glob("*.jsonl")) if not is_merged_file(path)]


def _has_rows(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except FileNotFoundError:
        return False


def check_prediction_folder(out_file: str | os.PathLike, fingerprint: dict[str, Any],
                            info: dict[str, Any] | None = None) -> None:
    """Raise ProvenanceError unless every prediction file in `out_file`'s folder (itself included)
    was made with `fingerprint`. A sidecar without rows beside it describes nothing and is ignored."""
    out_file = Path(out_file)
    folder = out_file.parent
    if not folder.is_dir():
        return
    wanted = fingerprint_id(fingerprint)
    for path in sorted(folder.glob("*.jsonl")):
        if not _has_rows(path):
            continue
        sidecar = read_sidecar(path)
        check_current_format(path, sidecar)
        advice = f"pass another --output-dir (or delete {path} to answer its questions again)"
        if sidecar is None or sidecar["fingerprint"] is None:
            why = f"no {sidecar_path(path).name}" if sidecar is None else f"{sidecar_path(path).name} has no fingerprint"
            raise ProvenanceError(f"{path}: holds predictions of unknown origin ({why}); {advice}")
        if sidecar.get("fingerprint_id") != wanted or sidecar["fingerprint"] != fingerprint:
            difference = describe_difference(sidecar["fingerprint"], fingerprint, sidecar, info)
            raise ProvenanceError(f"{path}: holds predictions made with other settings ({difference}); {advice}")


def claim_prediction_file(out_file: str | os.PathLike, fingerprint: dict[str, Any],
                          info: dict[str, Any] | None = None) -> dict[str, Any]:
    """Check the folder (see `check_prediction_folder`), then write `out_file`'s sidecar. -> the sidecar."""
    check_prediction_folder(out_file, fingerprint, info)
    sidecar = {"format": FORMAT, "fingerprint": fingerprint, "fingerprint_id": fingerprint_id(fingerprint),
               **(info or {})}
    existing = read_sidecar(out_file)
    if existing != sidecar:
        write_json_atomic(sidecar_path(out_file), sidecar)
    return sidecar


def write_merged_sidecar(merged: str | os.PathLike, text: str, fingerprint: dict[str, Any] | None,
                         info: dict[str, Any]) -> Path:
    """The sidecar of a merged prediction file whose exact content is `text`."""
    sidecar = {"format": FORMAT, "fingerprint": fingerprint,
               "fingerprint_id": fingerprint_id(fingerprint) if fingerprint else None,
               "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(), **info}
    return write_json_atomic(sidecar_path(merged), sidecar)


def read_merged_sidecar(merged: str | os.PathLike) -> dict[str, Any] | None:
    """The sidecar of a merged file after checking that it describes this very file (SHA-256);
    None when there is none. Raises ProvenanceError when it describes another version of the file."""
    merged = Path(merged)
    sidecar = read_sidecar(merged)
    if sidecar is None:
        return None
    if sidecar.get("sha256") is None:
        raise ProvenanceError(f"{sidecar_path(merged)}: a chunk's sidecar, not a merged file's; "
                              "judge the output of `videopanda eval merge`")
    actual = hashlib.sha256(merged.read_bytes()).hexdigest()
    if actual != sidecar["sha256"]:
        raise ProvenanceError(f"{merged}: changed since {sidecar_path(merged).name} was written "
                              "(rerun `videopanda eval merge`)")
    return sidecar
