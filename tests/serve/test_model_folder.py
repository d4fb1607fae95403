"""Model folders that cannot be loaded fail in one line naming the file, and loading picks the checkpoint's
dtype and checks that the model fits in memory first (`videopanda.serve.model_folder`, `videopanda.serve.infer`).

Folders are real: a tiny released-layout folder (sharded `.bin` + index, bf16), the same model saved by
`save_pretrained` (one safetensors file), and a 7B-shaped folder whose safetensors files carry the real
7B header and are sparse (the data region reads as zeros and takes no disk space).
"""
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.media import make_frames, write_video
from helpers.released import build_released_folder, released_config
from transformers import AutoModelForCausalLM

import videopanda  # noqa: F401  (registers the Auto classes)
from videopanda.model.checkpoint import file_tensors, stored_tensors
from videopanda.serve.infer import main
from videopanda.serve.model_folder import (
    MEMORY_BUDGET_ENV,
    MemoryBudgetError,
    ModelFolderError,
    available_memory,
    check_memory,
    estimate_memory,
    load_model,
    read_model_folder,
)

BIN_SHARD = "pytorch_model-00002-of-00003.bin"


@pytest.fixture(scope="module")
def released(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    folder = tmp_path_factory.mktemp("released")
    build_released_folder(folder, tiny_tokenizer_dir, seed=5)
    return folder


@pytest.fixture(scope="module")
def ours(released, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ours")
    AutoModelForCausalLM.from_pretrained(released).save_pretrained(folder)
    for name in ("tokenizer.model", "tokenizer_config.json"):
        shutil.copy(released / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("clip") / "clip.mp4", make_frames(16, height=32, width=48), fps=8)


def _edit_config(folder: Path, **fields) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(fields)
    (folder / "config.json").write_text(json.dumps(config))


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


class _NotAllowed:
    """A pickled object `weights_only` refuses."""

    def __reduce__(self):
        return (print, ("unpickled",))


def _bin_with_foreign_object(path: Path) -> None:
    state = torch.load(path, weights_only=True)
    state[next(iter(state))] = _NotAllowed()
    torch.save(state, path)


# case -> (base folder, corruption, file named in the message, words in the message)
CASES = {
    "config_truncated": ("released", lambda f: _truncate(f / "config.json"), "config.json", "not JSON"),
    "config_list": ("released", lambda f: (f / "config.json").write_text("[1, 2]"), "config.json", "JSON list"),
    "config_binary": ("released", lambda f: (f / "config.json").write_bytes(bytes(range(256)) * 8), "config.json",
                      "not JSON"),
    "config_int_as_text": ("released", lambda f: _edit_config(f, hidden_size="64"), "config.json",
                           "Field 'hidden_size' expected int, got str"),
    "config_frames_as_text": ("released", lambda f: _edit_config(f, num_frames="8"), "config.json",
                              "Field 'num_frames' expected int, got str"),
    "config_eps_as_text": ("released", lambda f: _edit_config(f, rms_norm_eps="small"), "config.json",
                           "Field 'rms_norm_eps' expected float, got str"),
    "config_bool_as_int": ("released", lambda f: _edit_config(f, num_hidden_layers=True), "config.json",
                           "Field 'num_hidden_layers' expected int, got bool"),
    "config_stab_not_object": ("ours", lambda f: _edit_config(f, stab=5), "config.json",
                               "Field 'stab' with value 5 doesn't match any type"),
    "config_stab_field": ("ours", lambda f: _edit_config(f, stab={"width": "wide"}), "config.json",
                          "stab: Field 'width' expected int, got str"),
    "config_dtype_unknown": ("released", lambda f: _edit_config(f, torch_dtype="int8"), "config.json", "int8"),
    "config_dtype_not_text": ("released", lambda f: _edit_config(f, torch_dtype=16), "config.json",
                              "dtype 16 is none of"),
    "index_names_missing_shard": ("released", lambda f: (f / BIN_SHARD).unlink(), BIN_SHARD, "is missing"),
    "index_truncated": ("released", lambda f: _truncate(f / "pytorch_model.bin.index.json"),
                        "pytorch_model.bin.index.json", "not a checkpoint index"),
    "index_map_is_list": ("released", lambda f: (f / "pytorch_model.bin.index.json").write_text('{"weight_map": []}'),
                          "pytorch_model.bin.index.json", "weight_map"),
    "no_weights": ("ours", lambda f: (f / "model.safetensors").unlink(), "", "no model weights"),
    "safetensors_truncated": ("ours", lambda f: _truncate(f / "model.safetensors", 0.99), "model.safetensors",
                              "cannot be read"),
    "safetensors_header_garbage": ("ours", lambda f: (f / "model.safetensors").write_bytes(
        b"\xff" * 64 + (f / "model.safetensors").read_bytes()[64:]), "model.safetensors", "cannot be read"),
    "bin_truncated": ("released", lambda f: _truncate(f / BIN_SHARD), BIN_SHARD, "truncated or corrupt"),
    "bin_garbage": ("released", lambda f: (f / BIN_SHARD).write_bytes(b"\x13\x37" * 3000), BIN_SHARD,
                    "truncated or corrupt"),
    "bin_foreign_pickle": ("released", lambda f: _bin_with_foreign_object(f / BIN_SHARD), BIN_SHARD,
                           "WeightsUnpickler"),
    "tokenizer_missing": ("released", lambda f: [(f / n).unlink() for n in ("tokenizer.model",
                                                                          "tokenizer_config.json")],
                          "", "no tokenizer"),
    "tokenizer_model_missing": ("released", lambda f: (f / "tokenizer.model").unlink(), "", "no tokenizer"),
    "tokenizer_model_garbage": ("released", lambda f: (f / "tokenizer.model").write_bytes(b"\x00\x01garbage" * 300),
                                "tokenizer.model", "not a SentencePiece"),
    "tokenizer_config_truncated": ("released", lambda f: _truncate(f / "tokenizer_config.json"),
                                   "tokenizer_config.json", "not JSON"),
    "tokenizer_larger_than_vocab": ("ours", lambda f: _edit_config(f, vocab_size=100), "", "vocab_size is 100"),
}


def _corrupt(case: str, tmp_path: Path, folders: dict[str, Path]) -> tuple[Path, str, str]:
    base, corrupt, named, words = CASES[case]
    folder = tmp_path / case
    shutil.copytree(folders[base], folder)
    corrupt(folder)
    return folder, named, words


def _one_line(capsys) -> str:
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("videopanda infer: error:"), captured.err
    return lines[0]


@pytest.mark.parametrize("case", sorted(CASES))
def test_broken_folder_is_one_line_naming_the_file_and_exit_2(case, released, ours, clip, tmp_path, capsys):
    folder, named, words = _corrupt(case, tmp_path, {"released": released, "ours": ours})
    code = main(["--model", str(folder), "--video", str(clip), "--question", "what", "--device", "cpu",
                 "--max-new-tokens", "2"])
    line = _one_line(capsys)
    assert code == 2, line
    assert str(folder / named) in line and words in line


@pytest.mark.parametrize("case", ["config_binary", "safetensors_truncated", "bin_foreign_pickle"])
def test_broken_folder_in_a_real_process_prints_no_traceback_or_warnings(case, released, ours, clip, tmp_path):
    folder, named, _ = _corrupt(case, tmp_path, {"released": released, "ours": ours})
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    result = subprocess.run([sys.executable, "-m", "videopanda", "infer", "--model", str(folder), "--video", str(clip),
                             "--question", "what", "--device", "cpu"], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("videopanda infer: error:") and str(folder / named) in lines[0]


@pytest.mark.parametrize("case", ["bin_truncated", "index_names_missing_shard", "config_list",
                                  "tokenizer_model_garbage"])
def test_load_model_raises_model_folder_error(case, released, ours, tmp_path):
    folder, named, words = _corrupt(case, tmp_path, {"released": released, "ours": ours})
    with pytest.raises(ModelFolderError, match=words) as caught:
        load_model(folder)
    assert str(folder / named) in str(caught.value) and "\n" not in str(caught.value)


# ---------------------------------------------------------------- dtype


def test_default_dtype_is_the_checkpoints_own(released, ours, tmp_path):
    model, _ = load_model(released)  # released config: "torch_dtype": "bfloat16"
    assert model.dtype == torch.bfloat16
    model, _ = load_model(released, dtype=torch.float32)
    assert model.dtype == torch.float32
    half = tmp_path / "half"
    shutil.copytree(ours, half)
    _edit_config(half, dtype="float16")
    assert load_model(half)[0].dtype == torch.float16
    plain = tmp_path / "plain"
    shutil.copytree(ours, plain)
    config = json.loads((plain / "config.json").read_text())
    (plain / "config.json").write_text(json.dumps({k: v for k, v in config.items()
                                                   if k not in ("dtype", "torch_dtype")}))
    assert load_model(plain)[0].dtype == torch.float32


# ---------------------------------------------------------------- memory


def test_tiny_folder_does_not_fit_in_1mb_in_a_real_process(released, clip):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **{MEMORY_BUDGET_ENV: "1MB"})
    result = subprocess.run([sys.executable, "-m", "videopanda", "infer", "--model", str(released),
                             "--video", str(clip), "--question", "what", "--device", "cpu", "--dtype", "float32"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "does not fit in memory" in lines[0] and "1.0 MB is available (VIDEOPANDA_MEMORY_BUDGET)" in lines[0]
    assert str(released) in lines[0] and "no smaller dtype would fit" in lines[0]


def test_a_smaller_dtype_is_suggested_when_it_fits_and_used_by_default(released):
    folder = read_model_folder(released)
    full = estimate_memory(folder, torch.float32).total
    half = estimate_memory(folder, torch.bfloat16).total
    assert half < full
    with pytest.raises(MemoryBudgetError, match="--dtype bfloat16 would fit") as caught:
        load_model(released, "cpu", torch.float32, memory_budget=half)
    assert "\n" not in str(caught.value)
    model, _ = load_model(released, "cpu", memory_budget=half)  # the checkpoint's bf16 fits exactly
    assert model.dtype == torch.bfloat16


def test_estimate_counts_what_the_model_keeps(released):
    """The released folder also holds aliases, a teacher and a compressor that loading ignores."""
    model = AutoModelForCausalLM.from_pretrained(released, dtype=torch.float32)
    loaded = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    estimate = estimate_memory(read_model_folder(released), torch.float32)
    # the model's state also holds the STAB's int64 BatchNorm counter, stored and counted as int64
    assert estimate.weights == loaded
    everything = sum(t.numel for t in stored_tensors(released)[0].values()) * 4
    assert estimate.weights < everything


def _write_sparse_safetensors(path: Path, shapes: dict[str, tuple[int, ...]], dtype: str = "BF16") -> None:
    """A real safetensors file: the header for `shapes`, then a data region left as a hole (reads as zeros)."""
    width = {"BF16": 2, "I64": 8}
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = width["I64" if name.endswith("num_batches_tracked") else dtype]
        for dim in shape:
            size *= dim
        header[name] = {"dtype": "I64" if name.endswith("num_batches_tracked") else dtype, "shape": list(shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with path.open("wb") as handle:
        handle.write(struct.pack("<Q", len(text)) + text)
        handle.truncate(8 + len(text) + offset)


@pytest.fixture(scope="module")
def seven_b(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    """Video-Panda-7B's LLM and projector shapes (docs/DESIGN.md, `checkpoint.py`) in two sharded safetensors
    files plus an index, with a few kept STAB tensors and keys that loading ignores (aliases, teacher, lmhra2)."""
    folder = tmp_path_factory.mktemp("seven_b")
    config = released_config(32000, hidden=4096, layers=32, heads=32, stab_width=1024)
    config["intermediate_size"] = 11008
    (folder / "config.json").write_text(json.dumps(config))
    for name in ("tokenizer.model", "tokenizer_config.json"):
        shutil.copy(tiny_tokenizer_dir / name, folder / name)
    first = {"model.embed_tokens.weight": (32000, 4096)}
    second = {"model.norm.weight": (4096,), "lm_head.weight": (32000, 4096)}
    for layer in range(32):
        shard = first if layer < 16 else second
        prefix = f"model.layers.{layer}."
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            shard[prefix + f"self_attn.{proj}.weight"] = (4096, 4096)
        shard[prefix + "mlp.gate_proj.weight"] = (11008, 4096)
        shard[prefix + "mlp.up_proj.weight"] = (11008, 4096)
        shard[prefix + "mlp.down_proj.weight"] = (4096, 11008)
        shard[prefix + "input_layernorm.weight"] = (4096,)
        shard[prefix + "post_attention_layernorm.weight"] = (4096,)
    second.update({
        "model.video_projector.0.weight": (4096, 1024), "model.video_projector.0.bias": (4096,),
        "model.video_projector.2.weight": (4096, 4096), "model.video_projector.2.bias": (4096,),
        "model.video_tower.class_embedding": (1024,),
        "model.video_tower.lmhra1.pos_embed.0.num_batches_tracked": (),
        "model.video_tower.lmhra2.pos_embed.1.weight": (682, 1024, 1, 1, 1),
        "model.mm_projector.2.weight": (4096, 4096),
        "model.vision_tower.class_embedding": (1024,),
        "model.video_teacher.vision_model.embeddings.patch_embedding.weight": (1024, 3, 14, 14),
    })
    weight_map = {}
    for number, shard in enumerate((first, second), start=1):
        name = f"model-0000{number}-of-00002.safetensors"
        _write_sparse_safetensors(folder / name, shard)
        weight_map.update(dict.fromkeys(shard, name))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


def test_7b_shaped_folder_needs_the_hand_computed_memory(seven_b):
    folder = read_model_folder(seven_b)
    llm = 2 * 32000 * 4096 + 32 * (4 * 4096 * 4096 + 3 * 11008 * 4096 + 2 * 4096) + 4096
    assert llm == 6_738_415_616
    projector = 4096 * 1024 + 4096 + 4096 * 4096 + 4096
    floating = llm + projector + 1024  # + the STAB's class_embedding; lmhra2, aliases and teacher are ignored
    counter = 8  # num_batches_tracked stays int64
    kv_positions = 2 * 32 * 4096 * 4096  # K and V, 32 layers, 32 heads x 128, 4096 positions
    for dtype, width in ((torch.bfloat16, 2), (torch.float32, 4)):
        weights = floating * width + counter
        estimate = estimate_memory(folder, dtype)
        assert (estimate.weights, estimate.kv_cache) == (weights, kv_positions * width)
        assert estimate.total == weights + kv_positions * width + weights // 10 + 256 * 2**20
    assert estimate_memory(folder, torch.bfloat16).total == 17_286_591_087
    assert estimate_memory(folder, torch.float32).total == 34_304_746_709


def test_7b_in_float32_does_not_fit_24gb_and_bfloat16_is_suggested(seven_b, monkeypatch):
    folder = read_model_folder(seven_b)
    monkeypatch.setenv(MEMORY_BUDGET_ENV, "24GB")
    with pytest.raises(MemoryBudgetError) as caught:
        check_memory(folder, torch.float32)
    message = str(caught.value)
    assert "needs about 34.3 GB" in message and "24.0 GB is available (VIDEOPANDA_MEMORY_BUDGET)" in message
    assert "--dtype bfloat16 would fit (about 17.3 GB)" in message
    assert check_memory(folder, torch.bfloat16).total == 17_286_591_087
    monkeypatch.setenv(MEMORY_BUDGET_ENV, "16GB")
    with pytest.raises(MemoryBudgetError, match="no smaller dtype would fit either"):
        check_memory(folder, torch.float32)


def test_legacy_bin_is_counted_by_its_file_size(tmp_path, tiny_tokenizer_dir):
    folder = tmp_path / "legacy"
    folder.mkdir()
    torch.save({"w": torch.zeros(1000)}, folder / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    assert file_tensors(folder / "pytorch_model.bin") is None
    config = released_config(512, hidden=64, layers=2, heads=4)
    (folder / "config.json").write_text(json.dumps({**config, "torch_dtype": "float32"}))
    for name in ("tokenizer.model", "tokenizer_config.json"):
        shutil.copy(tiny_tokenizer_dir / name, folder / name)
    size = (folder / "pytorch_model.bin").stat().st_size
    assert estimate_memory(read_model_folder(folder), torch.bfloat16).weights == size * 2 // 4


@pytest.mark.parametrize("budget, code, words", [
    ("lots", 1, "VIDEOPANDA_MEMORY_BUDGET: 'lots' is not a size"),
    ("999", 2, "999 B is available (VIDEOPANDA_MEMORY_BUDGET)"),
    ("512KiB", 2, "524.3 KB is available (VIDEOPANDA_MEMORY_BUDGET)"),
    ("1.5MB", 2, "1.5 MB is available (VIDEOPANDA_MEMORY_BUDGET)"),
])
def test_memory_budget_sizes_through_the_command(budget, code, words, released, clip, monkeypatch, capsys):
    """The budget is bytes or a size with a unit; one that is not a size is a bad request (exit 1), one
    smaller than the model is refused before any weight is read (exit 2), naming the budget as read."""
    monkeypatch.setenv(MEMORY_BUDGET_ENV, budget)
    assert main(["--model", str(released), "--video", str(clip), "--question", "what", "--device", "cpu"]) == code
    assert words in _one_line(capsys)


def test_a_budget_of_512mib_loads_the_tiny_folder_and_answers(released, clip, monkeypatch, capsys):
    monkeypatch.setenv(MEMORY_BUDGET_ENV, "512MiB")
    assert main(["--model", str(released), "--video", str(clip), "--question", "what", "--device", "cpu",
                 "--max-new-tokens", "2"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() and captured.err == ""


def test_available_memory_on_this_machine(monkeypatch):
    monkeypatch.delenv(MEMORY_BUDGET_ENV, raising=False)
    available, source = available_memory("cpu")
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    assert 0 < available <= int(meminfo["MemAvailable"].split()[0]) * 1024 * 1.05  # it moves a little meanwhile
    assert source == "available RAM"
    monkeypatch.setenv(MEMORY_BUDGET_ENV, "3GiB")
    assert available_memory("cpu") == (3 * 2**30, MEMORY_BUDGET_ENV)
