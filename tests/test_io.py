"""videopanda.io on a real full disk (a tiny tmpfs): one-line errors, no temporary file left, the old file kept."""
import json

import pytest

from helpers.full_disk import fill_up, full_disk
from videopanda.io import OutputError, describe_os_error, write_atomic, write_json_atomic, write_jsonl_atomic


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
            write_atomic(target, cpp_style_writer)
        assert str(caught.value) == f"{target}: no space left on device"
        assert list(folder.iterdir()) == []
    with pytest.raises(RuntimeError, match="iostream error"):  # with room on the disk it is not a full disk
        write_atomic(tmp_path / "model.safetensors", cpp_style_writer)
    assert str(describe_os_error(RuntimeError("basic_ios::clear: iostream error"), tmp_path / "x")) == (
        f"{tmp_path / 'x'}: basic_ios::clear: iostream error")


def test_other_errors_name_the_file_in_one_line(tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    with pytest.raises(OutputError) as caught:
        write_json_atomic(blocker / "out.json", {})
    assert str(caught.value).startswith(str(blocker / "out.json") + ": ")
    assert "no space" not in str(caught.value)
