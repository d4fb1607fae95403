"""The quickstart driver's pieces that run without training: the overrides it hands to the stage launchers
(resolved as `videopanda train` resolves them), ablations, the report built from loss logs, and when an existing
synthetic data folder (dataset and base models) is reused."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from videopanda.quickstart import models
from videopanda.quickstart import run as quickstart
from videopanda.model.stab import STABConfig
from videopanda.train.experiment import resolve_experiment

REPO = Path(__file__).resolve().parents[1]


def _config(tmp_path, ablation=None):
    return quickstart.QuickstartConfig(out=tmp_path / "out", data=tmp_path / "data", ablation=ablation)


@pytest.mark.parametrize("stage", quickstart.STAGES)
def test_stage_flags_resolve_to_the_experiment_with_the_quickstart_folders(tmp_path, stage):
    """The quickstart's stage settings are the experiment file's; it adds only its folders and seed."""
    cfg = _config(tmp_path)
    experiment = resolve_experiment(cfg.experiment, quickstart.stage_flags(cfg, stage)).experiment
    settings = experiment.stage(stage)
    assert experiment.runtime.device == "cpu" and not experiment.data.random_flip
    assert experiment.training.seed == cfg.seed
    assert experiment.runtime.frame_cache == str((cfg.data / quickstart.FRAME_CACHE).resolve())  # one decode
    assert settings.global_batch_size == 16 and settings.per_device_batch_size * cfg.nproc == 16
    assert (settings.learning_rate, experiment.visual_learning_rate(stage), settings.warmup_ratio) == (2e-3, 1e-2, 0.03)
    assert settings.epochs == {"prealign": 0.1, "pretrain": 0.5, "finetune": 9.0}[stage]
    assert experiment.stage_output(stage) == (cfg.out / stage).resolve()
    previous = {"prealign": cfg.data / "models" / "base", "pretrain": cfg.out / "prealign",
                "finetune": cfg.out / "pretrain"}[stage]
    assert experiment.stage_init(stage) == previous.resolve()
    assert experiment.init_kind(stage) == ("llama" if stage == "prealign" else "auto")
    tiny = json.loads((REPO / "configs" / "model" / "tiny.json").read_text())
    assert cfg.model_config == REPO / "configs" / "model" / "tiny.json"
    frame_fields, stab = experiment.visual_overrides()
    assert stab == tiny["stab"] and frame_fields["image_size"] == tiny["image_size"]
    STABConfig(**stab)


def test_ablations_are_experiment_files_with_real_stab_fields(tmp_path):
    assert {"no-lste", "no-gstra", "no-lste-no-gstra", "no-fsra", "no-row-tokens", "avgpool-lsd", "no-distill",
            "mse-distill"} <= set(quickstart.ablation_names())
    cfg = _config(tmp_path, ablation="no-lste-no-gstra")
    experiment = resolve_experiment(cfg.experiment, quickstart.stage_flags(cfg, "prealign")).experiment
    stab = STABConfig(**experiment.visual_overrides()[1])
    assert stab.use_lste is False and stab.use_gstra is False and stab.use_fsra is True
    assert experiment.distillation.enabled and experiment.stage("prealign").global_batch_size == 16  # the rest is the quickstart's
    no_distill = _config(tmp_path, ablation="no-distill").resolved()
    assert no_distill.experiment.distillation.enabled is False
    for name in quickstart.ablation_names():
        _config(tmp_path, ablation=name).resolved()  # every file loads; its switches name real STAB fields


def test_unknown_ablation_is_refused(capsys):
    with pytest.raises(SystemExit):
        quickstart.main(["--ablation", "no-such-part"])
    assert "no-such-part" in capsys.readouterr().err


def test_batch_that_does_not_split_over_the_processes_is_refused(capsys):
    with pytest.raises(SystemExit):
        quickstart.main(["--global-batch-size", "15", "--nproc", "2"])
    assert "--global-batch-size 15 is not a multiple of --nproc 2" in capsys.readouterr().err


def test_report_from_loss_logs(tmp_path):
    cfg = _config(tmp_path)
    for i, stage in enumerate(quickstart.STAGES):
        folder = cfg.out / stage
        folder.mkdir(parents=True)
        lines = [json.dumps({"step": s, "loss": 3.0 / (s + i), "lm_loss": 2.0 / (s + i), "distill_loss": 0.5})
                 for s in range(1, 6)]
        (folder / quickstart.LOSS_LOG).write_text("\n".join(lines) + "\n")
    png = quickstart.plot_losses(cfg, cfg.out / "loss_curves.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = {"stages": [{"name": s, "final_loss": 0.5, "steps": 5, "elapsed_s": 10.0} for s in quickstart.STAGES],
               "eval": {"accuracy": 87.5, "per_type": {"counting": 75.0, "motion": 100.0}, "num_yes": 7, "num_no": 1,
                        "judge": "exact-match"}, "elapsed_s": 42.0, "num_test": 9}
    table = quickstart.results_table(summary)
    assert "| counting | 75.0 |" in table and "**87.5**" in table and "| pretrain | 5 | 0.5000 | 10 |" in table
    assert "8 of 9 questions judged" in table


def test_data_folder_is_reused_only_when_it_matches(tmp_path):
    from videopanda.data import synth

    cfg = quickstart.QuickstartConfig(out=tmp_path / "out", data=tmp_path / "data", num_train=2, num_test=4)
    assert quickstart.stale_data_reason(cfg) == "no dataset there"
    assert synth.main(["--out", str(cfg.data), "--num-train", "2", "--num-test", "4", "--workers", "1"]) == 0
    assert quickstart.stale_data_reason(cfg).startswith("base Llama None != ")  # the data, but no models yet
    assert models.main(["--data", str(cfg.data), "--model-config", str(cfg.model_config)]) == 0
    assert quickstart.stale_data_reason(cfg) is None
    other_seed = quickstart.QuickstartConfig(data=cfg.data, num_train=2, num_test=4, seed=1)
    assert quickstart.stale_data_reason(other_seed).startswith("seed 0 != 1")
    # a different Llama shape in the model config means a different base model: regenerate
    tiny = json.loads(cfg.model_config.read_text())
    tiny["num_hidden_layers"] += 1
    (tmp_path / "deeper.json").write_text(json.dumps(tiny))
    deeper = quickstart.QuickstartConfig(data=cfg.data, num_train=2, num_test=4,
                                         overrides=[f"model.shape={tmp_path / 'deeper.json'}"])
    assert "base Llama" in quickstart.stale_data_reason(deeper)
    meta = quickstart.read_data_meta(cfg.data)
    assert quickstart._dataset_changes(deeper, meta) == []  # only the models are made again
    assert quickstart._dataset_changes(quickstart.QuickstartConfig(data=cfg.data, num_train=3, num_test=4), meta) == [
        "num_train 2 != 3"]
    # a folder from before smooth teacher positions (no such field in its metadata): regenerate
    meta_path = cfg.data / "synth_meta.json"
    meta = json.loads(meta_path.read_text())
    del meta["models"]["teacher_position_frequencies"]
    meta_path.write_text(json.dumps(meta))
    assert "teacher_position_frequencies 0 != 2" in quickstart.stale_data_reason(cfg)


def test_output_folder_of_another_run_is_refused(tmp_path):
    """Finished stages and answers in the output folder are reused (resume), so a folder written with
    other settings, or with outputs but no record of its settings, must be refused, not mixed in."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "synth_meta.json").write_text(json.dumps({"seed": 0, "generator_version": 2}))
    cfg = quickstart.QuickstartConfig(out=tmp_path / "out", data=data)
    settings = quickstart.run_settings(cfg)
    assert settings["data"] == {"seed": 0, "generator_version": 2}
    assert settings["experiment"]["stages"]["finetune"]["epochs"] == 9.0
    quickstart.claim_output_folder(cfg.out, settings)
    assert json.loads((cfg.out / quickstart.RUN_SETTINGS).read_text()) == settings
    (cfg.out / "finetune").mkdir()
    quickstart.claim_output_folder(cfg.out, settings)  # the same run again: resumes
    ablated = quickstart.run_settings(quickstart.QuickstartConfig(out=cfg.out, data=data, ablation="no-lste"))
    with pytest.raises(RuntimeError, match=r"other settings \(ablation, experiment differ\)"):
        quickstart.claim_output_folder(cfg.out, ablated)
    (data / "synth_meta.json").write_text(json.dumps({"seed": 0, "generator_version": 3}))
    with pytest.raises(RuntimeError, match=r"other settings \(data differ\)"):
        quickstart.claim_output_folder(cfg.out, quickstart.run_settings(cfg))
    (cfg.out / quickstart.RUN_SETTINGS).unlink()
    with pytest.raises(RuntimeError, match="holds finetune from a run whose settings were not recorded"):
        quickstart.claim_output_folder(cfg.out, settings)


