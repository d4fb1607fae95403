"""`videopanda data ...`: data tools. Only one so far:

    videopanda data check --data-path JSON [JSON ...] --video-folder DIR [--report report.json]
                          [--output clean.json] [--workers N] [--num-frames 8]

Exit status: 0 every sample is usable, 1 some are bad (listed on stdout and in the report),
2 usage error (missing or malformed JSON, missing video folder, bad option, a `--report` or `--output`
that is one of the input JSON files or both the same file).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from videopanda.constants import NUM_FRAMES
from videopanda.log import get_logger

logger = get_logger(__name__)

SUBCOMMANDS = ("check",)


def _parser() -> argparse.ArgumentParser:
    from videopanda.argparsing import CommandParser

    parser = CommandParser(prog="videopanda data", description="Data tools.")
    sub = parser.add_subparsers(dest="tool", required=True)
    check = sub.add_parser(
        "check",
        help="open every video the training JSON files reference, like training does",
        description="Check training JSON files: conversation structure, and every referenced video decoded "
        "and preprocessed with the training reader. Exit 0: all usable; 1: some bad; 2: usage error.",
    )
    check.add_argument("--data-path", nargs="+", required=True, metavar="JSON", help="one or more training JSON files")
    check.add_argument("--video-folder", required=True, metavar="DIR", help="folder the samples' video paths are relative to")
    check.add_argument("--report", metavar="FILE", help='write {"ok": N, "bad": [{"id", "video", "reason"}]} here')
    check.add_argument("--output", metavar="FILE", help="write the usable samples, unchanged, as one JSON list here")
    check.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                       help="decoding processes: 0 = in this process; by default the CPU count, at most 8")
    check.add_argument("--num-frames", type=int, default=NUM_FRAMES, help="frames sampled per video (multiple of 4)")
    check.add_argument("--first-half", action="store_true", help="only the first half of each JSON (stage 1)")
    return parser


def main(argv: list[str]) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad usage, 0 on --help
        return int(exc.code or 0)
    return _check(args)


def _usage_error(message: str) -> int:
    print(f"videopanda data check: error: {message}", file=sys.stderr)
    return 2


def _same_file(a: Path, b: Path) -> bool:
    """The same path once resolved, or one file under two names (a hard link)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return a.samefile(b)
    except OSError:  # one of them does not exist (yet)
        return False


def _clashing_output(args: argparse.Namespace) -> str | None:
    """Why `--report` / `--output` would overwrite an input or each other, else None."""
    outputs = [(flag, Path(value)) for flag, value in (("--report", args.report), ("--output", args.output)) if value]
    for flag, output in outputs:
        for data in args.data_path:
            if _same_file(output, Path(data)):
                return f"{flag} {output} is the input JSON {data}; write it to another file"
    if len(outputs) == 2 and _same_file(outputs[0][1], outputs[1][1]):
        return f"--report and --output are the same file {outputs[1][1]}; pass two files"
    return None


def _check(args: argparse.Namespace) -> int:
    from videopanda.data.check import check_samples
    from videopanda.data.dataset import DataFormatError, load_samples
    from videopanda.data.frames import FrameConfig

    if args.workers < 0:
        return _usage_error(f"--workers must be >= 0, got {args.workers}")
    clash = _clashing_output(args)
    if clash:
        return _usage_error(clash)
    try:
        frame_config = FrameConfig(num_frames=args.num_frames)
    except ValueError as exc:
        return _usage_error(f"--num-frames: {exc}")
    if not Path(args.video_folder).is_dir():
        return _usage_error(f"video folder {args.video_folder} is not a directory")
    try:
        samples = load_samples(args.data_path, first_half=args.first_half)
    except DataFormatError as exc:
        return _usage_error(str(exc))

    started = time.perf_counter()
    result = check_samples(samples, args.video_folder, frame_config, workers=args.workers)
    seconds = time.perf_counter() - started
    num_videos = len({s["video"] for s in samples if isinstance(s, dict) and isinstance(s.get("video"), str)})
    logger.info("checked %d samples, %d distinct videos in %.1f s (%.1f videos/s)", len(samples), num_videos,
                seconds, num_videos / seconds if seconds > 0 else 0.0)

    report = result.report
    if args.report:
        _write_json(args.report, report)
    if args.output:
        _write_json(args.output, result.clean)
    for entry in report["bad"]:
        print(f"BAD {entry['id']}\t{entry['video']}\t{entry['reason']}")
    print(f"{report['ok']} ok, {len(report['bad'])} bad of {len(samples)} samples")
    return 1 if report["bad"] else 0


def _write_json(path: str, content) -> None:
    target = Path(path)
    if target.parent != Path(""):
        target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
