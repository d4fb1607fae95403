"""Model folders that cannot be loaded fail in one line naming the file, and loading picks the checkpoint's
dtype and checks that the model fits in memory first (`videopanda.serve.infer`, `videopanda.model.checkpoint`).

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
from videopanda.serve.infer import (
    MEMORY_BUDGET_ENV,
    MemoryBudgetError,
    ModelFolderError,
    available_memory,
    cgroup_headroom,
    check_memory,
    check_model_folder,
    estimate_memory,
    load_model,
    main,
    parse_size,
    validate_model_folder,
)
from videopanda.model.checkpoint import file_tensors, stored_tensors

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
                           "'hidden_size' must be an integer"),
    "config_frames_as_text": ("released", lambda f: _edit_config(f, num_frames="8"), "config.json",
                              "'num_frames' must be an integer"),
    "config_eps_as_text": ("released", lambda f: _edit_config(f, rms_norm_eps="small"), "config.json",
                           "'rms_norm_eps' must be a number"),
    "config_bool_as_int": ("released", lambda f: _edit_config(f, num_hidden_layers=True), "config.json",
                           "'num_hidden_layers' must be an integer"),
    "config_stab_not_object": ("ours", lambda f: _edit_config(f, stab=5), "config.json", "'stab' must be an object"),
    "config_stab_field": ("ours", lambda f: _edit_config(f, stab={"width": "wide"}), "config.json",
                          "'stab.width' must be an integer"),
    "config_dtype_unknown": ("released", lambda f: _edit_config(f, torch_dtype="int8"), "config.json", "int8"),
    "config_dtype_not_text": ("released", lambda f: _edit_config(f, torch_dtype=16), "config.json",
                              "'torch_dtype' must be a string"),
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


def test_training_folders_validate_without_a_video_panda_type(released, tmp_path):
    """`validate_model_folder` with other model types (an EVE/Llama init) and without a tokenizer (a teacher)."""
    llama = tmp_path / "llama"
    shutil.copytree(released, llama)
    _edit_config(llama, model_type="llama")
    assert validate_model_folder(llama, ("videopanda", "eve", "llama"))["model_type"] == "llama"
    with pytest.raises(ModelFolderError, match="model_type is 'llama'"):
        validate_model_folder(llama)
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "config.json").write_text(json.dumps({"model_type": "LanguageBindVideo", "hidden_size": "n/a"}))
    torch.save({"vision_model.post_layernorm.weight": torch.ones(4)}, teacher / "pytorch_model.bin")
    assert validate_model_folder(teacher, None, tokenizer=False)["model_type"] == "LanguageBindVideo"
    _truncate(teacher / "pytorch_model.bin")
    with pytest.raises(ModelFolderError, match="pytorch_model.bin cannot be read"):
        validate_model_folder(teacher, None, tokenizer=False)
    _truncate(llama / BIN_SHARD)
    with pytest.raises(ModelFolderError, match=BIN_SHARD):
        validate_model_folder(llama, ("llama",))


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
    config = check_model_folder(released)
    full = estimate_memory(released, config, torch.float32).total
    half = estimate_memory(released, config, torch.bfloat16).total
    assert half < full
    with pytest.raises(MemoryBudgetError, match="--dtype bfloat16 would fit") as caught:
        load_model(released, "cpu", torch.float32, memory_budget=half)
    assert "\n" not in str(caught.value)
    model, _ = load_model(released, "cpu", memory_budget=half)  # the checkpoint's bf16 fits exactly
    assert model.dtype == torch.bfloat16


def test_estimate_counts_what_the_model_keeps(released):
    """The released folder also holds aliases, a teacher and a compressor that loading ignores."""
    config = check_model_folder(released)
    model = AutoModelForCausalLM.from_pretrained(released, dtype=torch.float32)
    loaded = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    estimate = estimate_memory(released, config, torch.float32)
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
    config = check_model_folder(seven_b)
    llm = 2 * 32000 * 4096 + 32 * (4 * 4096 * 4096 + 3 * 11008 * 4096 + 2 * 4096) + 4096
    assert llm == 6_738_415_616
    projector = 4096 * 1024 + 4096 + 4096 * 4096 + 4096
    floating = llm + projector + 1024  # + the STAB's class_embedding; lmhra2, aliases and teacher are ignored
    counter = 8  # num_batches_tracked stays int64
    kv_positions = 2 * 32 * 4096 * 4096  # K and V, 32 layers, 32 heads x 128, 4096 positions
    for dtype, width in ((torch.bfloat16, 2), (torch.float32, 4)):
        weights = floating * width + counter
        estimate = estimate_memory(seven_b, config, dtype)
        assert (estimate.weights, estimate.kv_cache) == (weights, kv_positions * width)
        assert estimate.total == weights + kv_positions * width + weights // 10 + 256 * 2**20
    assert estimate_memory(seven_b, config, torch.bfloat16).total == 17_286_591_087
    assert estimate_memory(seven_b, config, torch.float32).total == 34_304_746_709


def test_7b_in_float32_does_not_fit_24gb_and_bfloat16_is_suggested(seven_b, monkeypatch):
    config = check_model_folder(seven_b)
    monkeypatch.setenv(MEMORY_BUDGET_ENV, "24GB")
    with pytest.raises(MemoryBudgetError) as caught:
        check_memory(seven_b, config, torch.float32)
    message = str(caught.value)
    assert "needs about 34.3 GB" in message and "24.0 GB is available (VIDEOPANDA_MEMORY_BUDGET)" in message
    assert "--dtype bfloat16 would fit (about 17.3 GB)" in message
    assert check_memory(seven_b, config, torch.bfloat16).total == 17_286_591_087
    monkeypatch.setenv(MEMORY_BUDGET_ENV, "16GB")
    with pytest.raises(MemoryBudgetError, match="no smaller dtype would fit either"):
        check_memory(seven_b, config, torch.float32)


def test_legacy_bin_is_counted_by_its_file_size(tmp_path):
    folder = tmp_path / "legacy"
    folder.mkdir()
    torch.save({"w": torch.zeros(1000)}, folder / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    assert file_tensors(folder / "pytorch_model.bin") is None
    config = released_config(512, hidden=64, layers=2, heads=4)
    from videopanda.model.videopanda import VideoPandaConfig

    config = VideoPandaConfig(**{k: v for k, v in config.items() if k not in ("architectures", "model_type")})
    size = (folder / "pytorch_model.bin").stat().st_size
    assert estimate_memory(folder, config, torch.bfloat16, torch.float32).weights == size * 2 // 4


def test_parse_size():
    assert parse_size("1MB") == 10**6 and parse_size("24GB") == 24 * 10**9 and parse_size("512MiB") == 512 * 2**20
    assert parse_size("1000") == 1000 and parse_size("1.5g") == 1_500_000_000
    with pytest.raises(ValueError, match="not a size"):
        parse_size("lots")


def test_cgroup_headroom_reads_v2_and_v1_layouts(tmp_path):
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "memory.max").write_text("1073741824\n")
    (v2 / "memory.current").write_text("536870912\n")
    (v2 / "memory.stat").write_text("anon 400000000\ninactive_file 134217728\nactive_file 1\n")
    assert cgroup_headroom(v2) == 2**30 - (2**29 - 2**27)
    (v2 / "memory.max").write_text("max\n")
    assert cgroup_headroom(v2) is None
    v1 = tmp_path / "v1" / "memory"
    v1.mkdir(parents=True)
    (v1 / "memory.limit_in_bytes").write_text("2000000000\n")
    (v1 / "memory.usage_in_bytes").write_text("500000000\n")
    (v1 / "memory.stat").write_text("cache 1\ntotal_inactive_file 100000000\n")
    assert cgroup_headroom(tmp_path / "v1") == 2_000_000_000 - 400_000_000
    (v1 / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    assert cgroup_headroom(tmp_path / "v1") is None


def test_available_memory_on_this_machine(monkeypatch):
    monkeypatch.delenv(MEMORY_BUDGET_ENV, raising=False)
    available, source = available_memory("cpu")
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    assert 0 < available <= int(meminfo["MemAvailable"].split()[0]) * 1024 * 1.05  # it moves a little meanwhile
    assert source in ("MemAvailable", "the cgroup's memory limit less its usage")
    monkeypatch.setenv(MEMORY_BUDGET_ENV, "3GiB")
    assert available_memory("cpu") == (3 * 2**30, MEMORY_BUDGET_ENV)
