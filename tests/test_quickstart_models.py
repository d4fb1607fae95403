"""The quickstart's base models for a real synthetic data folder: the tokenizer reads its questions back,
the Llama has the model config's shape, the teacher its frame count and its larger position and patch scales,
and the data's metadata records what they were made with."""
import json
from pathlib import Path

import pytest

from videopanda.data import synth
from videopanda.quickstart import models

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "configs" / "model" / "tiny.json"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    assert synth.main(["--out", str(out), "--seed", "3", "--num-train", "4", "--num-test", "4", "--workers", "1"]) == 0
    assert models.main(["--data", str(out), "--model-config", str(TINY_CONFIG)]) == 0
    return out


def test_model_folders_load(data_dir):
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    from videopanda.train.teacher import LanguageBindVideoTower

    base = data_dir / "models" / "base"
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = LlamaForCausalLM.from_pretrained(base)
    tiny = json.loads(TINY_CONFIG.read_text())
    assert model.config.hidden_size == tiny["hidden_size"]
    assert model.config.num_hidden_layers == tiny["num_hidden_layers"]
    assert (model.config.num_attention_heads, model.config.head_dim) == (tiny["num_attention_heads"], tiny["head_dim"])
    assert model.config.vocab_size == len(tokenizer)
    settings = json.loads((base / "generation_config.json").read_text())  # the project's answer settings
    assert (settings["do_sample"], settings["num_beams"], settings["max_new_tokens"], settings["eos_token_id"]) == (
        False, 1, 1024, tokenizer.eos_token_id)
    test_q = data_dir / "eval" / "GPT_Zero_Shot_QA" / "Synth_Zero_Shot_QA" / "test_q.json"
    question = json.loads(test_q.read_text())[0]["question"]
    ids = tokenizer(question).input_ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == question
    teacher = LanguageBindVideoTower.from_pretrained(data_dir / "models" / "teacher")
    size = tiny["teacher_image_size"]
    assert teacher.config.image_size == size
    assert teacher.config.num_frames == tiny["num_frames"]  # its temporal attention spans the model's frames
    features = teacher(torch.zeros(2, 4, 4, size, size))
    assert features.shape == (8, (size // teacher.config.patch_size) ** 2, teacher.config.hidden_size)
    # the teacher's features must say where a patch is and what it shows: its position and patch
    # embeddings carry the configured, larger scales (everything else: CLIP-like 0.02)
    embeddings = teacher.vision_model.embeddings
    for weight, wanted in ((embeddings.position_embedding.weight, models.ModelsConfig.teacher_position_std),
                           (embeddings.patch_embedding.weight, models.ModelsConfig.teacher_patch_std)):
        assert abs(weight.std().item() - wanted) < 0.1 * wanted
    assert abs(teacher.vision_model.encoder.layers[0].mlp.fc1.weight.std().item() - 0.02) < 0.002


def test_the_data_metadata_records_the_models(data_dir):
    meta = json.loads((data_dir / "synth_meta.json").read_text())
    assert (meta["seed"], meta["num_train"], meta["generator_version"]) == (3, 4, synth.GENERATOR_VERSION)
    record = meta["models"]
    assert record["llm"] == models.llm_fields(TINY_CONFIG)
    assert record["base"] == str(data_dir / "models" / "base") and record["model_config"] == str(TINY_CONFIG)
    assert record["teacher_position_frequencies"] == models.ModelsConfig.teacher_position_frequencies
    assert record["vocab_size"] == models.ModelsConfig.vocab_size
    assert record["teacher_num_frames"] == json.loads(TINY_CONFIG.read_text())["num_frames"]


def test_a_folder_without_synthetic_data_is_refused_naming_the_file(tmp_path):
    with pytest.raises(models.ModelsError, match=f"^{tmp_path / 'synth_meta.json'}: no synthetic data there"):
        models.make_models(models.ModelsConfig(data=tmp_path))
    assert models.main(["--data", str(tmp_path)]) == 1
    assert list(tmp_path.iterdir()) == []
