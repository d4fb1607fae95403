"""`videopanda` as an lmms-eval model: `generate_until` and `loglikelihood` over `ModelAnswerer`.

    lmms-eval --model videopanda --model_args pretrained=FOLDER[,dtype=auto,num_frames=8,system=user,max_new_tokens=1024]
              [--device cpu|cuda|cuda:0] [--batch_size N] ...

(`fps=F[,max_frames=32]` in place of `num_frames` samples F frames a second, as `eval qa --fps`.)

Each request names one document; its `doc_to_visual` must give exactly one video file. The question is
lmms-eval's context string, put through the same preparation as `videopanda eval qa` (`ModelAnswerer.prepare`:
the frames the video processor samples, then the chat template's generation prompt), so for the same question,
video and sampling the plugin's greedy answer is `eval qa`'s.

- generate_until: greedy only (a task asking for sampling or beams is refused); `max_new_tokens` from
  the request's generation kwargs, else the model argument (1024, the original evaluation's limit:
  docs/DESIGN.md, "Generation settings and the context guard"); the reply is cut at the first of the
  request's `until` strings. Consecutive requests with the same settings are batched
  (`--batch_size`, left padded as in `eval qa`).
- loglikelihood: (-log P(continuation | prompt), whether greedy decoding gives the continuation), from
  `ModelAnswerer.continuation_logprobs`; the continuations of one document and context share one
  forward batch. The sign is lmms-eval's convention, not its docstring's: its models return a loss and
  its multiple_choice scoring picks the choice with the smallest value (argmin).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from lmms_eval.api.model import lmms
from tqdm import tqdm

from videopanda.eval.datasets import QAItem
from videopanda.eval.qa import ModelAnswerer, ModelAnswererConfig
from videopanda.log import get_logger

logger = get_logger(__name__)


class VideoPandaLMMS(lmms):
    """A Video-Panda model folder behind lmms-eval's request API (a "simple" model: plain-text contexts)."""

    is_simple = True

    def __init__(self, pretrained: str, device: str | None = None, dtype: str = "auto", num_frames: int | None = None,
                 system: str = "user", max_new_tokens: int = 1024, batch_size: int | str = 1,
                 fps: float | None = None, max_frames: int | None = None, **unused: Any):
        super().__init__()
        import torch

        if str(batch_size).startswith("auto"):
            raise ValueError("videopanda: --batch_size must be a number, not auto")
        unused = {key: value for key, value in unused.items() if value is not None and key != "max_batch_size"}
        if unused:
            raise ValueError(f"videopanda: unknown model argument(s) {', '.join(sorted(unused))}")
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"videopanda: --batch_size must be at least 1, got {batch_size}")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        config = ModelAnswererConfig(model=str(pretrained), device=device, dtype=dtype,
                                     num_frames=int(num_frames) if num_frames else None,
                                     fps=None if fps is None else float(fps),
                                     max_frames=None if max_frames is None else int(max_frames),
                                     max_new_tokens=int(max_new_tokens), system=system)
        self.answerer = ModelAnswerer(config)
        logger.info("videopanda: %s on %s (%s), frames sampled %s", pretrained, device, self.answerer.dtype,
                    self.answerer.sampling)

    def _prepared(self, request) -> tuple[str, Any]:
        """(prompt, uint8 frames (n, H, W, 3)) for a request's context and its document's one video."""
        context, _, doc_to_visual, doc_id, task, split = request.args
        visuals = doc_to_visual(self.task_dict[task][split][doc_id])
        visuals = visuals if isinstance(visuals, list) else [visuals]
        if len(visuals) != 1 or not isinstance(visuals[0], (str, Path)):
            raise ValueError(f"videopanda: task {task} document {doc_id}: one video file per question is needed, "
                             f"doc_to_visual gave {len(visuals)} visual(s) of type(s) "
                             f"{', '.join(sorted({type(v).__name__ for v in visuals}))}")
        video = Path(visuals[0])
        return self.answerer.prepare(QAItem(id=doc_id, question=context, answer="", video=str(video),
                                            video_path=video))

    def _settings(self, request) -> tuple[int, tuple[str, ...]]:
        """(max_new_tokens, stop strings) of a generate_until request; ValueError for sampling or beams."""
        _, gen_kwargs, _, doc_id, task, _ = request.args
        gen_kwargs = gen_kwargs or {}
        if gen_kwargs.get("do_sample") or int(gen_kwargs.get("num_beams") or 1) > 1:
            raise ValueError(f"videopanda: task {task} asks for do_sample={gen_kwargs.get('do_sample')}, "
                             f"num_beams={gen_kwargs.get('num_beams')}; the model is evaluated greedily "
                             f"(the paper's evaluation protocol)")
        until = gen_kwargs.get("until") or ()
        until = (until,) if isinstance(until, str) else tuple(until)
        return int(gen_kwargs.get("max_new_tokens") or self.answerer.config.max_new_tokens), until

    def generate_until(self, requests) -> list[str]:
        answers: list[str] = []
        with tqdm(total=len(requests), desc="videopanda generate", unit="q", disable=self.rank != 0) as bar:
            start = 0
            while start < len(requests):
                settings = self._settings(requests[start])
                stop = start + 1
                while stop < len(requests) and stop - start < self.batch_size and self._settings(requests[stop]) == settings:
                    stop += 1
                batch = requests[start:stop]
                max_new_tokens, until = settings
                replies = self.answerer.generate([self._prepared(request) for request in batch], max_new_tokens)
                for request, reply in zip(batch, replies):
                    if isinstance(reply, Exception):  # a prompt past the model's context
                        raise reply
                    reply = _cut(reply, until)
                    self.cache_hook.add_partial("generate_until", (request.args[0], request.args[1]), reply)
                    answers.append(reply)
                bar.update(len(batch))
                start = stop
        return answers

    def loglikelihood(self, requests) -> list[Any]:
        groups: dict[tuple, list[int]] = {}
        for index, request in enumerate(requests):
            context, _, _, doc_id, task, split = request.args
            groups.setdefault((task, split, doc_id, context), []).append(index)
        results: list[Any] = [None] * len(requests)
        with tqdm(total=len(requests), desc="videopanda loglikelihood", unit="req", disable=self.rank != 0) as bar:
            for (task, split, doc_id, _), indices in groups.items():
                continuations = [self._continuation(requests[i], self.task_dict[task][split][doc_id]) for i in indices]
                prompt, frames = self._prepared(requests[indices[0]])
                scores = self.answerer.continuation_logprobs(prompt, frames, continuations)
                for index, (logprob, greedy) in zip(indices, scores):
                    results[index] = _as_response((-logprob, greedy))
                bar.update(len(indices))
        return results

    @staticmethod
    def _continuation(request, doc: dict) -> str:
        """The continuation text: a string (multiple_choice tasks) or the task's doc_to_target (loglikelihood)."""
        target = request.args[1]
        return target if isinstance(target, str) else str(target(doc))

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("videopanda answers one question per video; multi-round tasks are not supported")


def _cut(text: str, until: tuple[str, ...]) -> str:
    """`text` up to the first occurrence of any stop string."""
    cut = min((text.find(stop) for stop in until if stop and stop in text), default=len(text))
    return text[:cut].strip()


def _as_response(pair: tuple[float, bool]) -> Any:
    """A loglikelihood result as the installed lmms-eval's evaluator can carry it.

    lmms-eval 0.7's evaluator passes every response through `unwrap_generation_output`, which turns a
    (float, bool) pair into its string, and multiple_choice scoring then fails; a `GenerationResult`'s
    `text` goes through unchanged, so there the pair travels inside one. A version that keeps the pair
    gets the pair."""
    try:
        from lmms_eval.api.instance import GenerationResult, unwrap_generation_output
    except ImportError:
        return pair
    return pair if unwrap_generation_output(pair)[0] == pair else GenerationResult(text=pair)
