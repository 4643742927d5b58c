"""Latency, measured honestly: warm-up, many repeats, median and spread, fixed threads, models
interleaved so drift on a noisy machine hits them all alike.

Masked (unstructured or structured) sparsity runs through the same dense kernels as the dense
model: it is not faster. Only a physically smaller (compacted) model is.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from explorer.engine.inspection import example_input
from explorer.engine.speed_tricks import PROBE_SAMPLES, Tricks, checked_copy

HONEST_NOTE = (
    "Masked sparsity is multiplied through dense kernels, so a masked model runs as "
    "fast as the dense one; only the compacted (physically smaller) model can be "
    "faster. Every model is timed as deployed: BatchNorm folded into the convolutions, "
    "channels_last memory for conv nets (each only where it leaves the outputs unchanged)."
)


@dataclass(frozen=True)
class Latency:
    """Timing of one model at one batch size (milliseconds per forward pass)."""

    model: str
    batch: int
    median_ms: float
    p25_ms: float
    p75_ms: float
    repeats: int
    threads: int
    #: Every timed run in ms, in round order: run i of two models in one measurement was
    #: timed in the same round, so their ratio is a paired sample (drift cancels out).
    samples_ms: tuple[float, ...] = ()
    #: Speed tricks this model was timed without, and why (``explorer.engine.speed_tricks``).
    notes: tuple[str, ...] = ()

    @property
    def spread_ms(self) -> float:
        """Interquartile range."""
        return self.p75_ms - self.p25_ms


#: Speed differences smaller than this are not worth a claim, whatever the statistics say.
PRACTICAL_DIFFERENCE = 0.05


@dataclass(frozen=True)
class SpeedComparison:
    """How much faster ``other`` ran than ``reference`` in one interleaved measurement.

    Attributes:
        ratio: median over rounds of reference time / other time (> 1: other is faster).
        low, high: the 25th and 75th percentiles of those per-round ratios: the spread.
        same_kernels: the two run the very same kernels (same architecture): equal by
            construction, whatever was measured.
    """

    ratio: float
    low: float
    high: float
    same_kernels: bool = False

    @property
    def same_speed(self) -> bool:
        """No claim of a difference: same kernels, or the spread of the per-round ratios
        reaches into ``1 ± PRACTICAL_DIFFERENCE``."""
        band = (1 - PRACTICAL_DIFFERENCE, 1 + PRACTICAL_DIFFERENCE)
        return self.same_kernels or (self.low <= band[1] and self.high >= band[0])

    def summary(self) -> str:
        """A few words for a metric tile: "same speed (within noise)", "2.31x faster"."""
        if self.same_kernels:
            return "same speed (same kernels)"
        if self.same_speed:
            return "same speed (within noise)"
        if self.ratio > 1:
            return f"{self.ratio:.2f}x faster"
        return f"{1 / self.ratio:.2f}x slower"


def compare_speed(
    reference: Latency, other: Latency, same_kernels: bool = False
) -> SpeedComparison:
    """``other`` against ``reference`` (same batch, timed side by side in one measurement).

    Per-round ratios pair the runs that were timed next to each other, so a slow spell of the
    machine hits both sides of a ratio; their quartiles say how far the verdict can be trusted.
    Timings without paired samples fall back to the ratio of medians and of opposite quartiles.
    """
    if reference.batch != other.batch:
        raise ValueError(f"compare one batch size, got {reference.batch} and {other.batch}")
    if len(reference.samples_ms) == len(other.samples_ms) >= 2:
        pairs = zip(reference.samples_ms, other.samples_ms, strict=True)
        ratios = [a / b for a, b in pairs]
        low, _, high = statistics.quantiles(ratios, n=4)
        ratio = statistics.median(ratios)
    else:
        ratio = reference.median_ms / other.median_ms
        low, high = reference.p25_ms / other.p75_ms, reference.p75_ms / other.p25_ms
    return SpeedComparison(ratio, low, high, same_kernels)


def same_architecture(a: nn.Module, b: nn.Module) -> bool:
    """Whether two models have the same modules and parameter shapes (so the same kernels)."""
    shapes = [
        [(name, type(m).__name__) for name, m in model.named_modules()]
        + [(name, tuple(p.shape)) for name, p in model.named_parameters()]
        for model in (a, b)
    ]
    return shapes[0] == shapes[1]


def deployable(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[nn.Module, Tricks]:
    """A copy of ``model`` as one would ship it for inference: BatchNorm folded into the
    preceding convolutions and, for conv nets, ``channels_last`` memory, which oneDNN's CPU
    kernels prefer; each trick only where a probe shows it leaves the outputs as they were
    (``explorer.engine.speed_tricks``), and the ``Tricks`` say which were used.

    Applied alike to every model that is timed, so dense, masked and compacted stay comparable.
    The original is not modified.
    """
    device = next(model.parameters()).device
    probe = example_input(input_shape, PROBE_SAMPLES).to(device)
    probe.normal_(generator=torch.Generator(device).manual_seed(0))
    return checked_copy(model, probe)


@contextmanager
def fixed_threads(threads: int | None) -> Iterator[int]:
    """Run with ``threads`` intra-op threads (None = leave as is), restoring afterwards."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def measure_latency(
    models: Mapping[str, nn.Module],
    input_shape: tuple[int, ...],
    batch_sizes: tuple[int, ...] = (1, 32),
    repeats: int = 30,
    warmup: int = 5,
    threads: int | None = None,
    budget_s: float | None = None,
    deploy: bool = True,
    between: Callable[[], None] | None = None,
) -> list[Latency]:
    """Median latency of each model for each batch size.

    Args:
        models: name -> model in eval mode (all on the same device).
        input_shape: one sample's shape, e.g. (1, 28, 28).
        batch_sizes: batch sizes to time.
        repeats: timed forward passes per model and batch size (interleaved across models).
        warmup: untimed passes first.
        threads: intra-op threads while timing (None = current setting).
        budget_s: stop repeating early once this many seconds are spent per batch size
            (at least 5 repeats are kept).
        deploy: time ``deployable`` copies (BatchNorm folded, channels_last for conv nets),
            as a deployment would run them; the same treatment for every model.
        between: called between timed rounds (not inside one), e.g. so an interactive caller
            can abandon the measurement when its user moves on.
    """
    tricks = {name: Tricks() for name in models}
    if deploy:
        deployed = {name: deployable(model, input_shape) for name, model in models.items()}
        models = {name: copied for name, (copied, _) in deployed.items()}
        tricks = {name: used for name, (_, used) in deployed.items()}
    results = []
    device = next(next(iter(models.values())).parameters()).device
    with fixed_threads(threads) as used_threads:
        for batch in batch_sizes:
            plain = example_input(input_shape, batch).to(device).normal_()
            inputs = {name: tricks[name].prepare_input(plain) for name in models}
            for name, model in models.items():
                for _ in range(warmup):
                    model(inputs[name])
                if between is not None:
                    between()
            times: dict[str, list[float]] = {name: [] for name in models}
            start = time.perf_counter()
            order = list(models.items())
            for repeat in range(repeats):
                # Every other round runs the models in reverse order, so that whatever favours
                # a position in the round (a warm cache, a core just woken) favours none.
                for name, model in order if repeat % 2 == 0 else reversed(order):
                    _synchronize(device)
                    began = time.perf_counter()
                    model(inputs[name])
                    _synchronize(device)
                    times[name].append((time.perf_counter() - began) * 1000)
                if between is not None:
                    between()
                if budget_s is not None and repeat >= 4 and time.perf_counter() - start > budget_s:
                    break
            for name, samples in times.items():
                quartiles = statistics.quantiles(samples, n=4) if len(samples) > 1 else samples * 3
                results.append(
                    Latency(
                        name,
                        batch,
                        statistics.median(samples),
                        quartiles[0],
                        quartiles[2],
                        len(samples),
                        used_threads,
                        tuple(samples),
                        tricks[name].notes,
                    )
                )
    return results
