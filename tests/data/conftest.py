"""Real video files for the data tests, encoded once per session with PyAV (tiny: 64x48, few frames)."""
from pathlib import Path

import pytest
from helpers.media import write_corpus


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory) -> Path:
    """A folder holding `helpers.media.CORPUS` (good, odd and broken files; "missing.mp4" does not exist)."""
    return write_corpus(tmp_path_factory.mktemp("media"))
