"""The quickstart driver's pieces that run without training: the overrides it hands to the stage launchers
(resolved as `videopanda train` resolves them), ablations, the report built from loss logs, and when an existing
synthetic data folder (dataset and base models) is reused."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.by_hand import wilson

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
    table = quickstart.results_table(summary)  # a summary from before the counts: bare accuracies
    assert "| counting | 75.0 |" in table and "**87.5**" in table and "| pretrain | 5 | 0.5000 | 10 |" in table
    assert "8 of 9 questions judged" in table
    summary["eval"].update({"num_items": 8, "per_type_num_yes": {"counting": 3, "motion": 4},
                            "per_type_num_items": {"counting": 4, "motion": 4}})
    point = {"step": 4, "epoch": 2.0, "accuracy": 50.0, "num_yes": 2, "num_items": 4, "per_type": {"motion": 50.0},
             "per_type_num_yes": {"motion": 2}, "per_type_num_items": {"motion": 4}}
    summary["curve"] = {"every_epochs": 2.0, "questions": 4, "points": [point], "elapsed_s": 30.0,
                        "seconds_per_point": 30.0}
    table = quickstart.results_table(summary)
    counting, overall, half = wilson(3, 4), wilson(7, 8), wilson(2, 4)
    assert f"| counting | 75.0 [{counting[0]:.1f}, {counting[1]:.1f}] (4) |" in table
    assert f"| **overall** | **87.5 [{overall[0]:.1f}, {overall[1]:.1f}] (8)** |" in table
    assert "on the first 4 held-out questions every 2 finetune epochs (30 s per point, 30 s in all)" in table
    assert table.endswith(f"| full model | 4 | 2 | 50.0 [{half[0]:.1f}, {half[1]:.1f}] (4) | "
                          f"50.0 [{half[0]:.1f}, {half[1]:.1f}] (4) |")


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
    # so does another frame count: the teacher's temporal attention spans the model's frames
    tiny["num_hidden_layers"] -= 1
    frames = tiny["num_frames"]
    tiny.update(num_frames=frames // 2, frames_per_chunk=frames // 4,
                stab={**tiny["stab"], "frames_per_chunk": frames // 4})
    (tmp_path / "shorter.json").write_text(json.dumps(tiny))
    shorter = quickstart.QuickstartConfig(data=cfg.data, num_train=2, num_test=4,
                                          overrides=[f"model.shape={tmp_path / 'shorter.json'}"])
    assert quickstart.stale_data_reason(shorter) == f"teacher frames {frames} != {frames // 2}"
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
    # one from before the teacher's frame count was recorded has 8-frame teachers: kept for 8-frame models only
    del meta["models"]["teacher_num_frames"]
    meta_path.write_text(json.dumps(meta))
    assert quickstart.stale_data_reason(cfg) == "teacher_position_frequencies 0 != 2"
    assert f"teacher frames 8 != {frames // 2}" in quickstart.stale_data_reason(shorter)


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


def _summary(seed: int, motion: int, counting: int, elapsed: float, per_type: int = 50) -> dict:
    """A summary whose motion and counting questions (`per_type` each) got `motion` and `counting` right."""
    right, total = motion + counting, 2 * per_type
    return {"seed": seed, "elapsed_s": elapsed, "num_test": total,
            "eval": {"per_type": {"motion": 100 * motion / per_type, "counting": 100 * counting / per_type},
                     "accuracy": 100 * right / total, "num_yes": right, "num_no": total - right - seed,
                     "num_items": total, "per_type_num_yes": {"motion": motion, "counting": counting},
                     "per_type_num_items": {"motion": per_type, "counting": per_type}}}


def _cell(right: int, total: int) -> str:
    low, high = wilson(right, total)
    return f"{100 * right / total:.1f} [{low:.1f}, {high:.1f}] ({total})"


def test_seed_table_gives_every_accuracy_per_seed_and_pooled_with_its_interval():
    runs = {"full model": [_summary(0, 40, 50, 500.0), _summary(1, 45, 48, 520.0), _summary(2, 50, 50, 540.0)],
            "no lste / no gstra": [_summary(0, 15, 49, 480.0), _summary(1, 0, 50, 470.0)]}
    lines = quickstart.seed_table(runs).splitlines()
    assert lines[0] == "| model | seed | counting | motion | overall | time (s) |"
    assert lines[2] == f"| full model | 0 | {_cell(50, 50)} | {_cell(40, 50)} | {_cell(90, 100)} | 500 |"
    assert lines[5] == (f"| full model | pooled (0, 1, 2) | {_cell(148, 150)} | {_cell(135, 150)} | "
                        f"{_cell(283, 300)} | 520 [500, 540] |")
    assert lines[7] == f"| no lste / no gstra | 1 | {_cell(50, 50)} | {_cell(0, 50)} | {_cell(50, 100)} | 470 |"
    assert lines[8].startswith(f"| no lste / no gstra | pooled (0, 1) | {_cell(99, 100)} | {_cell(15, 100)} |")
    # at 0 and at all right the interval stays inside [0, 100] and is not empty
    assert _cell(0, 50) == "0.0 [0.0, 7.1] (50)" and _cell(50, 50) == "100.0 [92.9, 100.0] (50)"
    assert lines[-1] == ("Questions judged per seed: full model 100 of 100, 99 of 100, 98 of 100; "
                         "no lste / no gstra 100 of 100, 99 of 100.")


def test_seed_table_times_only_runs_done_in_one_call_and_shows_old_summaries_bare():
    resumed = {**_summary(2, 50, 50, 30.0), "resumed": True}
    old = _summary(0, 40, 50, 500.0)
    for key in ("num_items", "per_type_num_yes", "per_type_num_items"):
        del old["eval"][key]   # a summary written before the counts were recorded
    runs = {"full model": [_summary(0, 40, 50, 500.0), _summary(1, 45, 48, 520.0), resumed], "old": [old]}
    lines = quickstart.seed_table(runs).splitlines()
    assert lines[4].endswith(f" | {_cell(100, 100)} | resumed |")
    assert lines[5].endswith(" | 510 [500, 520] (2 of 3 seeds) |")
    assert lines[6] == "| old | 0 | 100.0 | 80.0 | 90.0 | 500 |"
    assert lines[7] == "| old | pooled (0) | n/a | n/a | n/a | 500 [500, 500] |"


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


@pytest.mark.parametrize("argv, message", [
    (["--curve-questions", "50"], "--curve-questions needs --curve-every-epochs"),
    (["--curve-every-epochs", "0"], "--curve-every-epochs must be positive, got 0"),
    (["--curve-every-epochs", "1", "--num-test", "40"], "--curve-questions 100 is not in 1..--num-test (40)"),
])
def test_curve_options_are_checked(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        quickstart.main(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_learning_curves_keep_finetune_checkpoints_at_the_epochs_and_change_nothing_when_off(tmp_path):
    from videopanda.data import synth
    from videopanda.quickstart.curves import CurveSettings

    data = tmp_path / "data"
    assert synth.main(["--out", str(data), "--num-train", "40", "--num-test", "4", "--workers", "1"]) == 0
    off = quickstart.QuickstartConfig(out=tmp_path / "out", data=data, num_train=40, num_test=4)
    on = quickstart.QuickstartConfig(out=tmp_path / "out", data=data, num_train=40, num_test=4,
                                     curve=CurveSettings(every_epochs=2.0, questions=4))
    for stage in quickstart.STAGES:
        assert quickstart.stage_flags(off, stage) == off.train_overrides()
    assert quickstart.stage_flags(on, "pretrain") == off.train_overrides()
    # 40 finetune samples at 16 a step: 3 steps an epoch, a checkpoint every 6; 9 epochs: 5 checkpoints + the last
    finetune = resolve_experiment(on.experiment, quickstart.stage_flags(on, "finetune")).experiment
    assert (finetune.save.steps, finetune.save.total_limit) == (6, 6)
    assert "curve" not in quickstart.run_settings(off)
    assert quickstart.run_settings(on)["curve"] == {"every_epochs": 2.0, "questions": 4}
