"""`videopanda bench visual | data | ttft | cli | quickstart | step`: speed benchmarks (methodology in docs/benchmarks.md).

    videopanda bench visual --device cpu --threads 2 --output bench_visual_cpu.json
    videopanda bench visual --device cuda --dtype bfloat16 --output bench_visual_h100.json
    videopanda bench data --synthetic 8 --workers 1 --output bench_data.json
    videopanda bench data --synthetic 8 --repeats 4 --frame-cache /tmp --output bench_data_cache.json
    videopanda bench ttft --device cuda --dtype bfloat16 --output bench_ttft_h100.json
    videopanda bench cli --repeats 7 --output bench_cli.json
    videopanda bench quickstart outputs/quickstart-seed0 ../other-checkout/outputs/quickstart-seed0
    videopanda bench step --experiment quickstart --stage finetune run_dir=outputs/quickstart-seed0 \
        data.root=data/synth-seed0 runtime.frame_cache=data/synth-seed0/frame_cache --steps 20
"""
from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

from videopanda.log import get_logger

logger = get_logger(__name__)

SUBCOMMANDS = ("visual", "data", "ttft", "cli", "quickstart", "step")


def _parser() -> argparse.ArgumentParser:
    from videopanda.argparsing import CommandParser

    parser = CommandParser(prog="videopanda bench", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="bench", required=True)

    visual = sub.add_parser("visual", help="STAB + projector against CLIP ViT-L/14 and the LanguageBind video tower")
    visual.add_argument("--device", default="cpu", help="cpu or cuda")
    visual.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    visual.add_argument("--frames", type=int, default=8)
    visual.add_argument("--warmup", type=int, default=None, help="untimed calls per row (default 1 on CPU, 10 on CUDA)")
    visual.add_argument("--iters", type=int, default=None, help="timed calls per row (default 3 on CPU, 50 on CUDA)")
    visual.add_argument("--threads", type=int, default=2, help="CPU intra-op threads")
    visual.add_argument("--compile", action="store_true", help="time torch.compile'd modules (FLOPs stay eager)")
    visual.add_argument("--tiny", action="store_true", help="tiny widths and frames: a seconds-long smoke run")
    visual.add_argument("--rows", default=None, help="comma-separated subset of rows (default: all three)")
    visual.add_argument("--profile", type=int, default=0, metavar="N",
                        help="also print the top N ops of each row from torch.profiler")
    visual.add_argument("--output", type=Path, default=None, help="write the JSON report here")

    data = sub.add_parser("data", help="decode + preprocess 8 frames: videos/s per worker")
    source = data.add_mutually_exclusive_group(required=True)
    source.add_argument("--video", nargs="+", default=[], help="video files to decode")
    source.add_argument("--synthetic", type=int, default=0, metavar="N", help="write N synthetic mp4s first")
    data.add_argument("--size", default="640x360", help="synthetic video size WxH")
    data.add_argument("--fps", type=int, default=30, help="synthetic frame rate")
    data.add_argument("--seconds", type=float, default=10.0, help="synthetic duration")
    data.add_argument("--workers", type=int, default=1)
    data.add_argument("--repeats", type=int, default=3, help="timed passes over each worker's videos")
    data.add_argument("--frames", type=int, default=8)
    data.add_argument("--student-only", action="store_true",
                      help="preprocess the student frames alone, as inference does (default: student and teacher)")
    data.add_argument("--frame-cache", default=None, metavar="DIR",
                      help="read through a frame cache in a fresh temporary folder under DIR: the first pass decodes "
                           "and writes (cold), the later ones read (warm); needs --repeats 2 or more")
    data.add_argument("--output", type=Path, default=None)

    ttft = sub.add_parser("ttft", help="time to first token, 7B shape with random weights")
    ttft.add_argument("--device", default="cuda")
    ttft.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    ttft.add_argument("--frames", type=int, default=8)
    ttft.add_argument("--layers", type=int, default=None, help="LLM layers (default: the 7B config's 32)")
    ttft.add_argument("--hidden", type=int, default=None, help="LLM width (smoke tests only)")
    ttft.add_argument("--intermediate", type=int, default=None)
    ttft.add_argument("--heads", type=int, default=None)
    ttft.add_argument("--vocab", type=int, default=None)
    ttft.add_argument("--stab-width", type=int, default=None)
    ttft.add_argument("--text-tokens", type=int, default=32)
    ttft.add_argument("--decode-tokens", type=int, default=8)
    ttft.add_argument("--warmup", type=int, default=None)
    ttft.add_argument("--iters", type=int, default=None)
    ttft.add_argument("--threads", type=int, default=2)
    ttft.add_argument("--tiny", action="store_true", help="a tiny model and 112 px frames (CPU smoke test)")
    ttft.add_argument("--output", type=Path, default=None)

    cli = sub.add_parser("cli", help="seconds `videopanda --help` and every subcommand's `--help` take")
    cli.add_argument("--repeats", type=int, default=5, help="timed runs of each command line (the median is reported)")
    cli.add_argument("--warmup", type=int, default=1, help="untimed runs of each command line first")
    cli.add_argument("--output", type=Path, default=None)

    quickstart = sub.add_parser("quickstart", help="per-stage times of finished quickstart runs, side by side")
    quickstart.add_argument("folders", nargs="+", type=Path, metavar="OUT",
                            help="quickstart output folders (with summary.json); the first is the baseline")
    quickstart.add_argument("--output", type=Path, default=None)
    _step_parser(sub)
    return parser


