"""usage: videopanda eval <subcommand> [options]   (`videopanda eval <subcommand> --help` for its options)

    qa         answer one chunk of a dataset's questions with a model (resumable, one process per GPU)
    merge      check that every question is answered exactly once; write merge.jsonl
    judge      LLM (or exact-match) judge of merge.jsonl -> verdicts.jsonl, failed.jsonl, results.json
    benchmark  the Video-ChatGPT benchmark: --stage infer | judge | all
    report     Table-1-style markdown/JSON across models (and --plot: qa.png, benchmark.png)
    judge-agreement  two judge runs over the same predictions: same verdict %, Cohen's kappa, score
               correlation, the items they disagree on
    mc         multiple-choice benchmarks (MVBench, Video-MME, EgoSchema, NExT-QA, Perception Test):
               exact accuracy, per category
    compare    two result folders over the same items: both numbers with 95% intervals, the exact
               McNemar test (paired bootstrap for scores), the items where they differ

Exit codes: 0 when every number covers every question; 1 when the results are incomplete (questions
without an answer or a verdict; `--allow-incomplete` accepts them, counted as wrong) or the judge
stopped (unreachable, key rejected), or a question file is unusable; 2 for a bad model folder, an
output that cannot be written (a full disk), an output folder holding predictions made otherwise, or
two result folders `compare` cannot pair.
Every error is one line naming the file.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from videopanda.argparsing import CommandParser
from videopanda.eval.datasets import BENCHMARK, DATASETS, QA_DATASETS, DatasetError, load_questions
from videopanda.log import get_logger
from videopanda.serve.infer import add_sampling_options

logger = get_logger(__name__)

SUBCOMMANDS = ("qa", "merge", "judge", "benchmark", "report", "judge-agreement", "mc", "compare")


def _at_least(minimum: float, kind: type = int):
    """An argparse type: a number of `kind` >= `minimum` (a usage error otherwise, never a silent default)."""
    def parse(text: str):
        value = kind(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {text}")
        return value
    parse.__name__ = kind.__name__
    return parse


def _add_inference_args(parser: argparse.ArgumentParser, model_required: bool = True) -> None:
    g = parser.add_argument_group("inference")
    g.add_argument("--model", required=model_required, help="Video-Panda model folder")
    g.add_argument("--num-chunks", type=_at_least(1), default=1,
                   help="split the questions into K chunks (one per GPU)")
    g.add_argument("--chunk-idx", type=int, default=0, help="which chunk this process answers (0-based)")
    g.add_argument("--batch-size", type=_at_least(1), default=1)
    g.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="auto: the checkpoint's own dtype (config.json's torch_dtype)")
    g.add_argument("--max-new-tokens", type=_at_least(1), default=1024)
    add_sampling_options(g)
    g.add_argument("--system", choices=["user", "human"], default="user",
                   help="system text: 'user' (the training text, default) or 'human' (the original inference text)")
    g.add_argument("--retry-errors", action="store_true", help="answer again the questions that got error rows")


def _parse_inference_args(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """`parser.parse_args(argv)` for a parser with `_add_inference_args`; a sampling number that is not positive
    is a usage error, as `_at_least` makes it for the other numbers."""
    args = parser.parse_args(argv)
    for flag, value, rule in (("--num-frames", args.num_frames, "at least 1"),
                              ("--max-frames", args.max_frames, "at least 1"), ("--fps", args.fps, "above 0")):
        if value is not None and not value > 0:
            parser.error(f"argument {flag}: must be {rule}, got {value:g}")
    return args


def _add_judge_args(parser: argparse.ArgumentParser, model_flags: tuple[str, ...] = ("--judge-model",)) -> None:
    g = parser.add_argument_group("judge")
    g.add_argument("--judge", choices=["gpt", "exact"], default="gpt",
                   help="gpt: an OpenAI-compatible chat model (key from OPENAI_API_KEY); "
                        "exact: offline normalised exact match, not comparable with GPT-judged numbers")
    g.add_argument("--api-base", default=None, help="OpenAI-compatible base URL (default: OpenAI's)")
    g.add_argument(*model_flags, dest="judge_model", default="gpt-3.5-turbo",
                   help="judge model name sent to the server (the name it reports back is recorded)")
    g.add_argument("--workers", type=_at_least(1), default=8, help="parallel judge requests")
    g.add_argument("--max-retries", type=_at_least(0), default=5,
                   help="the openai client's retries per request (429, 5xx, timeouts; its backoff, Retry-After "
                        "honoured) and the re-asks after a reply without a valid verdict")
    g.add_argument("--timeout", type=_at_least(0.001, float), default=60.0, help="seconds per request")
    g.add_argument("--json-mode", choices=["auto", "on", "off"], default="auto",
                   help="ask for a JSON object (response_format); auto: drop it if the server refuses it")
    g.add_argument("--seed", type=int, default=1234, help="sent to the server where supported; -1 to omit")


def _allow_incomplete_arg(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--allow-incomplete", action="store_true",
                        help=f"{what} even when questions have no answer or no verdict (exit 0); the numbers "
                             "still cover every question, the failed ones counted as wrong")


def _progress_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _make_judge(args: argparse.Namespace):
    from videopanda.eval.judge import ExactMatchJudge, JudgeConfig, OpenAIJudge, safe_url

    if args.judge == "exact":
        return ExactMatchJudge(), {"api_base": None}
    config = JudgeConfig(api_base=args.api_base, model=args.judge_model, timeout=args.timeout,
                         max_retries=args.max_retries, json_mode=args.json_mode,
                         seed=None if args.seed < 0 else args.seed)
    meta = {"api_base": safe_url(args.api_base) or "https://api.openai.com/v1", "judge_model_requested": config.model,
            "temperature": config.temperature, "seed": config.seed}
    return OpenAIJudge(config), meta


def _answerer_config(args: argparse.Namespace):
    import torch

    from videopanda.eval.qa import ModelAnswererConfig
    from videopanda.serve.model_folder import InferError

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InferError(f"--device {device} was asked for but no CUDA device is available")
    return ModelAnswererConfig(model=args.model, device=device, dtype=args.dtype, num_frames=args.num_frames,
                               fps=args.fps, max_frames=args.max_frames, max_new_tokens=args.max_new_tokens,
                               system=args.system)


def _infer(args: argparse.Namespace, dataset: str, output_dir: Path, items=None, method: str | None = None) -> int:
    """Answer this process's chunk of `items` (default: the dataset's questions) into `output_dir`.
    `method`: answer multiple-choice items (`mc.MCAnswerer`) by generation or by log-likelihood."""
    from videopanda.eval.provenance import check_prediction_folder
    from videopanda.eval.qa import ModelAnswerer, chunk_file, expected_fingerprint, run_qa, shard
    from videopanda.serve.model_folder import read_model_folder

    if args.num_chunks < 1 or not 0 <= args.chunk_idx < args.num_chunks:
        raise DatasetError(f"--chunk-idx must be in 0..{args.num_chunks - 1}, got {args.chunk_idx}")
    items = shard(load_questions(args.data_root, dataset) if items is None else items, args.num_chunks, args.chunk_idx)
    out_file = chunk_file(output_dir, args.num_chunks, args.chunk_idx)
    config = _answerer_config(args)
    info = {"model_path": str(Path(args.model).resolve()), "device": config.device, "dtype_requested": args.dtype,
            "batch_size": args.batch_size, "num_chunks": args.num_chunks, "chunk_idx": args.chunk_idx}
    folder = read_model_folder(config.model)
    expected = {**expected_fingerprint(config, folder), "dataset": dataset}
    if method is not None:
        from videopanda.eval.mc import mc_fingerprint

        expected["mc"] = mc_fingerprint(method)
    # refuse a folder of other predictions before spending minutes loading the weights
    check_prediction_folder(out_file, expected, info)
    logger.info("%s chunk %d of %d: %d questions -> %s", dataset, args.chunk_idx, args.num_chunks, len(items), out_file)
    if method is None:
        answerer = ModelAnswerer(config, folder)
    else:
        from videopanda.eval.mc import MCAnswerer

        answerer = MCAnswerer(config, method, folder)
    summary = run_qa(items, answerer, out_file, batch_size=args.batch_size, retry_errors=args.retry_errors,
                     progress=not args.no_progress, fingerprint={**answerer.fingerprint, "dataset": dataset},
                     run_info=info)
    logger.info("done: %d answered now, %d from earlier runs, %d error rows written now",
                summary.answered, summary.skipped, summary.errors)
    if summary.errors or summary.earlier_errors:
        logger.warning("%s: %d question(s) have error rows (no answer): `eval merge` reports them as failed; "
                       "rerun with --retry-errors to try them again", out_file, summary.errors + summary.earlier_errors)
    return 0


def _merge(pred_dir: Path, dataset: str, data_root: str, output: Path, allow_incomplete: bool, items=None) -> int:
    from videopanda.eval.merge import merge_predictions, write_merged
    from videopanda.eval.provenance import read_sidecar, sidecar_path
    from videopanda.eval.records import RecordsError

    report = merge_predictions(pred_dir, load_questions(data_root, dataset) if items is None else items, dataset)
    if output.resolve() in {(pred_dir / name).resolve() for name in report.sources}:
        raise RecordsError(f"{output}: is one of the prediction files being merged; pass another --output")
    if output.exists() and (read_sidecar(output) or {}).get("sha256") is None:
        raise RecordsError(f"{output}: exists and is not an earlier merge (no {sidecar_path(output).name} with its "
                           "SHA-256 beside it); remove it or pass another --output")
    print(report.summary())
    if not report.complete and not allow_incomplete:
        earlier = " (the one there is left from an earlier merge)" if output.exists() else ""
        logger.error("%s is incomplete; not writing %s%s: rerun the missing chunks, or the inference with "
                     "--retry-errors, or pass --allow-incomplete to count the questions without an answer as wrong",
                     pred_dir, output, earlier)
        return 1
    write_merged(report, output, dataset)
    logger.info("wrote %s (%d lines)", output, len(report.records))
    if not report.complete:
        logger.warning("%s: %d of %d questions have no answer (error rows; the judge counts them as wrong)",
                       output, report.expected - report.answered, report.expected)
    return 0


def _read_predictions(pred_file: Path) -> tuple[list[dict], dict]:
    """-> (merged prediction rows, metadata for results.json: the predictions' and the items' fingerprints
    and the dataset)."""
    from videopanda.eval.provenance import read_merged_sidecar, sidecar_path
    from videopanda.eval.records import RecordsError, read_jsonl

    records = read_jsonl(pred_file, whole=True)
    if not records:
        raise RecordsError(f"{pred_file}: no predictions")
    for number, record in enumerate(records, start=1):
        missing = [key for key in ("id", "question", "answer", "pred") if key not in record]
        if missing:
            raise RecordsError(f"{pred_file}: prediction {number} has no {', '.join(map(repr, missing))} field")
    ids = [str(r.get("id")) for r in records]
    if len(set(ids)) != len(ids):
        raise RecordsError(f"{pred_file}: has duplicated ids; run `videopanda eval merge` first")
    sidecar = read_merged_sidecar(pred_file)
    if sidecar is None:
        logger.warning("%s: no %s, so what produced these predictions is unknown; results.json records none",
                       pred_file, sidecar_path(pred_file).name)
        sidecar = {}
    from videopanda.eval.compare import items_fingerprint

    return records, {"pred_file": str(pred_file), "items_fingerprint": items_fingerprint(records),
                     "prediction_fingerprint": sidecar.get("fingerprint"),
                     "prediction_fingerprint_id": sidecar.get("fingerprint_id"),
                     "model_path": sidecar.get("model_path"), "predictions_dataset": sidecar.get("dataset")}


def _refuse_other_than_qa(pred_file: Path) -> None:
    """DatasetError, before anything in the output folder is touched, when the merge of `pred_file` (its
    sidecar) was made for the Video-ChatGPT benchmark or a multiple-choice benchmark, which `eval judge` does
    not score."""
    from videopanda.eval.provenance import read_sidecar

    recorded = (read_sidecar(pred_file) or {}).get("dataset")
    if recorded is not None and recorded not in QA_DATASETS:
        command = "eval benchmark --stage judge" if recorded == BENCHMARK else "eval mc --stage score"
        raise DatasetError(f"{pred_file}: predictions for {recorded!r} (per its merge), not a QA set; "
                           f"score them with `videopanda {command}`")


def _forget_results(judge_dir: Path) -> None:
    """Remove an earlier run's results.json before anything can stop this run (an edited or unusable
    prediction file, an incomplete merge), so that no report shows numbers of predictions since changed."""
    from videopanda.io import describe_os_error

    try:
        (judge_dir / "results.json").unlink(missing_ok=True)
    except OSError as error:
        raise describe_os_error(error, judge_dir / "results.json") from error


def _finish(results: dict, allow_incomplete: bool, failed: str) -> int:
    """Exit code of a judge run: 1 when items failed, unless allowed. `failed`: where they are listed."""
    if results["complete"]:
        return 0
    if allow_incomplete:
        logger.warning("incomplete (--allow-incomplete): the failed items (%s) count as wrong", failed)
        return 0
    logger.error("incomplete: the numbers count the failed items (%s) as wrong; rerun to retry the judge "
                 "failures (inference errors need the inference rerun with --retry-errors and a new merge), or pass "
                 "--allow-incomplete to accept them", failed)
    return 1


def _with_interval(value: float | None, interval: list[float] | None, digits: int) -> str:
    """`83.33 [55.20, 95.30]`; `n/a` without a value."""
    if value is None:
        return "n/a"
    text = f"{value:.{digits}f}"
    return text if interval is None else f"{text} [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]"


def _cmd_qa(argv: list[str]) -> int:
    p = CommandParser(prog="videopanda eval qa", description="Answer a zero-shot QA set with a model.")
    p.add_argument("--dataset", required=True, choices=list(QA_DATASETS))
    p.add_argument("--data-root", required=True)
    p.add_argument("--output-dir", required=True, type=Path)
    _add_inference_args(p)
    _progress_arg(p)
    args = _parse_inference_args(p, argv)
    return _infer(args, args.dataset, args.output_dir)


def _cmd_merge(argv: list[str]) -> int:
    p = CommandParser(prog="videopanda eval merge",
                      description="Merge chunk predictions; check every question is answered once.")
    p.add_argument("--pred-dir", required=True, type=Path)
    p.add_argument("--dataset", required=True, choices=list(DATASETS))
    p.add_argument("--data-root", required=True)
    p.add_argument("--output", required=True, type=Path)
    _allow_incomplete_arg(p, "write the merge")
    args = p.parse_args(argv)
    return _merge(args.pred_dir, args.dataset, args.data_root, args.output, args.allow_incomplete)


def _cmd_judge(argv: list[str]) -> int:
    from videopanda.eval.judge import qa_judge_items, run_judge

    p = CommandParser(prog="videopanda eval judge", description="Judge merged QA predictions.")
    p.add_argument("--pred-file", required=True, type=Path)
    p.add_argument("--output-dir", required=True, type=Path)
    p.add_argument("--dataset", default=None, help="label stored in results.json (default: the dataset the "
                   "merge recorded; msvd, msrvtt, tgif, activitynet, synth)")
    _add_judge_args(p, model_flags=("--model", "--judge-model"))
    _allow_incomplete_arg(p, "exit 0")
    _progress_arg(p)
    args = p.parse_args(argv)
    _refuse_other_than_qa(args.pred_file)
    _forget_results(args.output_dir)
    records, meta = _read_predictions(args.pred_file)
    recorded = meta.pop("predictions_dataset")
    if args.dataset and recorded and args.dataset != recorded:
        raise DatasetError(f"{args.pred_file}: predictions for {recorded!r} (per its merge), not --dataset {args.dataset!r}")
    items, failed = qa_judge_items(records)
    judge, judge_meta = _make_judge(args)
    results = run_judge(items, judge, args.output_dir, failed_inference=failed, workers=args.workers,
                        metadata={"dataset": args.dataset or recorded, **meta, **judge_meta},
                        progress=not args.no_progress)
    acc = _with_interval(results["accuracy"], results.get("accuracy_ci95"), 2)
    score = _with_interval(results["score"], results.get("score_ci95"), 3)
    print(f"accuracy {acc}  score {score}  ({results['coverage']}; yes {results['num_yes']}, no {results['num_no']}; "
          f"judge {results['judge']}, model {results['judge_model']})")
    return _finish(results, args.allow_incomplete, str(args.output_dir / "failed.jsonl"))


def _cmd_benchmark(argv: list[str]) -> int:
    from videopanda.eval.benchmark import format_benchmark, judge_benchmark

    p = CommandParser(prog="videopanda eval benchmark", description="The Video-ChatGPT benchmark.")
    p.add_argument("--data-root", required=True)
    p.add_argument("--output-dir", required=True, type=Path)
    p.add_argument("--stage", choices=["infer", "judge", "all"], default="all")
    _allow_incomplete_arg(p, "merge, judge and exit 0")
    _add_inference_args(p, model_required=False)
    _add_judge_args(p)
    _progress_arg(p)
    args = _parse_inference_args(p, argv)
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
        _forget_results(args.output_dir / "judge")
        code = _merge(pred_dir, BENCHMARK, args.data_root, merged, args.allow_incomplete)
        if code:
            return code
        records, meta = _read_predictions(merged)
        meta.pop("predictions_dataset")
        judge, judge_meta = _make_judge(args)
        judge_dir = args.output_dir / "judge"
        results = judge_benchmark(records, judge, judge_dir, workers=args.workers, metadata={**meta, **judge_meta},
                                  progress=not args.no_progress)
        print(format_benchmark(results))
        return _finish(results, args.allow_incomplete, f"{judge_dir}/<aspect>/failed.jsonl")
    return 0


def _cmd_report(argv: list[str]) -> int:
    from videopanda.eval.report import to_markdown, write_report

    p = CommandParser(prog="videopanda eval report", description="Results tables across models.")
    p.add_argument("--results", required=True, nargs="+", type=Path, help="one evaluation folder per model")
    p.add_argument("--names", nargs="+", default=None, help="model names (default: the folder names)")
    p.add_argument("--output-dir", required=True, type=Path)
    p.add_argument("--plot", action="store_true", help="also write benchmark.png (the five aspects)")
    args = p.parse_args(argv)
    report = write_report(args.results, args.output_dir, names=args.names, plot=args.plot)
    print(to_markdown(report), end="")
    return 0


def _two_folder_command(argv: list[str], name: str, description: str, what_a: str, what_b: str, what_output: str,
                        what_shown: str, compare, format_report) -> int:
    """`eval NAME A B [--output FILE] [--show N]`: `compare(a, b)` -> a report dict, printed by
    `format_report(report, show=N)` and written as JSON to --output."""
    from videopanda.eval.records import RecordsError
    from videopanda.io import write_json_atomic

    p = CommandParser(prog=f"videopanda eval {name}", description=description)
    p.add_argument("a", type=Path, help=what_a)
    p.add_argument("b", type=Path, help=what_b)
    p.add_argument("--output", type=Path, default=None, help=f"write the full {what_output} as JSON")
    p.add_argument("--show", type=_at_least(0), default=20, help=what_shown)
    args = p.parse_args(argv)
    for folder in (args.a, args.b):
        if args.output and args.output.resolve().is_relative_to(folder.resolve()):
            raise RecordsError(f"{args.output}: inside {folder}, one of the folders compared (its files are "
                               "inputs); write the report elsewhere")
    report = compare(args.a, args.b)
    print(format_report(report, show=args.show))
    if args.output:
        write_json_atomic(args.output, report)
    return 0


def _cmd_judge_agreement(argv: list[str]) -> int:
    from videopanda.eval.agreement import compare_judges, format_agreement

    return _two_folder_command(
        argv, "judge-agreement", "Compare two judge runs over the same predictions.",
        "output folder of one `eval judge` run", "output folder of another run over the same predictions",
        "report (every disagreement)", "disagreements to print", compare_judges, format_agreement)


def _cmd_mc(argv: list[str]) -> int:
    from videopanda.eval.compare import MC_OUTCOMES, items_fingerprint
    from videopanda.eval.mc import (BENCHMARKS, METHODS, format_mc, item_outcomes, load_mc,
                                   refuse_windows_by_rate, score_mc)
    from videopanda.eval.provenance import read_merged_sidecar
    from videopanda.eval.records import read_jsonl
    from videopanda.io import write_json_atomic, write_jsonl_atomic

    p = CommandParser(prog="videopanda eval mc",
                                description="A multiple-choice video benchmark, scored by exact accuracy.")
    p.add_argument("--benchmark", required=True, choices=list(BENCHMARKS))
    p.add_argument("--data-root", required=True)
    p.add_argument("--output-dir", required=True, type=Path)
    p.add_argument("--stage", choices=["infer", "score", "all"], default="all")
    p.add_argument("--method", choices=list(METHODS), default="generate",
                   help="generate: read the letter from a generated reply; loglikelihood: the most likely letter")
    _allow_incomplete_arg(p, "merge, score and exit 0")
    _add_inference_args(p, model_required=False)
    p.set_defaults(max_new_tokens=32)
    _progress_arg(p)
    args = _parse_inference_args(p, argv)
    dataset = f"mc-{args.benchmark}"
    items = load_mc(args.data_root, args.benchmark)
    pred_dir, merged, results_path = args.output_dir / "predictions", args.output_dir / "merge.jsonl", \
        args.output_dir / "results.json"
    if args.stage in ("infer", "all"):
        if not args.model:
            p.error("--model is needed for --stage infer/all")
        if args.fps is not None:
            refuse_windows_by_rate(items, args.benchmark)
        _infer(args, dataset, pred_dir, items=items, method=args.method)
        if args.stage == "all" and args.num_chunks > 1:
            logger.info("chunk %d of %d done; score with --stage score once every chunk has finished",
                        args.chunk_idx, args.num_chunks)
            return 0
    _forget_results(args.output_dir)
    code = _merge(pred_dir, dataset, args.data_root, merged, args.allow_incomplete, items=items)
    if code:
        return code
    sidecar = read_merged_sidecar(merged) or {}
    records = read_jsonl(merged, whole=True)
    write_jsonl_atomic(args.output_dir / MC_OUTCOMES, item_outcomes(records, items))
    results = {"benchmark": args.benchmark, "pred_file": str(merged),
               "items_fingerprint": items_fingerprint({"id": i.key, "question": i.question, "answer": i.answer}
                                                      for i in items),
               "prediction_fingerprint": sidecar.get("fingerprint"),
               "prediction_fingerprint_id": sidecar.get("fingerprint_id"), "model_path": sidecar.get("model_path"),
               "method": ((sidecar.get("fingerprint") or {}).get("mc") or {}).get("method"),
               **score_mc(records, items)}
    write_json_atomic(results_path, results)
    print(format_mc(results))
    if results["num_unparsable"]:
        logger.warning("%d repl(ies) name no option letter (counted wrong): see 'unparsable' in %s",
                       results["num_unparsable"], results_path)
    return _finish(results, args.allow_incomplete, str(results_path))


def _cmd_compare(argv: list[str]) -> int:
    from videopanda.eval.compare import compare_runs, format_comparison

    return _two_folder_command(
        argv, "compare", "Paired comparison of two result folders over the same items: both numbers with 95% "
                         "intervals, the exact McNemar test (paired bootstrap for scores), overall and per question "
                         "type or category, and the items where they differ.",
        "output folder of `eval judge`, `eval mc` or `eval benchmark`", "a folder of the same kind over the same items",
        "comparison (every differing item)", "differing item ids to print per part", compare_runs, format_comparison)


def _exit_code(error: BaseException) -> int | None:
    """1 or 2 for the errors the eval commands report in one line; None for anything else (a bug)."""
    from videopanda.eval.agreement import AgreementError
    from videopanda.eval.compare import CompareError
    from videopanda.eval.judge import JudgeFatalError
    from videopanda.eval.provenance import ProvenanceError
    from videopanda.eval.records import RecordsError
    from videopanda.eval.report import ReportError
    from videopanda.io import OutputError

    if isinstance(error, (DatasetError, RecordsError, JudgeFatalError, ReportError, AgreementError)):
        return 1
    if isinstance(error, (OutputError, ProvenanceError, CompareError)):
        return 2
    if ("videopanda.serve.model_folder" in sys.modules
            and isinstance(error, sys.modules["videopanda.serve.model_folder"].InferError)):
        return 2
    if isinstance(error, OSError):
        return 2
    return None


def main(argv: list[str]) -> int:
    commands = {"qa": _cmd_qa, "merge": _cmd_merge, "judge": _cmd_judge, "benchmark": _cmd_benchmark,
                "report": _cmd_report, "judge-agreement": _cmd_judge_agreement, "mc": _cmd_mc,
                "compare": _cmd_compare}
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    if argv[0] not in commands:
        print(f"videopanda eval: unknown subcommand {argv[0]!r}\n\n{__doc__.strip()}", file=sys.stderr)
        return 2
    try:
        return commands[argv[0]](argv[1:])
    except Exception as error:  # noqa: BLE001 (re-raised below unless it is one of ours)
        code = _exit_code(error)
        if code is None:
            raise
        if isinstance(error, OSError) and error.filename:
            from videopanda.io import describe_os_error

            error = describe_os_error(error, error.filename)
        logger.error("%s", " ".join(str(error).split()))
        return code
