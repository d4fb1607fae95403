"""The transformers `Trainer` internals the training relies on, all in this module.

`VideoPandaTrainer` otherwise uses the Trainer's public surface (callbacks, `compute_loss`, `create_optimizer`,
`get_train_dataloader`, `log`, `save_model`, `loss_is_scaled_for_ga`). Five behaviours have no public hook;
`TrainerInternals` reaches each through the smallest override and hands over to a public method of the subclass:

- `_get_train_sampler(train_dataset)`: the only way to give the training DataLoader (built, sharded and
  prepared by the Trainer) another sampler -> `train_sampler(dataset)`.
- `get_batch_samples(epoch_iterator, num_batches, device)` (public name, undocumented contract): the
  micro-batches of one optimizer step are fetched before the first of them runs, the one moment all their
  tokens and frames can be counted -> `step_batches_fetched(batches)`.
- `_save_checkpoint(model, trial)` with `_get_output_dir(trial)`: a failed write of any checkpoint file
  (model, optimizer, RNG, trainer state) must stop the run with one line naming the folder, and the
  completeness marker must follow the last file -> `checkpoint_saved(folder)`.
- `_save(output_dir, state_dict)`: where `save_model` writes the weights, a plain state or the one DeepSpeed
  ZeRO-3 consolidated -> `write_model_folder(output_dir, state_dict)`.
- `_load_from_checkpoint(resume_from_checkpoint, model)`: the weights a resumed run starts from (not used
  under DeepSpeed) -> `load_checkpoint_weights(folder, model)`.
- The attributes `_tr_loss` (the loss summed since the last log on this rank) and `_globalstep_last_logged`:
  read for every checkpoint and set at the start of a resumed run, so the first log after a resume averages
  the same steps as in an uninterrupted run -> `loss_since_last_log()`, `carry_loss_since_last_log(...)`.

`trainer_internals_problems()` lists, one line each naming the private and the installed transformers
version, what of the above a transformers version lacks; `TrainerInternals` refuses to start with such a
version. Checked with transformers 5.24.0 and 5.25.0 (tests/train/test_hf_trainer_internals.py runs a real
training through every override).
"""
from __future__ import annotations

import inspect
from pathlib import Path

import torch
import transformers
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from videopanda.train.checkpointing import writing

RELIED_ON = {
    "_get_train_sampler": ("train_dataset",),
    "get_batch_samples": ("epoch_iterator", "num_batches", "device"),
    "_save_checkpoint": ("model", "trial"),
    "_get_output_dir": ("trial",),
    "_save": ("output_dir", "state_dict"),
    "_load_from_checkpoint": ("resume_from_checkpoint", "model"),
}
"""Trainer methods overridden or called here -> the parameters this module passes or receives."""
LOSS_ATTRIBUTES = ("_tr_loss", "_globalstep_last_logged")
"""Attributes of the Trainer's training loop read and set here (created when `train` starts)."""


def trainer_internals_problems() -> list[str]:
    """One line per internal this module relies on that the installed `Trainer` lacks or changed (empty: all
    present). The attributes are looked for in the Trainer's source."""
    version = transformers.__version__
    problems = []
    for name, parameters in RELIED_ON.items():
        method = getattr(Trainer, name, None)
        if not callable(method):
            problems.append(f"transformers {version}: Trainer.{name} is gone")
            continue
        missing = [p for p in parameters if p not in inspect.signature(method).parameters]
        if missing:
            problems.append(f"transformers {version}: Trainer.{name} no longer takes {', '.join(missing)}")
    try:
        source = inspect.getsource(Trainer)
    except OSError:  # installed without sources: the attributes are not looked for
        source = None
    problems += [f"transformers {version}: Trainer no longer sets self.{name}" for name in LOSS_ATTRIBUTES
                 if source is not None and f"self.{name} =" not in source]
    if not hasattr(Trainer, "loss_is_scaled_for_ga"):  # the accumulation weights need it (see trainer.py)
        problems.append(f"transformers {version}: Trainer.loss_is_scaled_for_ga is gone")
    return problems


class TrainerInternals(Trainer):
    """A `Trainer` whose private steps call the public hooks below (defaults: the Trainer's own behaviour)."""

    def __init__(self, *args, **kwargs):
        problems = trainer_internals_problems()
        if problems:
            raise RuntimeError(f"{problems[0]} (videopanda's trainer supports the versions pyproject.toml names)")
        super().__init__(*args, **kwargs)

    # ---- hooks for the subclass --------------------------------------------------------------------

    def train_sampler(self, dataset) -> torch.utils.data.Sampler | None:
        """The training DataLoader's sampler; None: the Trainer's default."""
        return None

    def step_batches_fetched(self, batches: list[dict]) -> None:
        """Called with the micro-batches of one optimizer step (on this rank) before the first of them runs."""

    def checkpoint_saved(self, folder: Path) -> None:
        """Called on every rank once this rank has written all the Trainer's files of checkpoint `folder`."""

    def write_model_folder(self, output_dir: str, state_dict: dict | None) -> None:
        """Write the model files of a checkpoint or of `save_model` (`state_dict`: a consolidated one, or None)."""
        super()._save(output_dir, state_dict=state_dict)

    def load_checkpoint_weights(self, folder: str, model: torch.nn.Module | None) -> None:
        """Load the weights of checkpoint `folder` into `model` (None: the trainer's model) to resume from it."""
        super()._load_from_checkpoint(folder, model)

    def loss_since_last_log(self) -> tuple[torch.Tensor, int]:
        """(this rank's training loss summed over the steps after the last log, that log's step); during `train`."""
        return self._tr_loss, self._globalstep_last_logged

    def carry_loss_since_last_log(self, loss_sum: float, last_logged_step: int) -> None:
        """At the start of a resumed run (`on_train_begin`): add `loss_sum` to this rank's loss since the last
        log, which was at `last_logged_step`."""
        self._globalstep_last_logged = last_logged_step
        self._tr_loss += loss_sum

    # ---- the overrides -----------------------------------------------------------------------------

    def _get_train_sampler(self, train_dataset=None):
        sampler = self.train_sampler(train_dataset if train_dataset is not None else self.train_dataset)
        return sampler if sampler is not None else super()._get_train_sampler(train_dataset)

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        self.step_batches_fetched(batches)
        return batches, num_items

    def _save_checkpoint(self, model, trial) -> None:
        folder = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        with writing(folder):
            super()._save_checkpoint(model, trial)
        self.checkpoint_saved(folder)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        self.write_model_folder(output_dir if output_dir is not None else self.args.output_dir, state_dict)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        self.load_checkpoint_weights(resume_from_checkpoint, model)


__all__ = ["LOSS_ATTRIBUTES", "RELIED_ON", "TrainerInternals", "trainer_internals_problems"]
