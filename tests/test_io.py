"""videopanda.io on a real full disk (a tiny tmpfs): one-line errors, no temporary file left, the old file kept."""
import json

import pytest

from helpers.full_disk import fill_up, full_disk
from videopanda.io import OutputError, atomic_path, describe_os_error, write_json_atomic, write_jsonl_atomic


def test_a_full_disk_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    with full_disk(tmp_path / "disk", size_kb=64) as folder:
        target = folder / "results.json"
        write_json_atomic(target, {"accuracy": 1.0})
        fill_up(folder)
        with pytest.raises(OutputError) as caught:
            write_jsonl_atomic(target, [{"text": "x" * 8192}] * 4)
        assert str(caught.value) == f"{target}: no space left on device"
        assert "\n" not in str(caught.value)
        assert json.loads(target.read_text()) == {"accuracy": 1.0}
        assert sorted(p.name for p in folder.iterdir()) == [".filler", "results.json"]


def test_a_writer_that_loses_errno_on_a_full_disk_is_still_said_as_a_full_disk(tmp_path):
    def cpp_style_writer(tmp):
        tmp.write_bytes(b"\0" * 64_000)  # what fitted; then the stream fails without an errno, as torch.save's does
        raise RuntimeError("basic_ios::clear: iostream error")

    with full_disk(tmp_path / "disk", size_kb=128) as folder:
        target = folder / "model.safetensors"
        with pytest.raises(OutputError) as caught:
            with atomic_path(target) as tmp:
                cpp_style_writer(tmp)
        assert str(caught.value) == f"{target}: no space left on device"
        assert list(folder.iterdir()) == []
    with pytest.raises(RuntimeError, match="iostream error"):  # with room on the disk it is not a full disk
        with atomic_path(tmp_path / "model.safetensors") as tmp:
            cpp_style_writer(tmp)
    assert str(describe_os_error(RuntimeError("basic_ios::clear: iostream error"), tmp_path / "x")) == (
        f"{tmp_path / 'x'}: basic_ios::clear: iostream error")


def test_other_errors_name_the_file_in_one_line(tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    with pytest.raises(OutputError) as caught:
        write_json_atomic(blocker / "out.json", {})
    assert str(caught.value).startswith(str(blocker / "out.json") + ": ")
    assert "no space" not in str(caught.value)


def test_atomic_path_hands_a_writer_a_name_beside_the_target_with_its_suffix(tmp_path):
    target = tmp_path / "clips" / "clip.mp4"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.suffix == ".mp4" and tmp != target
        tmp.write_bytes(b"new")
        assert not target.exists()
    assert target.read_bytes() == b"new"
    with pytest.raises(ValueError, match="encoder gave up"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise ValueError("encoder gave up")
    assert target.read_bytes() == b"new"
    assert [p.name for p in target.parent.iterdir()] == ["clip.mp4"]
