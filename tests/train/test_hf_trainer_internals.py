"""The transformers internals `hf_trainer_internals` relies on, checked on the installed transformers: each one
exists as used, and a real (tiny, CPU) training goes through every override: the sampler's order, a step's
micro-batches before their forwards, the model files and the completion hook of a checkpoint, a failed
checkpoint write named in one line, and a run resumed in the middle of an epoch that logs the same losses."""
import pytest
import torch
import transformers
from transformers import Trainer, TrainingArguments

from videopanda.io import OutputError
from videopanda.train.hf_trainer_internals import TrainerInternals, trainer_internals_problems

SAMPLES = 12  # batches of 2, 2 accumulation steps: 3 optimizer steps per epoch


def test_every_internal_exists_as_used():
    problems = trainer_internals_problems()
    assert not problems, "\n".join(problems)


def test_a_changed_internal_is_named_with_the_version(monkeypatch):
    monkeypatch.setattr(Trainer, "_save", lambda self, path: None)
    assert trainer_internals_problems() == [
        f"transformers {transformers.__version__}: Trainer._save no longer takes output_dir, state_dict"]
    with pytest.raises(RuntimeError, match=r"Trainer\._save no longer takes"):
        TrainerInternals(model=Line(), args=TrainingArguments(output_dir="unused", use_cpu=True, report_to=[]))


class Line(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x, y):
        return ((self.weight * x - y) ** 2).mean()


def epoch_order(epoch: int) -> list[int]:
    return torch.randperm(SAMPLES, generator=torch.Generator().manual_seed(100 + epoch)).tolist()


class EpochOrder(torch.utils.data.Sampler):
    """The samples in `epoch_order` of the epoch set last (by the Trainer, through its DataLoader)."""

    def __init__(self):
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self):
        return SAMPLES

    def __iter__(self):
        return iter(epoch_order(self.epoch))


def collate(samples: list[dict]) -> dict:
    return {key: torch.stack([torch.as_tensor(s[key]) for s in samples]) for key in samples[0]}


class Recording(TrainerInternals):
    """Records every hook call in `events`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.events, self.sampler, self.unlogged = [], EpochOrder(), {}

    def train_sampler(self, dataset):
        return self.sampler

    def step_batches_fetched(self, batches):
        self.events.append(("fetched", [b["index"].tolist() for b in batches]))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.events.append(("forward", inputs.pop("index").tolist()))
        return model(**inputs)

    def write_model_folder(self, output_dir, state_dict):
        self.events.append(("model files", output_dir))
        super().write_model_folder(output_dir, state_dict)

    def load_checkpoint_weights(self, folder, model):
        self.events.append(("loaded", folder))
        super().load_checkpoint_weights(folder, model)

    def checkpoint_saved(self, folder):
        self.events.append(("checkpoint", folder.name, sorted(p.name for p in folder.iterdir())))
        loss_sum, last_logged = self.loss_since_last_log()
        self.unlogged[self.state.global_step] = (float(loss_sum), last_logged)


class Carry(transformers.TrainerCallback):
    def __init__(self, trainer: Recording, loss_sum: float, last_logged: int):
        self.trainer, self.loss_sum, self.last_logged = trainer, loss_sum, last_logged

    def on_train_begin(self, args, state, control, **kwargs):
        self.trainer.carry_loss_since_last_log(self.loss_sum, self.last_logged)


def make_trainer(output, **settings) -> Recording:
    data = [{"x": float(i % 5) - 2.0, "y": 0.5 * (i % 5) - 1.0 + 0.1 * i, "index": i} for i in range(SAMPLES)]
    args = TrainingArguments(output_dir=str(output), use_cpu=True, report_to=[], per_device_train_batch_size=2,
                             gradient_accumulation_steps=2, learning_rate=0.05, max_steps=7, logging_steps=3,
                             save_steps=4, seed=0, remove_unused_columns=False, disable_tqdm=True,
                             dataloader_num_workers=0, **settings)
    return Recording(model=Line(), args=args, train_dataset=data, data_collator=collate)


def losses(trainer: Trainer) -> dict[int, float]:
    return {entry["step"]: entry["loss"] for entry in trainer.state.log_history if "loss" in entry}


def test_a_training_goes_through_every_override(tmp_path):
    trainer = make_trainer(tmp_path / "out")
    trainer.train()
    trainer.save_model()
    forwards = [e[1] for e in trainer.events if e[0] == "forward"]
    assert sum(forwards, []) == (epoch_order(0) + epoch_order(1) + epoch_order(2))[:28]  # 7 steps x 2 x 2 samples
    fetched = [i for i, e in enumerate(trainer.events) if e[0] == "fetched"]
    assert len(fetched) == 7
    for start in fetched:  # a step's micro-batches are handed over before the first of them runs
        assert [e[1] for e in trainer.events[start + 1:start + 3]] == trainer.events[start][1]
    checkpoints = [e for e in trainer.events if e[0] == "checkpoint"]
    assert [c[1] for c in checkpoints] == ["checkpoint-4", "checkpoint-7"]  # every 4 steps, and the last one
    assert all({"trainer_state.json", "optimizer.pt", "model.safetensors"} <= set(c[2]) for c in checkpoints)
    assert [e[1] for e in trainer.events if e[0] == "model files"] == [
        str(tmp_path / "out" / "checkpoint-4"), str(tmp_path / "out" / "checkpoint-7"), str(tmp_path / "out")]
    loss_sum, last_logged = trainer.unlogged[4]
    assert last_logged == 3 and loss_sum > 0


def test_a_run_resumed_mid_epoch_with_its_unlogged_loss_logs_the_same_losses(tmp_path):
    uninterrupted = make_trainer(tmp_path / "a")
    uninterrupted.train()
    resumed = make_trainer(tmp_path / "b")
    resumed.add_callback(Carry(resumed, *uninterrupted.unlogged[4]))
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-4"))
    assert ("loaded", str(tmp_path / "a" / "checkpoint-4")) in resumed.events
    after = [e[1] for e in uninterrupted.events if e[0] == "forward"][8:]  # step 4 of 7 is in the second epoch
    assert [e[1] for e in resumed.events if e[0] == "forward"] == after
    assert list(losses(resumed)) == [3, 6]  # the log of step 3 comes with the checkpoint's state
    assert losses(resumed) == pytest.approx(losses(uninterrupted), rel=1e-6)


def test_a_failed_checkpoint_write_names_the_folder(tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    (output / "checkpoint-4").write_text("in the way")
    trainer = make_trainer(output)
    with pytest.raises(OutputError, match="checkpoint-4"):
        trainer.train()
    assert not [e for e in trainer.events if e[0] == "checkpoint"]
