"""Preemption and whole-run reports on real runs: torchrun with 2 processes (DeepSpeed ZeRO-2, gloo) on the tiny
model, over training data that holds bad samples; SIGTERM / SIGUSR1 sent at a step read from the run's progress;
resumed runs compared with an uninterrupted one. A full disk is a real tmpfs."""
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers.full_disk import fill_up, full_disk
from videopanda.train.checkpointing import COMPLETE_MARKER, FINAL_MARKER, PREEMPT_FILE_ENV, PREEMPTED_EXIT_CODE

pytestmark = pytest.mark.slow

STEPS = ["stages.{stage}.max_steps=6", "save.steps=2", "save.total_limit=10",
         "training.deepspeed=configs/deepspeed/zero2.json"]
BAD_KINDS = {"gone_1": "video_missing", "gone_2": "video_missing", "gone_3": "video_missing", "hollow": "video_empty",
             "noise": "video_unreadable", "mute": "conversation"}


@pytest.fixture(scope="module")
def bad_data(tmp_path_factory, data_root):
    """The tiny DATA_ROOT's 24 samples with 6 bad ones between them (missing, empty and corrupt videos, a
    conversation without an answer): `stages.<stage>.data_json` and `data.video_folder` overrides."""
    root = tmp_path_factory.mktemp("bad_data")
    videos = root / "train" / "valley"
    videos.mkdir(parents=True)
    for video in (data_root / "train" / "valley").iterdir():
        (videos / video.name).symlink_to(video)
    (videos / "hollow.mp4").write_bytes(b"")
    (videos / "noise.mp4").write_bytes(os.urandom(4096))
    good = json.loads((data_root / "train" / "train_json" / "valley_.json").read_text())
    answer = [{"from": "gpt", "value": "the red circle moves left"}]
    bad = []
    for k, sid in enumerate(BAD_KINDS):  # long and short ones: batches are sorted by length inside a step
        question = [{"from": "human", "value": "<video>\nwhat moves?" + " and then what" * (8 * (k % 2))}]
        turns = question + ([] if sid == "mute" else answer)
        bad.append({"id": sid, "video": f"valley/{sid}.mp4", "conversations": turns})
    bad[-1]["video"] = "valley/v0.mp4"  # the conversation is what is wrong with it
    samples = []
    for i, sample in enumerate(good):
        samples.append(sample)
        if i % 4 == 3:
            samples.append(bad[i // 4])
    path = root / "train" / "bad_.json"
    path.write_text(json.dumps(samples))
    return [f"stages.{{stage}}.data_json={path}", f"data.video_folder={root / 'train'}"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_args, trainkit, llama_dir, bad_data):
    """An uninterrupted run: 6 steps of global batch 8 over the 30 samples, a checkpoint every 2 steps."""
    output = tmp_path_factory.mktemp("reference") / "out"
    trainkit.torchrun(tiny_args("prealign", llama_dir, output, *STEPS, *bad_data))
    return output


def logged_steps(output: Path) -> list[int]:
    """Steps in the loss log so far (a line still being written is skipped)."""
    log = output / "loss_log.jsonl"
    lines = log.read_text().split("\n")[:-1] if log.exists() else []
    return [json.loads(line)["step"] for line in lines]


def run_until_step(command: list[str], env: dict, log: Path, output: Path, step: int, signum: int, target,
                   repo: Path) -> tuple[int, str]:
    """Start `command` in its own session, send `signum` once it has logged `step` (to the process group when
    `target` is None, else to the pid `target(process)` returns), and return its exit status and output."""
    with open(log, "w") as handle:
        process = subprocess.Popen(command, env=env, cwd=repo, start_new_session=True, stdout=handle,
                                   stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 300
            while process.poll() is None and time.time() < deadline and step not in logged_steps(output):
                time.sleep(0.05)
            assert process.poll() is None, f"the run ended before step {step}:\n{log.read_text()[-6000:]}"
            if target is None:
                os.killpg(process.pid, signum)
            else:
                os.kill(target(process), signum)
            process.wait(timeout=240)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    return process.returncode, log.read_text()


def check_stopped_with_a_checkpoint(output: Path, trainkit) -> int:
    """The stop step is the last logged one and its checkpoint is complete: no step is lost."""
    stop = trainkit.read_loss_log(output)[-1]["step"]
    assert 2 < stop < 6, f"stopped at step {stop}"
    marker = json.loads((output / f"checkpoint-{stop}" / COMPLETE_MARKER).read_text())
    assert marker["global_step"] == stop and marker["world_size"] == 2
    assert not (output / FINAL_MARKER).exists()
    return stop


def check_resumed_run_matches(output: Path, reference: Path, trainkit, stop: int) -> None:
    resumed, ref = trainkit.read_loss_log(output), trainkit.read_loss_log(reference)
    assert [r["step"] for r in resumed] == [r["step"] for r in ref] == list(range(1, 7))
    for ours, theirs in zip(resumed, ref):
        assert ("distill_loss" in ours) == ("distill_loss" in theirs), (ours, theirs)
        for key in ("loss", "lm_loss", "distill_loss", "learning_rate", "grad_norm"):
            if key in theirs:
                assert ours[key] == pytest.approx(theirs[key], rel=1e-6, abs=1e-7), (key, ours, theirs)
    final, ref_final = load_file(output / "model.safetensors"), load_file(reference / "model.safetensors")
    assert final.keys() == ref_final.keys()
    assert all(torch.allclose(final[k], ref_final[k], rtol=1e-5, atol=1e-6) for k in final)
    # The whole run's reports, not the resumed part's.
    done, ref_done = json.loads((output / FINAL_MARKER).read_text()), json.loads((reference / FINAL_MARKER).read_text())
    assert done["global_step"] == 6
    assert done["train_loss"] == pytest.approx(ref_done["train_loss"], rel=1e-6)
    assert done["train_loss"] == pytest.approx(sum(r["loss"] for r in ref) / 6, rel=1e-6)
    report, ref_report = (json.loads((folder / "data_report.json").read_text()) for folder in (output, reference))
    for key in ("samples", "bad_samples", "replacements", "by_kind", "bad"):
        assert report[key] == ref_report[key], key
    assert [(s["start_step"], s["end_step"]) for s in report["segments"]] == [(0, stop), (stop, 6)]
    assert sum(r["replacements"] for s in report["segments"] for r in s["ranks"]) == report["replacements"]


def test_the_reference_run_reports_bad_samples_of_both_ranks(reference, trainkit):
    report = json.loads((reference / "data_report.json").read_text())
    assert {r["id"]: r["kind"] for r in report["bad"]} == BAD_KINDS
    assert report["samples"] == 30 and report["bad_samples"] == 6
    (segment,) = report["segments"]
    assert segment["start_step"] == 0 and segment["end_step"] == 6
    per_rank = [r["replacements"] for r in segment["ranks"]]
    assert len(per_rank) == 2 and min(per_rank) > 0, per_rank  # bad samples reached both ranks
    assert report["replacements"] == sum(per_rank)
    steps = json.loads((reference / "checkpoint-2" / "data_report.json").read_text())
    assert steps["segments"][0]["end_step"] == 2 and steps["replacements"] <= report["replacements"]
    log = trainkit.read_loss_log(reference)
    done = json.loads((reference / FINAL_MARKER).read_text())
    assert done["train_loss"] == pytest.approx(sum(r["loss"] for r in log) / len(log), rel=1e-9)


def test_sigterm_to_the_launcher_saves_the_step_and_the_resumed_run_matches(reference, tmp_path, tiny_args, trainkit,
                                                                            llama_dir, bad_data):
    """SLURM's way: SIGTERM to every process of the launcher (bash, torchrun, workers, DataLoader workers)."""
    output = tmp_path / "out"
    args = tiny_args("prealign", llama_dir, output, *STEPS, *bad_data, "runtime.num_workers=1")
    launcher = ["bash", "scripts/videopanda/launch_stage.sh", "prealign", "--gpus-per-node", "2", "--master-port",
                str(trainkit.free_port()), "--", *args]
    status, out = run_until_step(launcher, {**trainkit.env(), "PYTHON": trainkit.python}, tmp_path / "run.log", output,
                                 2, signal.SIGTERM, None, trainkit.repo)
    assert status == PREEMPTED_EXIT_CODE, out[-6000:]
    assert "preempted" in out.splitlines()[-1], out[-3000:]
    stop = check_stopped_with_a_checkpoint(output, trainkit)
    trainkit.torchrun(args)
    check_resumed_run_matches(output, reference, trainkit, stop)


def worker_pids(parent: int) -> dict[int, int]:
    """{rank: pid} of the torchrun workers that are children of `parent` (read from /proc)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent:
            rank = next((int(v[5:]) for v in environ if v.startswith(b"RANK=")), None)
            if rank is not None:
                found[rank] = int(entry.name)
    return found


def test_sigusr1_on_one_rank_stops_both_at_the_same_step(reference, tmp_path, tiny_args, trainkit, llama_dir,
                                                          bad_data):
    output = tmp_path / "out"
    preempt_file = tmp_path / "preempted.txt"
    args = tiny_args("prealign", llama_dir, output, *STEPS, *bad_data)
    status, out = run_until_step(trainkit.command(args), {**trainkit.env(), PREEMPT_FILE_ENV: str(preempt_file)},
                                 tmp_path / "run.log", output, 2, signal.SIGUSR1,
                                 lambda process: worker_pids(process.pid)[1], trainkit.repo)
    assert status != 0
    assert re.search(rf"exitcode\s*:\s*{PREEMPTED_EXIT_CODE}", out), out[-6000:]
    stop = check_stopped_with_a_checkpoint(output, trainkit)
    assert preempt_file.read_text().startswith("preempted (SIGUSR1"), preempt_file.read_text()
    assert f"stopped after step {stop}" in preempt_file.read_text()
    trainkit.torchrun(args)
    check_resumed_run_matches(output, reference, trainkit, stop)


def test_a_full_disk_stops_with_one_line_and_no_complete_checkpoint(tmp_path, tiny_args, trainkit, llama_dir):
    """One process, no DeepSpeed: the first checkpoint does not fit on a 1.5 MiB file system (torch.save of the
    optimizer state fails in C++, without an errno)."""
    with full_disk(tmp_path / "small", size_kb=1536) as small:
        output = small / "out"
        args = tiny_args("prealign", llama_dir, output, "stages.{stage}.max_steps=3", "save.steps=1")
        done = subprocess.run([trainkit.python, "-m", "videopanda.train", *args], env=trainkit.env(),
                              cwd=trainkit.repo, capture_output=True, text=True, timeout=300)
        log = done.stdout + done.stderr
        assert done.returncode == 1, log[-6000:]
        errors = [line for line in log.splitlines() if " ERROR " in line]
        expected = f"{output / 'checkpoint-1'}: no space left on device"
        assert len(errors) == 1 and errors[0].endswith(expected), log[-6000:]
        assert "Traceback" not in log and "basic_ios" not in log
        assert not list(output.glob(f"checkpoint-*/{COMPLETE_MARKER}")) and not (output / FINAL_MARKER).exists()


def test_a_full_disk_under_torchrun_stops_every_rank(tmp_path, tiny_args, trainkit, llama_dir):
    with full_disk(tmp_path / "small", size_kb=1536) as small:
        output = small / "out"
        args = tiny_args("prealign", llama_dir, output, "stages.{stage}.max_steps=3", "save.steps=1",
                         "training.deepspeed=configs/deepspeed/zero2.json")
        done = subprocess.run(trainkit.command(args), env=trainkit.env(), cwd=trainkit.repo, capture_output=True,
                              text=True, timeout=300)
        log = done.stdout + done.stderr
        assert done.returncode != 0
        errors = [line for line in log.splitlines() if "videopanda" in line and " ERROR " in line]
        expected = f"{output / 'checkpoint-1'}: no space left on device"
        assert errors and all(e.endswith(expected) for e in errors), log[-6000:]
        assert "basic_ios" not in log and not re.search(r"\[rank\d\]: Traceback", log)
        assert not list(output.glob(f"checkpoint-*/{COMPLETE_MARKER}")) and not (output / FINAL_MARKER).exists()



def test_a_run_stopped_after_its_last_checkpoint_finishes_without_another_step(reference, tmp_path, tiny_args,
                                                                                trainkit, llama_dir, bad_data):
    """Killed between the last step's checkpoint and the final outputs: the rerun writes them from that checkpoint
    (the HF Trainer resumed from it would train a seventh step)."""
    output = tmp_path / "out"
    shutil.copytree(reference, output)
    for name in ("training_complete.json", "data_report.json", "model.safetensors", "config.json"):
        (output / name).unlink()
    trainkit.torchrun(tiny_args("prealign", llama_dir, output, *STEPS, *bad_data))
    assert [r["step"] for r in trainkit.read_loss_log(output)] == list(range(1, 7))
    final, ref_final = load_file(output / "model.safetensors"), load_file(reference / "model.safetensors")
    assert final.keys() == ref_final.keys() and all(torch.equal(final[k], ref_final[k]) for k in final)
    for name in ("training_complete.json", "data_report.json"):
        ours, theirs = (json.loads((folder / name).read_text()) for folder in (output, reference))
        if name == "training_complete.json":  # the loop's time is the call's own: this one trained no step
            assert ours.pop("timing") is None and theirs.pop("timing")["steps"] == 6
        assert ours == theirs, name
    assert (output / "config.json").read_text() == (reference / "config.json").read_text()


def test_a_stop_in_the_second_epoch_resumes_exactly_and_every_rank_exits_75(reference, tmp_path, tiny_args, trainkit,
                                                                            llama_dir, bad_data):
    """SIGUSR1 reaches both workers during the scheduled save of step 4 (the end of the first epoch): they stop
    after step 5, and the resumed run skips into the second epoch, which must keep that epoch's sample order.
    SIGTERMs that keep coming while the ranks exit (torchrun sends one to the ranks left once one has exited)
    do not change their status."""
    output = tmp_path / "out"
    preempt_file = tmp_path / "preempted.txt"
    args = tiny_args("prealign", llama_dir, output, *STEPS, *bad_data)
    with open(tmp_path / "run.log", "w") as handle:
        process = subprocess.Popen(trainkit.command(args), env={**trainkit.env(), PREEMPT_FILE_ENV: str(preempt_file)},
                                   cwd=trainkit.repo, start_new_session=True, stdout=handle, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 300
            while process.poll() is None and time.time() < deadline and not (output / "checkpoint-4").exists():
                time.sleep(0.01)
            workers = worker_pids(process.pid)
            assert process.poll() is None and len(workers) == 2, (tmp_path / "run.log").read_text()[-6000:]
            for pid in workers.values():
                os.kill(pid, signal.SIGUSR1)
            while process.poll() is None and time.time() < deadline and not preempt_file.exists():
                time.sleep(0.01)
            while process.poll() is None and time.time() < deadline:
                for pid in workers.values():
                    try:
                        os.kill(pid, signal.SIGTERM)
                    except ProcessLookupError:
                        pass
                time.sleep(0.02)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    out = (tmp_path / "run.log").read_text()
    statuses = re.findall(r"rank\s*:\s*(\d+) \(local_rank: \d+\)\s*exitcode\s*:\s*(-?\d+)", out)
    assert sorted(statuses) == [("0", str(PREEMPTED_EXIT_CODE)), ("1", str(PREEMPTED_EXIT_CODE))], out[-6000:]
    stop = check_stopped_with_a_checkpoint(output, trainkit)
    assert stop == 5, f"stopped at step {stop}"
    trainkit.torchrun(args)
    check_resumed_run_matches(output, reference, trainkit, stop)


def test_a_signal_in_the_last_step_lets_the_launcher_finish_with_status_0(tmp_path, tiny_args, trainkit, llama_dir):
    """SIGTERM to every process of the launcher during the last step: the run finishes, and so does the launcher
    (torchrun itself, signalled, reports a failure)."""
    output = tmp_path / "out"
    args = tiny_args("prealign", llama_dir, output, "stages.{stage}.max_steps=2", "save.steps=100")
    launcher = ["bash", "scripts/videopanda/launch_stage.sh", "prealign", "--gpus-per-node", "2", "--master-port",
                str(trainkit.free_port()), "--", *args]
    status, out = run_until_step(launcher, {**trainkit.env(), "PYTHON": trainkit.python}, tmp_path / "run.log", output,
                                 1, signal.SIGTERM, None, trainkit.repo)
    assert status == 0, out[-6000:]
    assert (output / FINAL_MARKER).exists() and json.loads((output / FINAL_MARKER).read_text())["global_step"] == 2
    assert out.splitlines()[-1].endswith(f"prealign finished ({output})"), out[-3000:]


def test_with_a_log_every_two_steps_the_resumed_loss_curve_is_the_uninterrupted_one(tmp_path, tiny_args, trainkit,
                                                                                      llama_dir):
    """One process, no DeepSpeed, a log every 2 steps: stopped after step 3 (SIGUSR1 during the save of step 2),
    the resumed run's log of step 4 still averages steps 3 and 4, and no extra log appears at step 3."""
    extra = ["stages.{stage}.max_steps=4", "save.steps=2", "runtime.logging_steps=2"]
    command = [trainkit.python, "-m", "videopanda.train"]
    ref = tmp_path / "ref"
    done = subprocess.run([*command, *tiny_args("prealign", llama_dir, ref, *extra)], env=trainkit.env(),
                          cwd=trainkit.repo, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    output = tmp_path / "out"
    args = [*command, *tiny_args("prealign", llama_dir, output, *extra)]
    with open(tmp_path / "run.log", "w") as handle:
        process = subprocess.Popen(args, env=trainkit.env(), cwd=trainkit.repo, stdout=handle, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 300
            while process.poll() is None and time.time() < deadline and not (output / "checkpoint-2").exists():
                time.sleep(0.01)
            process.send_signal(signal.SIGUSR1)
            process.wait(timeout=240)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert process.returncode == PREEMPTED_EXIT_CODE, (tmp_path / "run.log").read_text()[-6000:]
    assert (output / "checkpoint-3" / COMPLETE_MARKER).exists()
    assert [r["step"] for r in trainkit.read_loss_log(output)] == [2]
    done = subprocess.run(args, env=trainkit.env(), cwd=trainkit.repo, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    resumed, uninterrupted = trainkit.read_loss_log(output), trainkit.read_loss_log(ref)
    assert [r["step"] for r in resumed] == [r["step"] for r in uninterrupted] == [2, 4]
    for ours, theirs in zip(resumed, uninterrupted):
        for key in ("loss", "lm_loss", "distill_loss"):
            assert (key in ours) == (key in theirs) and ours.get(key) == pytest.approx(theirs.get(key), rel=1e-6), key
    done_ref, done_ours = (json.loads((folder / FINAL_MARKER).read_text()) for folder in (ref, output))
    assert done_ours["train_loss"] == pytest.approx(done_ref["train_loss"], rel=1e-6)


def test_a_disk_filling_up_during_training_stops_every_rank_with_one_line(tmp_path, tiny_args, trainkit, llama_dir):
    """The disk fills up once both ranks have started: rank 0 cannot append the first loss line, and rank 1,
    whose next collective then fails, says the same in one line; both exit 1."""
    with full_disk(tmp_path / "small", size_kb=4096) as small:
        output = small / "out"
        args = tiny_args("prealign", llama_dir, output, "stages.{stage}.max_steps=3", "save.steps=100",
                         "training.deepspeed=configs/deepspeed/zero2.json")
        log = tmp_path / "run.log"
        with open(log, "w") as handle:
            process = subprocess.Popen(trainkit.command(args), env=trainkit.env(), cwd=trainkit.repo,
                                       start_new_session=True, stdout=handle, stderr=subprocess.STDOUT)
            try:
                deadline = time.time() + 300
                while process.poll() is None and time.time() < deadline and not all(
                        f"[rank {r}]: stage prealign on" in log.read_text() for r in (0, 1)):
                    time.sleep(0.02)
                assert process.poll() is None, log.read_text()[-6000:]
                fill_up(small)
                process.wait(timeout=240)
            finally:
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
        out = log.read_text()
        errors = [line for line in out.splitlines() if "videopanda" in line and " ERROR " in line]
        assert {e.split("[rank ")[1][0] for e in errors} == {"0", "1"}, out[-6000:]
        assert all(e.endswith(": no space left on device") and str(output) in e for e in errors), errors
        assert not re.search(r"\[rank\d\]: Traceback", out), out[-6000:]
        statuses = re.findall(r"rank\s*:\s*(\d+) \(local_rank: \d+\)\s*exitcode\s*:\s*(-?\d+)", out)
        assert sorted(statuses) == [("0", "1"), ("1", "1")], out[-6000:]
