"""TrainingModel: LM and distillation losses against a hand computation, gradients, lockstep passes, parts, and
saving / loading in the released names (tiny, CPU)."""
import copy
import functools

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

import videopanda  # noqa: F401  (registers the Auto classes)
from videopanda.constants import IGNORE_INDEX
from videopanda.train.teacher import LanguageBindVideoTower, TeacherConfig
from videopanda.model.videopanda import VideoPandaConfig, VideoPandaForCausalLM
from videopanda.train.distillation import DistillationHead, distill_layer_indices
from videopanda.train.stages import parameter_parts
from videopanda.train.training_model import TrainingModel

SIZE, VOCAB = 56, 96  # student frames: 4x4 patches -> 2x2 LSD grid -> 1 + 2*3 = 7 tokens a frame
TOKEN = VOCAB  # the placeholder id: the first id past the vocabulary


def tiny_config(**changes) -> VideoPandaConfig:
    return VideoPandaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=4, video_hidden_size=64, mm_hidden_size=64, image_size=SIZE,
                            teacher_image_size=SIZE // 2, pad_token_id=0, **changes)


def training_model(lockstep: bool = False, **changes) -> TrainingModel:
    torch.manual_seed(2)
    model = VideoPandaForCausalLM(tiny_config(**changes))
    teacher = LanguageBindVideoTower(TeacherConfig(hidden_size=32, intermediate_size=64, num_attention_heads=4,
                                                   num_hidden_layers=2, image_size=SIZE // 2, num_frames=4))
    for p in teacher.parameters():
        torch.nn.init.normal_(p, std=0.1)
    return TrainingModel(model, teacher, DistillationHead(llm_width=64, teacher_width=32, num_heads=4),
                         lockstep=lockstep)


def video(valid_rows=(0, SIZE), padding_frames: int = 0, seed: int = 0) -> torch.Tensor:
    """(2, 4, 4, SIZE, SIZE): random pixels, mask 1 on rows valid_rows, the last `padding_frames` frames zero."""
    v = torch.randn(2, 4, 4, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))
    top, bottom = valid_rows
    v[:, :, 3] = 0
    v[:, :, :3, :top] = 0
    v[:, :, :3, bottom:] = 0
    v[:, :, 3, top:bottom] = 1
    if padding_frames:
        v.view(8, 4, SIZE, SIZE)[-padding_frames:] = 0
    return v


def teacher_video(v: torch.Tensor) -> torch.Tensor:
    """A 28 px teacher tensor with the student's mask, downsampled."""
    small = F.avg_pool2d(v.flatten(0, 1), 2).view(2, 4, 4, SIZE // 2, SIZE // 2)
    small[:, :, 3] = (small[:, :, 3] > 0.5).float()
    return small


# Per video: its text before the frames, each frame's grid (rows, cols), and how many frames have content.
# The square video: 2x2 grids (7 tokens); the letterboxed one: 1x2 grids (4 tokens) and two padding frames,
# which the STAB gives the top-left 2x2 window (7 tokens).
LAYOUTS = [([1, 30, 31], [(2, 2)] * 8, 8), ([1, 40], [(1, 2)] * 6 + [(2, 2)] * 2, 6)]
TAILS = [[32, 33, 34], [41]]
TEXT_ONLY = [1, 50, 51, 52, 53, 54, 55]


@pytest.fixture(scope="module")
def batch() -> dict:
    """Two videos and a text-only sample in the processor's layout, right padded, written out by hand."""
    rows = []
    for (prefix, grids, _), tail in zip(LAYOUTS, TAILS):
        rows.append(prefix + [TOKEN] * sum(1 + r * (c + 1) for r, c in grids) + tail)
    rows.append(TEXT_ONLY)
    width = max(map(len, rows))
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, row in enumerate(rows):
        ids[b, :len(row)], mask[b, :len(row)] = torch.tensor(row), 1
    labels = ids.masked_fill(ids == TOKEN, IGNORE_INDEX).masked_fill(mask == 0, IGNORE_INDEX)
    labels[:, :2] = IGNORE_INDEX  # an unsupervised prompt start
    videos = torch.stack([video(seed=2), video(valid_rows=(14, 42), padding_frames=2, seed=3)])
    teachers = torch.stack([teacher_video(v) for v in videos])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "pixel_values_videos": videos,
            "teacher_pixel_values_videos": teachers}


def hand_losses(model: TrainingModel, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """LM loss from the full logits; distillation loss (the paper's) from the LLM states at the grid positions
    written out from LAYOUTS, the head, and the teacher run on each video alone: per content frame 1 - mean cosine
    over valid teacher cells (teacher pooled to the student grid where they differ), averaged over frames."""
    lm = model.model
    with torch.no_grad():
        out = lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                 pixel_values_videos=batch["pixel_values_videos"], output_hidden_states=True)
        labels = batch["labels"]
        lm_loss = F.cross_entropy(out.logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX)
        layers = distill_layer_indices(2)
        frame_losses = []
        for b, (prefix, grids, content) in enumerate(LAYOUTS):
            features = model.teacher(batch["teacher_pixel_values_videos"][b])        # (8, 4, 32): 2x2 teacher grid
            valid = F.avg_pool2d(batch["teacher_pixel_values_videos"][b][:, :, 3].flatten(0, 1), 14) >= 0.5
            start = len(prefix)
            for k, (r, c) in enumerate(grids[:content]):
                positions = [start + 1 + i * (c + 1) + j for i in range(r) for j in range(c)]
                student = model.distill_head([out.hidden_states[l][b, positions] for l in layers])
                target = features[k].view(2, 2, -1)
                cells = valid[k].float()
                if (r, c) != (2, 2):  # the letterboxed frames: both teacher rows valid, pooled onto one
                    target, cells = target.mean(0, keepdim=True), cells.mean(0, keepdim=True)
                keep = cells.flatten() >= 0.5
                cosine = F.cosine_similarity(student.float(), target.reshape(r * c, -1).float(), dim=-1)
                frame_losses.append(1 - cosine[keep].mean())
                start += 1 + r * (c + 1)
    return lm_loss, torch.stack(frame_losses).mean()


def test_losses_equal_a_hand_computation(batch):
    model = training_model().eval()
    with torch.no_grad():
        out = model(**batch)
    lm_loss, distill_loss = hand_losses(model, batch)
    assert out.distill_loss > 0
    torch.testing.assert_close(out.lm_loss, lm_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.distill_loss, distill_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.loss, out.lm_loss + out.distill_loss)


def per_video_visual_tokens(model: VideoPandaForCausalLM, pixel_values_videos: torch.Tensor):
    """The original's encoding of a batch: one STAB call per video, in order, then the projector on all tokens."""
    stab = model.model.video_tower
    tokens, grids = [], []
    for video in pixel_values_videos:
        packed, video_grids = stab(video.to(next(stab.parameters()).dtype), packed=True)
        tokens.append(packed)
        grids += video_grids
    return model.model.video_projector(torch.cat(tokens)), grids


def test_a_training_step_equals_one_stab_call_per_video_in_float64(batch):
    """One training step (STAB in training mode, merge, LLM, LM and distillation losses, backward) on two videos
    of different content equals the original's computation, which runs the STAB once per video: losses, the
    gradient of every parameter of every part, and the STAB's BatchNorm running statistics."""
    model = training_model(stab={"dropout": 0.0}).double().train()
    reference = copy.deepcopy(model)
    reference.model.visual_tokens = functools.partial(per_video_visual_tokens, reference.model)
    inputs = {k: v.double() if v.is_floating_point() else v for k, v in batch.items()}
    out, expected = model(**inputs), reference(**inputs)
    out.loss.backward()
    expected.loss.backward()
    for name in ("lm_loss", "distill_loss"):
        torch.testing.assert_close(getattr(out, name), getattr(expected, name), rtol=1e-12, atol=0)
    parts = parameter_parts(model)
    reference_params = dict(reference.named_parameters())
    checked = set()
    for name, param in model.named_parameters():
        ref = reference_params[name].grad
        if ref is None:
            assert param.grad is None and parts[name] == "teacher", name
            continue
        scale = ref.abs().max().clamp_min(1e-30)
        assert (param.grad - ref).abs().max() <= 1e-10 * scale, f"{name} ({parts[name]})"
        checked.add(parts[name])
    assert checked == {"llm", "stab", "projector", "distill_head"}
    norm, ref_norm = model.model.model.video_tower.lste.norm, reference.model.model.video_tower.lste.norm
    assert int(norm.num_batches_tracked) == int(ref_norm.num_batches_tracked) == 2
    torch.testing.assert_close(norm.running_mean, ref_norm.running_mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(norm.running_var, ref_norm.running_var, rtol=0, atol=1e-12)


def test_distillation_trains_head_stab_and_projector_and_lockstep_keeps_text_batches_in_the_graph(batch):
    model = training_model(lockstep=True).train()
    calls = []
    model.model.model.video_tower.register_forward_hook(lambda *args: calls.append(1))
    model(**batch).loss.backward()
    for part in (model.distill_head, model.model.model.video_tower.lsd, model.model.model.video_projector):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
    assert all(p.grad is None for p in model.teacher.parameters())
    model.zero_grad(set_to_none=True)
    text = torch.tensor([TEXT_ONLY])
    out = model(input_ids=text, labels=text)
    assert out.distill_loss == 0 and torch.equal(out.loss, out.lm_loss + out.distill_loss)
    out.loss.backward()
    assert calls == [1, 1]  # the dummy chunk ran the STAB
    visual = [model.distill_head, model.model.model.video_tower, model.model.model.video_projector]
    grads = [p.grad for part in visual for p in part.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and not any(g.any() for g in grads)  # in the graph, contributing 0
    assert model.model.lm_head.weight.grad.abs().sum() > 0


def test_a_text_only_lockstep_step_leaves_the_batchnorm_statistics_alone():
    """Only videos update the STAB's BatchNorm running statistics (the original runs no STAB without video): the
    dummy chunk of a text-only lockstep step changes none of them, and the step still reaches the BatchNorm."""
    model = training_model(lockstep=True).train()
    norm = model.model.model.video_tower.lste.norm
    before = {k: v.clone() for k, v in norm.state_dict().items()}
    text = torch.tensor([TEXT_ONLY])
    model(input_ids=text, labels=text).loss.backward()
    for name, value in norm.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert norm.training and norm.weight.grad is not None and not norm.weight.grad.any()


def test_without_lockstep_a_text_batch_runs_the_llm_only():
    model = training_model(lockstep=False).train()
    calls = []
    model.model.model.video_tower.register_forward_hook(lambda *args: calls.append(1))
    text = torch.tensor([TEXT_ONLY])
    out = model(input_ids=text, labels=text)
    out.loss.backward()
    assert calls == [] and out.distill_loss is None and torch.equal(out.loss, out.lm_loss)
    assert all(p.grad is None for p in model.distill_head.parameters())


def test_parts_name_every_parameter_and_an_undeclared_one_is_an_error():
    model = training_model()
    parts = parameter_parts(model)
    assert set(parts.values()) == {"llm", "stab", "projector", "distill_head", "teacher"}
    assert parts["distill_head.input_layer.weight"] == "distill_head" and parts["model.lm_head.weight"] == "llm"
    model.model.model.extra = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match=r"no declared part .*model\.model\.extra\.weight, model\.model\.extra\.bias"):
        parameter_parts(model)


def test_saved_folder_holds_the_released_names_and_loads_back(tmp_path, batch):
    model = training_model()
    model.save_pretrained(tmp_path)
    from videopanda.model.checkpoint import read_state_dict

    saved = read_state_dict(tmp_path)
    assert any(k.startswith("model.video_tower_compressor.") for k in saved)
    assert not any(k.startswith(("model.video_teacher.", "distill_head.", "teacher.", "model.model.")) for k in saved)
    assert "model.video_tower.lmhra1.pos_embed.0.weight" in saved  # the STAB under its released names
    plain = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(plain) is VideoPandaForCausalLM
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values_videos")}
    with torch.no_grad():
        torch.testing.assert_close(plain(**inputs).logits, model.model.eval()(**inputs).logits)
    again = training_model()
    with torch.no_grad():
        for p in again.distill_head.parameters():
            p.zero_()
    again.load_released_state_dict(saved)
    for (name, p), q in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(p, q), name
    with pytest.raises(ValueError, match="missing .*distill_head.input_layer.bias"):
        training_model().load_released_state_dict({k: v for k, v in saved.items() if not k.endswith("input_layer.bias")})
