"""`videopanda eval {qa,merge,judge,benchmark,report}`.

    qa         answer one chunk of a dataset's questions with a model (resumable, one process per GPU)
    merge      check that every question is answered exactly once; write merge.jsonl
    judge      LLM (or exact-match) judge of merge.jsonl -> verdicts.jsonl, failed.jsonl, results.json
    benchmark  the Video-ChatGPT benchmark: --stage infer | judge | all
    report     Table-1-style markdown/JSON across models (and --plot of the benchmark aspects)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from videopanda.eval.datasets import DATASETS, QA_DATASETS, DatasetError, load_questions
from videopanda.log import get_logger

logger = get_logger(__name__)

SUBCOMMANDS = ("qa", "merge", "judge", "benchmark", "report")


def _add_inference_args(parser: argparse.ArgumentParser, model_required: bool = True) -> None:
    g = parser.add_argument_group("inference")
    g.add_argument("--model", required=model_required, help="Video-Panda model folder")
    g.add_argument("--num-chunks", type=int, default=1, help="split the questions into K chunks (one per GPU)")
    g.add_argument("--chunk-idx", type=int, default=0, help="which chunk this process answers (0-based)")
    g.add_argument("--batch-size", type=int, default=1)
    g.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="auto: bfloat16 on CUDA, float32 on CPU")
    g.add_argument("--max-new-tokens", type=int, default=1024)
    g.add_argument("--num-frames", type=int, default=None, help="frames per video (default: the model's, 8)")
    g.add_argument("--system", choices=["user", "human"], default="user",
                   help="system text: 'user' (the training text, default) or 'human' (the original inference text)")
    g.add_argument("--retry-errors", action="store_true", help="answer again the questions that got error rows")


def _add_judge_args(parser: argparse.ArgumentParser, model_flags: tuple[str, ...] = ("--judge-model",)) -> None:
    g = parser.add_argument_group("judge")
    g.add_argument("--judge", choices=["gpt", "exact"], default="gpt",
                   help="gpt: an OpenAI-compatible chat model (key from OPENAI_API_KEY); "
                        "exact: offline normalised exact match, not comparable with GPT-judged numbers")
    g.add_argument("--api-base", default=None, help="OpenAI-compatible base URL (default: OpenAI's)")
    g.add_argument(*model_flags, dest="judge_model", default="gpt-3.5-turbo",
                   help="judge model name sent to the server (the name it reports back is recorded)")
    g.add_argument("--workers", type=int, default=8, help="parallel judge requests")
    g.add_argument("--max-retries", type=int, default=5, help="extra attempts per item after the first")
    g.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    g.add_argument("--backoff-base", type=float, default=1.0, help="first retry wait in seconds (doubles)")
    g.add_argument("--seed", type=int, default=1234, help="sent to the server where supported; -1 to omit")


def _progress_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _make_judge(args: argparse.Namespace):
    from videopanda.eval.judge import ExactMatchJudge, JudgeConfig, OpenAIJudge, safe_url

    if args.judge == "exact":
        return ExactMatchJudge(), {"api_base": None}
    config = JudgeConfig(api_base=args.api_base, model=args.judge_model, timeout=args.timeout,
                         max_retries=args.max_retries, backoff_base=args.backoff_base,
                         seed=None if args.seed < 0 else args.seed)
    meta = {"api_base": safe_url(args.api_base) or "https://api.openai.com/v1", "judge_model_requested": config.model,
            "temperature": config.temperature, "seed": config.seed}
    return OpenAIJudge(config), meta


def _answerer(args: argparse.Namespace):
    from videopanda.eval.qa import ModelAnswerer, ModelAnswererConfig

    device = args.device
    if device is None:
        import torch
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return ModelAnswerer(ModelAnswererConfig(model=args.model, device=device, dtype=args.dtype,
                                             num_frames=args.num_frames, max_new_tokens=args.max_new_tokens,
                                             system=args.system))


def _infer(args: argparse.Namespace, dataset: str, output_dir: Path) -> int:
    from videopanda.eval.qa import chunk_file, run_qa, shard

    if args.num_chunks < 1 or not 0 <= args.chunk_idx < args.num_chunks:
        raise DatasetError(f"--chunk-idx must be in 0..{args.num_chunks - 1}, got {args.chunk_idx}")
    items = shard(load_questions(args.data_root, dataset), args.num_chunks, args.chunk_idx)
    out_file = chunk_file(output_dir, args.num_chunks, args.chunk_idx)
    logger.info("%s chunk %d of %d: %d questions -> %s", dataset, args.chunk_idx, args.num_chunks, len(items), out_file)
    summary = run_qa(items, _answerer(args), out_file, batch_size=args.batch_size,
                     retry_errors=args.retry_errors, progress=not args.no_progress)
    logger.info("done: %d answered now, %d from earlier runs, %d error rows written now",
                summary.answered, summary.skipped, summary.errors)
    return 0


def _merge(pred_dir: Path, dataset: str, data_root: str, output: Path, allow_incomplete: bool) -> int:
    from videopanda.eval.merge import merge_predictions, write_merged

    report = merge_predictions(pred_dir, load_questions(data_root, dataset))
    print(report.summary())
    if not report.complete and not allow_incomplete:
        logger.error("%s is incomplete; not writing %s (rerun the missing chunks, or pass --allow-incomplete)",
                     pred_dir, output)
        if output.exists():
            logger.error("%s exists from an earlier merge and does not match these predictions", output)
        return 1
    write_merged(report, output)
    logger.info("wrote %s (%d lines)", output, len(report.records))
    return 0


def _cmd_qa(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="videopanda eval qa", description="Answer a zero-shot QA set with a model.")
    p.add_argument("--dataset", required=True, choices=list(QA_DATASETS))
    p.add_argument("--data-root", required=True)
    p.add_argument("--output-dir", required=True, type=Path)
    _add_inference_args(p)
    _progress_arg(p)
    args = p.parse_args(argv)
    return _infer(args, args.dataset, args.output_dir)


def _cmd_merge(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="videopanda eval merge",
                                description="Merge chunk predictions; check every question is answered once.")
    p.add_argument("--pred-dir", required=True, type=Path)
    p.add_argument("--dataset", required=True, choices=list(DATASETS))
    p.add_argument("--data-root", required=True)
    p.add_argument("--output", required=True, type=Path)
    p.add_argument("--allow-incomplete", action="store_true", help="write the merge even if questions are missing")
    args = p.parse_args(argv)
    return _merge(args.pred_dir, args.dataset, args.data_root, args.output, args.allow_incomplete)


def _cmd_judge(argv: list[str]) -> int:
    from videopanda.eval.judge import qa_judge_items, run_judge
    from videopanda.eval.records import read_jsonl

    p = argparse.ArgumentParser(prog="videopanda eval judge", description="Judge merged QA predictions.")
    p.add_argument("--pred-file", required=True, type=Path)
    p.add_argument("--output-dir", required=True, type=Path)
    p.add_argument("--dataset", default=None, help="label stored in results.json (msvd, msrvtt, tgif, activitynet, synth)")
    _add_judge_args(p, model_flags=("--model", "--judge-model"))
    _progress_arg(p)
    args = p.parse_args(argv)
    records = read_jsonl(args.pred_file)
    ids = [str(r.get("id")) for r in records]
    if len(set(ids)) != len(ids):
        logger.error("%s has duplicated ids; run `videopanda eval merge` first", args.pred_file)
        return 1
    items, failed = qa_judge_items(records)
    judge, meta = _make_judge(args)
    results = run_judge(items, judge, args.output_dir, failed_inference=failed, workers=args.workers,
                        metadata={"dataset": args.dataset, "pred_file": str(args.pred_file), **meta},
                        progress=not args.no_progress)
    acc = "n/a" if results["accuracy"] is None else f"{results['accuracy']:.2f}"
    score = "n/a" if results["score"] is None else f"{results['score']:.3f}"
    print(f"accuracy {acc}  score {score}  (yes {results['num_yes']}, no {results['num_no']}, "
          f"judge failures {results['num_failed']}, inference errors {results['num_failed_inference']}; "
          f"judge {results['judge']}, model {results['judge_model']})")
    if results["num_failed"]:
        logger.warning("%d item(s) got no valid verdict (see %s); rerun to retry only those",
                       results["num_failed"], args.output_dir / "failed.jsonl")
    return 0


def _cmd_benchmark(argv: list[str]) -> int:
    from videopanda.eval.benchmark import format_benchmark, judge_benchmark
    from videopanda.eval.datasets import BENCHMARK
    from videopanda.eval.records import read_jsonl

    p = argparse.ArgumentParser(prog="videopanda eval benchmark", description="The Video-ChatGPT benchmark.")
    p.add_argument("--data-root", required=True)
    p.add_argument("--output-dir", required=True, type=Path)
    p.add_argument("--stage", choices=["infer", "judge", "all"], default="all")
    p.add_argument("--allow-incomplete", action="store_true", help="judge even if questions are missing")
    _add_inference_args(p, model_required=False)
    _add_judge_args(p)
    _progress_arg(p)
    args = p.parse_args(argv)
    pred_dir, merged = args.output_dir / "predictions", args.output_dir / "merge.jsonl"
    if args.stage in ("infer", "all"):
        if not args.model:
            p.error("--model is needed for --stage infer/all")
        _infer(args, BENCHMARK, pred_dir)
    if args.stage in ("judge", "all"):
        if args.stage == "all" and args.num_chunks > 1:
            logger.info("chunk %d of %d done; judge with --stage judge once every chunk has finished",
                        args.chunk_idx, args.num_chunks)
            return 0
        code = _merge(pred_dir, BENCHMARK, args.data_root, merged, args.allow_incomplete)
        if code:
            return code
        judge, meta = _make_judge(args)
        results = judge_benchmark(read_jsonl(merged), judge, args.output_dir / "judge", workers=args.workers,
                                  metadata={"pred_file": str(merged), **meta}, progress=not args.no_progress)
        print(format_benchmark(results))
    return 0


def _cmd_report(argv: list[str]) -> int:
    from videopanda.eval.report import to_markdown, write_report

    p = argparse.ArgumentParser(prog="videopanda eval report", description="Results tables across models.")
    p.add_argument("--results", required=True, nargs="+", type=Path, help="one evaluation folder per model")
    p.add_argument("--names", nargs="+", default=None, help="model names (default: the folder names)")
    p.add_argument("--output-dir", required=True, type=Path)
    p.add_argument("--plot", action="store_true", help="also write benchmark.png (the five aspects)")
    args = p.parse_args(argv)
    report = write_report(args.results, args.output_dir, names=args.names, plot=args.plot)
    print(to_markdown(report), end="")
    return 0


def main(argv: list[str]) -> int:
    commands = {"qa": _cmd_qa, "merge": _cmd_merge, "judge": _cmd_judge, "benchmark": _cmd_benchmark,
                "report": _cmd_report}
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    if argv[0] not in commands:
        print(f"videopanda eval: unknown subcommand {argv[0]!r}\n\n{__doc__.strip()}", file=sys.stderr)
        return 2
    from videopanda.eval.judge import JudgeFatalError
    from videopanda.eval.records import RecordsError
    from videopanda.eval.report import ReportError

    try:
        return commands[argv[0]](argv[1:])
    except (DatasetError, RecordsError, JudgeFatalError, ReportError) as error:
        logger.error("%s", error)
        return 1