def _step_parser(sub) -> None:
    from videopanda.train.cli import DEFAULT_EXPERIMENT
    from videopanda.train.experiment import STAGES

    step = sub.add_parser("step", help="a training stage's step in one process: data, forward, backward, optimizer")
    step.add_argument("--experiment", default=DEFAULT_EXPERIMENT,
                      help="experiment file, or a name under configs/experiments such as quickstart")
    step.add_argument("--stage", required=True, choices=STAGES)
    step.add_argument("overrides", nargs="*", metavar="key.path=value",
                      help="experiment keys to override, as for `videopanda train` (the stage starts from its "
                           "init folder, by default the previous stage's output under run_dir)")
    step.add_argument("--steps", type=int, default=10, help="timed steps (the median of each part is reported)")
    step.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    step.add_argument("--threads", type=int, default=1, help="CPU intra-op threads (one rank's, as the quickstart)")
    step.add_argument("--compile", action="store_true", help="torch.compile the training model first")
    step.add_argument("--profile", type=int, default=0, metavar="N",
                      help="also print the top N ops of one more step from torch.profiler")
    step.add_argument("--output", type=Path, default=None)


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"videopanda bench data: --size must look like 640x360, got {text!r}") from None
    return width, height


def _run(args: argparse.Namespace, command: str) -> tuple[dict, str]:
    if args.bench == "visual":
        from videopanda.bench.visual import ROW_NAMES, VisualBenchConfig, format_report, run_visual_bench

        rows = ROW_NAMES if args.rows is None else [r.strip() for r in args.rows.split(",") if r.strip()]
        report = run_visual_bench(VisualBenchConfig(
            device=args.device, dtype=args.dtype, frames=args.frames, warmup=args.warmup, iters=args.iters,
            threads=args.threads, compile=args.compile, tiny=args.tiny, rows=rows, profile=args.profile,
            command=command))
        return report, format_report(report)
    if args.bench == "data":
        from videopanda.bench.data_path import DataBenchConfig, format_report, run_data_bench

        width, height = _size(args.size)
        report = run_data_bench(DataBenchConfig(
            videos=args.video, synthetic=args.synthetic, width=width, height=height, fps=args.fps,
            seconds=args.seconds, workers=args.workers, repeats=args.repeats, num_frames=args.frames,
            teacher=not args.student_only, frame_cache=args.frame_cache, command=command))
        return report, format_report(report)
    if args.bench == "quickstart":
        from videopanda.bench.quickstart import QuickstartBenchConfig, format_report, run_quickstart_bench

        report = run_quickstart_bench(QuickstartBenchConfig(folders=tuple(args.folders), command=command))
        return report, format_report(report)
    if args.bench == "step":
        from videopanda.bench.step import StepBenchConfig, format_report, run_step_bench

        report = run_step_bench(StepBenchConfig(
            experiment=args.experiment, stage=args.stage, overrides=tuple(args.overrides), steps=args.steps,
            warmup=args.warmup, threads=args.threads, compile=args.compile, profile=args.profile, command=command))
        return report, format_report(report)
    if args.bench == "cli":
        from videopanda.bench.cli_help import CLIBenchConfig, format_report, run_cli_bench

        report = run_cli_bench(CLIBenchConfig(repeats=args.repeats, warmup=args.warmup, command=command))
        return report, format_report(report)
    from videopanda.bench.ttft import TTFTBenchConfig, format_report, run_ttft_bench

    report = run_ttft_bench(TTFTBenchConfig(
        device=args.device, dtype=args.dtype, frames=args.frames, layers=args.layers, hidden=args.hidden,
        intermediate=args.intermediate, heads=args.heads, vocab=args.vocab, stab_width=args.stab_width,
        text_tokens=args.text_tokens, decode_tokens=args.decode_tokens, warmup=args.warmup, iters=args.iters,
        threads=args.threads, tiny=args.tiny, command=command))
    return report, format_report(report)


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    from videopanda.bench.timing import BenchError

    command = "videopanda bench " + shlex.join(argv)
    try:
        report, table = _run(args, command)
    except (BenchError, ValueError, FileNotFoundError) as err:
        logger.error("bench %s failed: %s", args.bench, err)
        return 1
    print(table)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2) + "\n")
        logger.info("wrote %s", args.output)
    return 0