def _summary(seed: int, motion: float, counting: float, elapsed: float) -> dict:
    return {"seed": seed, "elapsed_s": elapsed, "num_test": 400,
            "eval": {"per_type": {"motion": motion, "counting": counting}, "accuracy": (motion + counting) / 2,
                     "num_yes": 300 + seed, "num_no": 100 - 2 * seed}}


def test_seed_table_gives_the_mean_and_range_of_every_type():
    runs = {"full model": [_summary(0, 80.0, 100.0, 500.0), _summary(1, 90.0, 97.0, 520.0),
                           _summary(2, 100.0, 100.0, 540.0)],
            "no lste / no gstra": [_summary(0, 30.0, 99.0, 480.0), _summary(1, 26.0, 100.0, 470.0),
                                   _summary(2, 25.0, 98.0, 490.0)]}
    lines = quickstart.seed_table(runs).splitlines()
    assert lines[0] == "| model | seeds | counting | motion | overall | time (s) |"
    assert lines[2] == ("| full model | 0, 1, 2 | 99.0 [97.0, 100.0] | 90.0 [80.0, 100.0] | 94.5 [90.0, 100.0] "
                        "| 520.0 [500.0, 540.0] |")
    assert lines[3] == ("| no lste / no gstra | 0, 1, 2 | 99.0 [98.0, 100.0] | 27.0 [25.0, 30.0] | 63.0 [61.5, 64.5] "
                        "| 480.0 [470.0, 490.0] |")
    assert lines[-1] == ("Questions judged per seed: full model 400 of 400, 399 of 400, 398 of 400; "
                         "no lste / no gstra 400 of 400, 399 of 400, 398 of 400.")


