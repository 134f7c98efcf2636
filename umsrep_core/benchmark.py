"""`umsrep model bench`: the shared encoder with its heads against separate single-task models.

Both sides run in the same process on the same device and the same input, interleaved
iteration by iteration (so that clock or thermal drift hits both alike), after warm-up; the time
per image is the median over iterations divided by the batch. The separate models are
`SingleTask` models of the bundle's own configuration, one per head of the bundle, randomly
initialised: a convolution costs the same whatever its weights, so timing needs no training.

Both sides are served as the pipeline serves a bundle (`for_inference`: batch norms folded into
their convolutions, channels-last memory).

Peak memory is the memory a deployment holds: the weights of every model it keeps loaded (one
shared model, or all the separate ones) plus the peak of activation memory during one image's
inference, measured
- on CUDA: torch.cuda.max_memory_allocated over the run, less what was allocated before it;
- on CPU (no allocator statistics there; tracemalloc does not see torch's allocations): the
  torch profiler with profile_memory=True, whose events carry each operator's own allocations
  and frees; their running sum in time order peaks at the activation peak, at the granularity
  of operators (frees inside one operator are netted, so the figure is a lower bound).
The separate models run one after the other and their activations do not add up; were they
served side by side (one process each, images in flight in all three), they would:
`separate_concurrent_peak_mb` reports that case (weights + the sum of their activation peaks).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from umsrep_core.inference import default_device, synchronize
from umsrep_core.models.bundle import Bundle
from umsrep_core.models.umsrep import SingleTask, count_parameters, for_inference

__all__ = ["SPEEDUP_GOAL", "bench", "format_bench", "time_call"]

SPEEDUP_GOAL = 2.5  # issue 4: shared at least 2.5x faster per image
MEMORY_GOAL = 0.5  # and at most half the peak memory
_MB = 2**20


def bench(bundle: Bundle, *, device: str | None = None, iterations: int = 20, batch: int = 1,
          warmup: int = 3) -> dict[str, Any]:
    """Time and memory of the bundle's shared model vs separate models, as one JSON object.

    Times are per image (a batch's time / batch); peaks are for one batch of `batch` images.
    """
    if iterations < 1 or batch < 1:
        raise ValueError("iterations and batch must be at least 1")
    dev = torch.device(device or default_device())
    config = bundle.config
    # Both sides served alike: norms folded, channels-last (for_inference).
    shared = for_inference(bundle.model, dev)
    separate = [for_inference(SingleTask(config, head), dev) for head in shared.tasks]
    x = torch.rand(batch, config.in_channels, config.input_size, config.input_size,
                   device=dev)

    def run_shared() -> None:
        shared(x)

    def run_separate() -> None:
        # Outputs kept until all are done, as a caller needs every result of the image.
        _ = [model(x) for model in separate]

    with torch.inference_mode():
        for _ in range(warmup):
            run_shared()
            run_separate()
        times: dict[str, list[float]] = {"shared": [], "separate": []}
        for _ in range(iterations):
            times["shared"].append(time_call(run_shared, dev))
            times["separate"].append(time_call(run_separate, dev))
        peaks = {"shared": _activation_peak(run_shared, dev),
                 "separate": _activation_peak(run_separate, dev)}
        alone = [_activation_peak(functools.partial(m, x), dev) for m in separate]
        flop = {"shared": _flop(run_shared), "separate": _flop(run_separate)}
    weights = {"shared": _bytes(shared), "separate": sum(_bytes(m) for m in separate)}
    per_image_ms = {k: 1000 * statistics.median(v) / batch for k, v in times.items()}
    peak_mb = {k: (weights[k] + peaks[k]) / _MB for k in weights}
    speedup = per_image_ms["separate"] / per_image_ms["shared"]
    memory_ratio = peak_mb["shared"] / peak_mb["separate"]
    return {
        "device": str(dev), "input_size": config.input_size, "batch": batch,
        "iterations": iterations, "heads": list(shared.tasks),
        "shared_ms": per_image_ms["shared"], "separate_ms": per_image_ms["separate"],
        "speedup": speedup, "shared_peak_mb": peak_mb["shared"],
        "separate_peak_mb": peak_mb["separate"], "memory_ratio": memory_ratio,
        "separate_concurrent_peak_mb": (weights["separate"] + sum(alone)) / _MB,
        "shared_gflop": flop["shared"] / batch / 1e9,
        "separate_gflop": flop["separate"] / batch / 1e9,
        "shared_params": count_parameters(shared),
        "separate_params": sum(count_parameters(m) for m in separate),
        "memory_method": ("cuda max_memory_allocated" if dev.type == "cuda"
                          else "torch.profiler operator allocations") + " + weights",
        "speedup_goal_met": speedup >= SPEEDUP_GOAL,
        "memory_goal_met": memory_ratio <= MEMORY_GOAL,
    }


def format_bench(result: dict[str, Any]) -> str:
    """The human-readable summary `umsrep model bench` prints."""
    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    return "\n".join([
        f"device {result['device']}, input {result['input_size']}x{result['input_size']}, "
        f"batch {result['batch']}, {result['iterations']} iterations, heads "
        f"{', '.join(result['heads'])}",
        f"time per image:  shared {result['shared_ms']:.2f} ms, separate "
        f"{result['separate_ms']:.2f} ms, speedup {result['speedup']:.2f}x "
        f"(goal >= {SPEEDUP_GOAL}x: {verdict(result['speedup_goal_met'])})",
        f"peak memory:     shared {result['shared_peak_mb']:.1f} MB, separate "
        f"{result['separate_peak_mb']:.1f} MB, ratio {result['memory_ratio']:.2f} "
        f"(goal <= {MEMORY_GOAL}: {verdict(result['memory_goal_met'])}; "
        f"{result['memory_method']}); separate served side by side "
        f"{result['separate_concurrent_peak_mb']:.1f} MB",
        f"compute:         shared {result['shared_gflop']:.3f} GFLOP, separate "
        f"{result['separate_gflop']:.3f} GFLOP per image "
        f"({result['separate_gflop'] / result['shared_gflop']:.2f}x)",
        f"parameters:      shared {result['shared_params']:,}, separate "
        f"{result['separate_params']:,}",
    ])


def time_call(run: Callable[[], object], dev: torch.device) -> float:
    """Seconds of one call of `run`, the device's queued work included."""
    synchronize(dev)
    start = time.perf_counter()
    run()
    synchronize(dev)
    return time.perf_counter() - start


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """The profiler's native code writes a line to file descriptor 2 at every start and stop:
    noise in the bench's output, which sys.stderr redirection cannot catch."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _flop(run: Callable[[], object]) -> int:
    """Floating-point operations of one run, as torch counts them (convolutions, matrix
    products): what the time would track on a device where no per-operator overhead shows."""
    with FlopCounterMode(display=False) as counter:
        run()
    return int(counter.get_total_flops())


def _bytes(model: nn.Module) -> int:
    tensors = itertools.chain(model.parameters(), model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def _activation_peak(run: Callable[[], object], dev: torch.device) -> int:
    """Bytes allocated at the peak of one run beyond what was allocated before it."""
    if dev.type == "cuda":
        synchronize(dev)
        before = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        run()
        synchronize(dev)
        return int(torch.cuda.max_memory_allocated(dev) - before)
    from torch.profiler import ProfilerActivity, profile  # noqa: PLC0415 - CPU only

    with _native_stderr_silenced(), profile(activities=[ProfilerActivity.CPU],
                                            profile_memory=True) as prof:
        run()
    events = sorted(prof.events(), key=lambda e: e.time_range.start)
    running = itertools.accumulate(e.self_cpu_memory_usage for e in events)
    return int(max(0, *running))
