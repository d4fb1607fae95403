"""A real full disk for tests: a tiny tmpfs mounted for the test and unmounted after it.

Typical use::

    from helpers.full_disk import full_disk
    def test_x(tmp_path):
        with full_disk(tmp_path / "small", size_kb=64) as folder:
            ...  # writes under `folder` fail with ENOSPC once 64 KiB are used

Mounting needs root (CI and the development machines run as root); elsewhere the test is skipped
with the reason said.
"""
from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def full_disk(folder: str | os.PathLike, size_kb: int = 64, fill: bool = False) -> Iterator[Path]:
    """Mount a tmpfs of `size_kb` KiB at `folder`; with `fill`, leave no free byte in it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        if fill:
            fill_up(folder)
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill_up(folder: str | os.PathLike) -> None:
    """Write zeros into `folder` until its file system has no byte left (large blocks, then small ones)."""
    with open(Path(folder) / ".filler", "wb", buffering=0) as handle:
        for block in (65536, 512):
            try:
                while True:
                    handle.write(b"\0" * block)
            except OSError:
                pass
