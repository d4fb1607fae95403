"""Stage initialisation, freezing, parameter groups, and learning on a fixed batch (in-process, CPU)."""
import pytest
import torch
from transformers import AutoTokenizer, set_seed

from videopanda.data.dataset import VideoInstructCollator, VideoInstructDataset
from videopanda.data.processor import VideoPandaProcessor
from videopanda.train.stages import apply_stage, build_model, parameter_parts
from videopanda.train.trainer import parameter_groups

MODEL_CONFIG = {"num_frames": 4, "frames_per_chunk": 4, "image_size": 112, "teacher_image_size": 56}
STAB = {"width": 32, "num_heads": 4, "padding_window": 8}


@pytest.fixture
def tiny_model(llama_dir, teacher_dir):
    set_seed(42)
    return build_model(llama_dir, init="auto", stab_overrides=STAB, config_overrides=MODEL_CONFIG,
                       teacher_folder=teacher_dir, dtype=torch.float32, attn_implementation="sdpa")


def test_llama_init_loads_the_llm_and_attaches_teacher_and_head(tiny_model, llama_dir):
    from safetensors.torch import load_file

    llm = load_file(llama_dir / "model.safetensors")
    state = tiny_model.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in llm.items())
    groups = set(parameter_parts(tiny_model).values())
    assert groups == {"llm", "stab", "projector", "distill_head", "teacher"}
    assert tiny_model.config.stab["width"] == 32 and tiny_model.config.image_size == 112


@pytest.mark.parametrize("stage, trainable", [
    ("prealign", {"stab", "projector", "distill_head"}),
    ("pretrain", {"llm", "stab", "projector", "distill_head"}),
    ("finetune", {"llm", "stab", "projector", "distill_head"}),
])
def test_stage_freezing_and_groups(tiny_model, stage, trainable, caplog):
    infos = apply_stage(tiny_model, stage)
    parts = parameter_parts(tiny_model)
    assert {i.name for i in infos if i.trainable} == trainable
    assert {i.name for i in infos if not i.trainable} == {"llm", "stab", "projector", "distill_head", "teacher"} - trainable
    for name, param in tiny_model.named_parameters():
        assert param.requires_grad == (parts[name] in trainable), name
    with caplog.at_level("INFO", logger="videopanda"):
        groups = parameter_groups(tiny_model, 4e-5, 4e-4, 0.1)
    lines = [r.getMessage() for r in caplog.records if r.name == "videopanda.train.trainer"]
    assert len(lines) == 5 and lines[0].startswith("llm: ")
    for info in infos:
        line = next(line for line in lines if line.startswith(f"{info.name}: "))
        lr = "4e-04" if info.name in ("stab", "projector", "distill_head") else "4e-05"
        assert line == (f"{info.name}: trainable, {info.num_params / 1e6:.2f}M params, lr {lr}" if info.trainable
                        else f"{info.name}: frozen, {info.num_params / 1e6:.2f}M params"), line
    by_name = {g["name"]: g for g in groups}
    assert by_name["visual"]["lr"] == 4e-4 and by_name["visual_no_decay"]["weight_decay"] == 0.0
    assert by_name["visual"]["weight_decay"] == 0.1
    if "llm" in trainable:
        assert by_name["base"]["lr"] == 4e-5 and by_name["base_no_decay"]["weight_decay"] == 0.0
    names = {id(p): n for n, p in tiny_model.named_parameters()}
    for group in groups:
        for p in group["params"]:
            decayed = group["weight_decay"] > 0
            assert decayed == (p.dim() >= 2 and "norm" not in names[id(p)].lower()), names[id(p)]


def test_distillation_loss_falls_on_a_fixed_batch(tiny_model, llama_dir, data_root):
    processor = VideoPandaProcessor.from_model_config(tiny_model.config, AutoTokenizer.from_pretrained(llama_dir))
    dataset = VideoInstructDataset(data_root / "train" / "train_json" / "valley_.json", data_root / "train", processor,
                                   random_flip=False)
    batch = VideoInstructCollator(processor)([dataset[0], dataset[1], dataset[2]])  # two videos, one text-only
    assert batch["pixel_values_videos"].shape == (2, 1, 4, 4, 112, 112)
    batch.pop("ids"), batch.pop("replaced")
    apply_stage(tiny_model, "prealign")
    tiny_model.train()
    optimizer = torch.optim.AdamW([p for p in tiny_model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(12):
        out = tiny_model(**batch)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.distill_loss.item())
    assert losses[-1] < 0.7 * losses[0], losses
