"""One logging set-up for every entry point: `videopanda.*` loggers, rank-aware, to stderr."""
from __future__ import annotations

import logging
import os

_FORMAT = "%(asctime)s %(levelname)s %(name)s%(rank)s: %(message)s"


class _RankFilter(logging.Filter):
    """Adds ` [rank R]` to records when running under torchrun with more than one process."""

    def filter(self, record: logging.LogRecord) -> bool:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        record.rank = f" [rank {os.environ.get('RANK', '0')}]" if world > 1 else ""
        return True


def setup_logging(level: int | str = logging.INFO) -> None:
    """Configure the `videopanda` logger once; later calls only change the level."""
    root = logging.getLogger("videopanda")
    root.setLevel(level)
    if not any(getattr(h, "_videopanda", False) for h in root.handlers):
        handler = logging.StreamHandler()
        handler._videopanda = True  # type: ignore[attr-defined]
        handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
        handler.addFilter(_RankFilter())
        root.addHandler(handler)
        root.propagate = False


def get_logger(name: str) -> logging.Logger:
    """Logger under the `videopanda` namespace (pass `__name__`)."""
    return logging.getLogger(name if name.startswith("videopanda") else f"videopanda.{name}")