def test_seed_table_times_only_runs_done_in_one_call():
    resumed = {**_summary(2, 100.0, 100.0, 30.0), "resumed": True}
    runs = {"full model": [_summary(0, 80.0, 100.0, 500.0), _summary(1, 90.0, 97.0, 520.0), resumed],
            "all resumed": [resumed]}
    lines = quickstart.seed_table(runs).splitlines()
    assert lines[2].endswith("| 94.5 [90.0, 100.0] | 510.0 [500.0, 520.0] (2 of 3 seeds) |")
    assert lines[3].endswith("| 100.0 [100.0, 100.0] | n/a |")


def test_a_data_folder_of_another_seed_is_refused_and_left_as_it_is(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    meta = json.dumps({"seed": 0, "generator_version": 1})
    (data / "synth_meta.json").write_text(meta)
    cfg = quickstart.QuickstartConfig(out=tmp_path / "out", data=data, seed=1)
    with pytest.raises(RuntimeError, match=f"{data} holds the synthetic data of seed 0, not of seed 1"):
        quickstart.ensure_data(cfg)
    assert (data / "synth_meta.json").read_text() == meta


def test_regenerated_data_drops_its_frame_cache_and_reused_data_keeps_it(tmp_path):
    """Cached frames of regenerated clips are never served (their keys follow the files); the quickstart also
    removes them so that they take no space, and keeps them while the data folder is reused."""
    cfg = quickstart.QuickstartConfig(out=tmp_path / "out", data=tmp_path / "data", num_train=2, num_test=4, nproc=1)
    old = cfg.data / quickstart.FRAME_CACHE / "ab" / "old.npy"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"frames of a previous dataset")
    quickstart.ensure_data(cfg)
    assert quickstart.stale_data_reason(cfg) is None and not (cfg.data / quickstart.FRAME_CACHE).exists()
    old.parent.mkdir(parents=True)
    old.write_bytes(b"frames of this dataset")
    quickstart.ensure_data(cfg)
    assert old.read_bytes() == b"frames of this dataset"


def test_default_folders_are_per_seed_and_compare_needs_seeds(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        quickstart.main(["--compare", "no-lste"])
    assert exc.value.code == 2 and "--compare needs --seeds" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        quickstart.main(["--seeds", "0", "1", "--data", str(tmp_path)])
    assert "one data folder per seed" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["{not json", '{"eval": {"accuracy": 90.0}}', "[]"])
def test_an_unreadable_summary_of_a_finished_run_is_named(tmp_path, text):
    path = tmp_path / "summary.json"
    path.write_text(text)
    with pytest.raises(RuntimeError, match=f"{re.escape(str(path))}(: cannot be read|: holds a JSON array| is not a)"):
        quickstart.finished_summary(path)
    assert path.read_text() == text


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", "\xff\xfe"])
def test_an_unreadable_data_record_stops_the_command_with_its_name(tmp_path, text):
    """A data folder whose synth_meta.json is not a JSON object: one line naming the file, exit 1, the file
    kept, no traceback."""
    data = tmp_path / "data"
    data.mkdir()
    meta = data / "synth_meta.json"
    meta.write_bytes(text.encode("latin-1"))
    proc = subprocess.run([sys.executable, "-m", "videopanda", "quickstart", "--data", str(data),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and f"{meta}: " in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert meta.read_bytes() == text.encode("latin-1") and not (tmp_path / "out").exists()


def test_an_unreadable_settings_record_in_the_output_folder_is_named(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / quickstart.RUN_SETTINGS).write_text('"seed 0"')
    with pytest.raises(ValueError, match=f"{re.escape(str(out / quickstart.RUN_SETTINGS))}: holds a JSON string"):
        quickstart.claim_output_folder(out, {"seed": 0})
    assert (out / quickstart.RUN_SETTINGS).read_text() == '"seed 0"'
