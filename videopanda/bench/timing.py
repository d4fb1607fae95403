"""Measurement helpers shared by the benchmarks: latency, FLOPs, peak memory, parameters, environment.

Conventions (also in docs/benchmarks.md):

- Latency: `warmup` untimed calls, then `iters` timed calls; the median is reported. On CUDA each call is
  timed with a pair of `torch.cuda.Event`s and synchronised; on CPU with `time.perf_counter`. The visual
  benchmark interleaves its rows call by call, so that load from other processes on a shared machine
  falls on all rows alike.
- FLOPs: `torch.utils.flop_counter.FlopCounterMode`, which counts a multiply-add as 2 FLOPs and counts
  only matrix products, convolutions and attention (not norms, activations, pooling or adds). PyTorch's
  CPU fused attention kernel (`_scaled_dot_product_flash_attention_for_cpu`) is not in its registry, so
  it is added here with the same formula as the GPU kernels; without it attention counts as 0 on CPU.
- Peak memory: on CUDA `torch.cuda.max_memory_allocated()` during one forward pass (weights, inputs and
  activations that are live at the peak). On CPU the process's resident set size (`/proc/self/statm`) is
  sampled every millisecond during one forward pass; the row reports the peak minus the RSS measured
  before the model was built (after `malloc_trim`), so it also covers weights, inputs and activations.
  Sampling can miss a peak shorter than the interval, and the CPU figure includes allocator slack.
"""
from __future__ import annotations

import ctypes
import gc
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from videopanda.log import get_logger

logger = get_logger(__name__)


class BenchError(Exception):
    """A benchmark that cannot run as asked (no GPU, bad option); the CLI prints the message."""


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


_EXTRA_FLOP_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}


def flop_counter() -> FlopCounterMode:
    """A silent FlopCounterMode that also counts PyTorch's CPU fused-attention kernel."""
    return FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOP_FORMULAS)


def count_flops(fn: Callable[[], object], depth: int = 0) -> tuple[int, dict[str, int]]:
    """FLOPs (a multiply-add = 2) of one call of `fn`, and per submodule down to `depth` levels below the
    called module (names relative to it, e.g. "stab.lsd"; empty for depth 0)."""
    with flop_counter() as counter:
        fn()
    parts = {}
    for name, per_op in counter.get_flop_counts().items():
        root, _, rest = name.partition(".")
        if root != "Global" and rest and rest.count(".") < depth:
            parts[rest] = int(sum(per_op.values()))
    return int(counter.get_total_flops()), parts


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def set_threads(device: torch.device, threads: int | None) -> int:
    """Fix the intra-op thread count on CPU (returns the count in effect)."""
    if device.type == "cpu" and threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device) -> float:
    """Milliseconds of one call of `fn`: CUDA events around it on a GPU, perf_counter on the CPU."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end))
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def time_calls(fn: Callable[[], object], device: torch.device, warmup: int, iters: int) -> list[float]:
    """Milliseconds of each of `iters` timed calls of `fn`, after `warmup` untimed ones."""
    if iters < 1:
        raise ValueError(f"iters must be at least 1, got {iters}")
    for _ in range(warmup):
        fn()
    synchronize(device)
    return [time_call(fn, device) for _ in range(iters)]


def print_profile(name: str, fn: Callable[[], object], device: torch.device, top: int) -> None:
    """Run `fn` once under torch.profiler and print the top `top` ops by self time."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        fn()
    sort_by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"\n== torch.profiler: {name} (top {top} by {sort_by}) ==")
    print(prof.key_averages().table(sort_by=sort_by, row_limit=top))


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def _resident_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _release_free_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc), so RSS baselines are clean."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@dataclass
class MemoryMeter:
    """Peak memory of one benchmark row: call `baseline()` before building the model, then run one
    forward pass inside `track()`; `peak_bytes` is the peak during it minus the baseline."""

    device: torch.device
    interval_s: float = 0.001
    peak_bytes: int | None = None
    _base: int | None = field(default=None, repr=False)

    def baseline(self) -> None:
        _release_free_memory()
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.empty_cache()
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            self._base = _resident_bytes()
            if self._base is None:
                logger.warning("/proc/self/statm is not readable: CPU peak memory will not be reported")

    @contextmanager
    def track(self) -> Iterator[None]:
        if self._base is None:
            if self.device.type == "cuda":
                raise RuntimeError("MemoryMeter.baseline() must be called before track()")
            yield
            return
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            yield
            synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self._base
            return
        samples = [_resident_bytes() or 0]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(self.interval_s):
                samples.append(_resident_bytes() or 0)

        sampler = threading.Thread(target=sample, name="rss-sampler", daemon=True)
        sampler.start()
        try:
            yield
        finally:
            stop.set()
            sampler.join()
            samples.append(_resident_bytes() or 0)
            self.peak_bytes = max(samples) - self._base


def cpu_name() -> str:
    """The CPU model as the kernel reports it (`model name` in /proc/cpuinfo), else platform's guess."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device, threads: int) -> dict:
    """Where a measurement was taken: torch version, threads, CPU and (on CUDA) GPU name."""
    info = {
        "device": device.type,
        "torch": torch.__version__,
        "threads": threads,
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def format_table(rows: Sequence[dict], columns: Sequence[tuple[str, str, str]]) -> str:
    """Plain-text table; `columns` = (key, header, format spec). Missing values print as '-'."""
    cells = [[header for _, header, _ in columns]]
    for row in rows:
        cells.append([
            "-" if row.get(key) is None else format(row[key], spec) for key, _, spec in columns
        ])
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
             for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
