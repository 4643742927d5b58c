"""Quality of a (pruned) model on a dataset: accuracy, loss, per-class, confusion, flips."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from explorer.engine.limits import activation_cache_bytes
from explorer.engine.speed_tricks import PROBE_SAMPLES, checked_copy
from explorer.engine.stages import split_stages
from explorer.zoo.mnist import ImageDataset

EVAL_BATCH = 1000
#: A slow model's first chunk should take about this long, so that first numbers come quickly
#: (the page shows them with an interval, then refines); later chunks double up to a batch.
FIRST_CHUNK_S = 0.25
#: The smallest first chunk: fewer images make an interval too wide to say anything.
MIN_FIRST_CHUNK = 16


@dataclass(frozen=True, eq=False)
class EvalResult:
    """Metrics of one model on one dataset.

    Attributes:
        accuracy: fraction of correct top-1 predictions, in [0, 1].
        loss: mean cross-entropy (nats); ``nan`` when the logits are not finite.
        predictions: int64 (N,), top-1 class per sample.
        labels: int64 (N,), the true classes.
        num_classes: number of classes (confusion matrix size).
        finite: False when any logit was NaN or infinite.
    """

    accuracy: float
    loss: float
    predictions: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    finite: bool = True

    @property
    def per_class_accuracy(self) -> torch.Tensor:
        """float (num_classes,): accuracy on the samples of each class (nan for an absent class)."""
        correct = torch.bincount(
            self.labels[self.predictions == self.labels], minlength=self.num_classes
        ).float()
        total = torch.bincount(self.labels, minlength=self.num_classes).float()
        return correct / total

    @property
    def confusion(self) -> torch.Tensor:
        """int64 (num_classes, num_classes): row = true class, column = predicted class."""
        k = self.num_classes
        return torch.bincount(self.labels * k + self.predictions, minlength=k * k).reshape(k, k)

    def changed_vs(self, reference: EvalResult) -> torch.Tensor:
        """Indices of samples whose prediction differs from ``reference`` (e.g. the dense model)."""
        return torch.nonzero(self.predictions != reference.predictions).flatten()


def metrics_from_logits(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> EvalResult:
    """Accuracy, loss and predictions from precomputed logits (N, num_classes)."""
    finite = bool(torch.isfinite(logits).all())
    predictions = logits.argmax(1)
    loss = float(F.cross_entropy(logits, labels)) if finite else float("nan")
    accuracy = float((predictions == labels).float().mean())
    return EvalResult(accuracy, loss, predictions, labels, num_classes, finite)


# Every pass over a user's model runs under no_grad, never inference_mode: a model may cache a
# tensor in its forward (timm's ConViT keeps its relative positions), and an inference tensor
# cached there makes every later backward fail (saliency, fine-tuning).
@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = EVAL_BATCH) -> torch.Tensor:
    """Logits of ``model`` (in its current mode) for ``images``, batched, on the model's device."""
    device = next(model.parameters()).device
    outputs = [
        model(images[i : i + batch_size].to(device)).float().cpu()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(outputs)


def evaluate(model: nn.Module, dataset: ImageDataset, batch_size: int = EVAL_BATCH) -> EvalResult:
    """Metrics of ``model`` on ``dataset`` (the model must already be in eval mode)."""
    logits = predict(model, dataset.images, batch_size)
    return metrics_from_logits(logits, dataset.labels, len(dataset.classes))


# --- incremental re-evaluation ------------------------------------------------------------------


def chunk_layout(labels: torch.Tensor, batch_size: int, first: int) -> list[torch.Tensor]:
    """The samples of each evaluation chunk, so that the first chunks are a fair preview.

    With ``first >= min(batch_size, len(labels))``: equal chunks that each stride through the
    data (chunk ``c`` holds ``c, c + n, c + 2n, ...``). Otherwise chunks of ``first``,
    ``2 first``, ... up to ``batch_size`` over an order that interleaves the classes (a seeded
    shuffle within each class, merged by rank / class size), so that any prefix holds each
    class in proportion.
    """
    total = len(labels)
    if first >= min(batch_size, total):
        count = max(1, math.ceil(total / batch_size))
        return [torch.arange(c, total, count) for c in range(count)]
    generator = torch.Generator().manual_seed(0)
    keys = torch.empty(total, dtype=torch.float64)
    for label in labels.unique():
        members = torch.nonzero(labels == label).flatten()
        shuffled = members[torch.randperm(len(members), generator=generator)]
        keys[shuffled] = (torch.arange(len(members), dtype=torch.float64) + 0.5) / len(members)
    order = torch.argsort(keys, stable=True)
    chunks, start, size = [], 0, first
    while start < total:
        chunks.append(order[start : start + size])
        start += size
        size = min(batch_size, size * 2)
    return chunks


@dataclass(frozen=True, eq=False)
class IncrementalResult:
    """An evaluation (possibly of the first chunks only) plus how it was obtained.

    ``result`` and ``dense`` cover the same ``samples`` (eval indices, sorted): all of them once
    ``complete``, a spread-out subset before (every chunk is a stride through the dataset).
    """

    result: EvalResult
    dense: EvalResult
    logits: torch.Tensor
    samples: torch.Tensor
    total: int
    resumed_from: int  # lowest stage a chunk's pass started at (0 = a full pass)
    stages: int

    @property
    def complete(self) -> bool:
        return len(self.samples) == self.total

    @property
    def covered(self) -> int:
        return len(self.samples)

    def accuracy_interval(self, z: float = 1.96) -> tuple[float, float]:
        """Where the accuracy on all ``total`` samples lies, from the ``covered`` ones: a Wilson
        score interval (z = 1.96: 95%) shrunk by the finite-population correction, since the
        preview samples *without* replacement from a known, finite eval set. Exact (zero width)
        once complete."""
        correct = round(self.result.accuracy * self.covered)
        return wilson_interval(correct, self.covered, z, population=self.total)


def wilson_interval(
    successes: int, trials: int, z: float = 1.96, population: int | None = None
) -> tuple[float, float]:
    """Wilson score interval for a proportion (``successes`` of ``trials``), in [0, 1].

    Args:
        successes, trials: the observed count and sample size (trials >= 1).
        z: the normal quantile; 1.96 for a 95% interval.
        population: size of the finite population sampled without replacement; the interval
            narrows by sqrt((N - n) / (N - 1)) and is a point when the sample is the population.
    """
    if trials < 1 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials and trials >= 1, got {successes}/{trials}")
    p = successes / trials
    if population is not None:
        if population < trials:
            raise ValueError(f"a sample of {trials} cannot come from {population}")
        if population == trials:
            return p, p
        z *= math.sqrt((population - trials) / (population - 1))
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


class IncrementalEvaluator:
    """Evaluates pruned states of one model on one dataset, recomputing only what changed.

    The model is cut into stages (``explorer.engine.stages``: a Sequential's children, or the pieces
    of its traced graph between points where one tensor is alive) and the dataset into chunks.
    For every chunk the evaluator keeps the input of every stage from the last pass; when the
    next state differs only in parameters of stage k onward, that chunk resumes at stage k.
    Resuming is bit-identical to a full pass of the evaluator: the same chunks go through the
    same operations with the same values. ``steps`` yields a result after every chunk, so the
    first chunk is a preview; an abandoned ``steps`` leaves every chunk's stored inputs
    consistent, so nothing is lost but the work not done. The stored inputs stay within
    ``activation_budget`` bytes: fewer stage boundaries are kept when they would not fit.

    Convolution models run in channels_last (about 1.2-2x faster on CPU) where a probe batch
    shows that it changes nothing but float rounding (~1e-6); ``tricks.notes`` says why a model
    runs without it.

    A model too slow for a whole batch in ``first_chunk_s`` (a torchvision network at 224 px)
    gets a small first chunk instead, sized from a timed probe, and chunks that double from
    there: its samples are ordered so that every prefix holds each class in proportion. Its
    dense pass is progressive too: each chunk's dense logits are computed when first needed
    (by ``dense_steps`` or just before that chunk of a pruned state), so opening a big model
    does not wait for a pass over the whole eval set. A fast model's dense pass runs at once.

    Args:
        model: the dense model in eval mode (read, never written).
        dataset: the data to evaluate on (typically the eval split).
        batch_size: the largest chunk.
        first_chunk_s: the time the first chunk should take; None: equal strided chunks.
        first_chunk: the first chunk's size, instead of timing one (e.g. for a benchmark).
        activation_budget: bytes of stored stage inputs (default: the operator's
            ``PRUNING_EXPLORER_ACTIVATION_CACHE_MB``).
    """

    def __init__(
        self,
        model: nn.Module,
        dataset: ImageDataset,
        batch_size: int = EVAL_BATCH,
        first_chunk_s: float | None = FIRST_CHUNK_S,
        first_chunk: int | None = None,
        activation_budget: int | None = None,
    ) -> None:
        # A private copy: functional_call swaps parameters in place while it runs, which other
        # threads (app sessions) using the shared model must never see.
        # channels_last only where the probe shows it changes nothing (a model that flattens
        # with x.view after a conv cannot run in it): see explorer.engine.speed_tricks.
        self.device = next(model.parameters()).device
        self.model, self.tricks = checked_copy(
            model, dataset.images[:PROBE_SAMPLES].to(self.device), fold=False
        )
        self.channels_last = self.tricks.channels_last
        self.dataset = dataset
        budget = activation_cache_bytes() if activation_budget is None else activation_budget
        example = self._to_device(dataset.images[: min(2, len(dataset))])
        self.stages = split_stages(self.model, example, budget / max(1, len(dataset)))
        # Every stage that uses a parameter (a tied one can be used by several) gets its value.
        self._uses: dict[str, list[tuple[int, str]]] = {}
        self._strides: dict[str, tuple[int, ...]] = {}
        for index, stage in enumerate(self.stages):
            for local, param in stage.module.named_parameters():
                full = stage.prefix + local
                self._uses.setdefault(full, []).append((index, local))
                self._strides[full] = param.stride()
        first = batch_size if first_chunk is None else first_chunk
        #: Forward seconds per image, when timed (a probe decides the layout); else None.
        self.seconds_per_image: float | None = None
        #: Too slow for a batch in ``first_chunk_s``: small first chunks, a progressive dense
        #: pass, and costly whole-set questions (which predictions flipped) asked on request.
        self.slow = False
        if first_chunk is None and first_chunk_s is not None and len(dataset) > MIN_FIRST_CHUNK:
            per_image = self.seconds_per_image = self._seconds_per_image()
            # Only a clearly slow model changes layout (a batch over 4x the target): the bundled
            # ones keep their equal strided chunks however busy the machine is.
            if per_image * min(batch_size, len(dataset)) > 4 * first_chunk_s:
                first = max(MIN_FIRST_CHUNK, int(first_chunk_s / per_image))
                self.slow = True
        self._chunk_samples = chunk_layout(dataset.labels, batch_size, first)
        # _inputs[c][k] = (signature of stages < k, chunk c's input to stage k) from the last
        # pass; stage 0's input is read from the dataset each time (no copy of the data kept).
        self._inputs: list[list[tuple[tuple, torch.Tensor | None] | None]] = [
            [((), None)] + [None] * (len(self.stages) - 1) for _ in self._chunk_samples
        ]
        self._dense_chunks: list[torch.Tensor | None] = [None] * len(self._chunk_samples)
        self._dense: IncrementalResult | None = None
        self._lock = threading.Lock()
        if len(self._chunk_samples) == 1 or first >= min(batch_size, len(dataset)):
            self._dense = self.evaluate({}, {})  # a fast model: the whole dense pass, now

    @property
    def stage_names(self) -> list[str]:
        return [stage.name for stage in self.stages]

    @property
    def dense(self) -> IncrementalResult:
        """The dense model on the whole dataset (finishes the dense pass if it is not done)."""
        if self._dense is None:
            self._dense = self.evaluate({}, {})
        return self._dense

    @property
    def dense_done(self) -> int:
        """How many samples the dense pass has covered so far."""
        chunks = zip(self._chunk_samples, self._dense_chunks, strict=True)
        return sum(len(samples) for samples, logits in chunks if logits is not None)

    def samples_within(self, seconds: float, minimum: int = 64) -> torch.Tensor:
        """Eval indices a pass over which takes about ``seconds`` (all of them for a fast
        model), at least ``minimum``: a prefix of the chunk order, so each class is in
        proportion (slow layout) or the samples stride through the set (fast layout)."""
        order = torch.cat(self._chunk_samples)
        if not self.slow or self.seconds_per_image is None:
            return order.sort().values
        count = max(minimum, int(seconds / self.seconds_per_image))
        return order[:count].sort().values

    def dense_steps(self) -> Iterator[IncrementalResult]:
        """The dense pass one chunk at a time (chunks already done cost nothing)."""
        return self.steps({}, {})

    def _seconds_per_image(self, probe: int = 8) -> float:
        """Forward time per image over a few images: the faster of two warm passes, so that
        one scheduler stall on a busy machine does not make a small model look slow."""
        images = self._to_device(self.dataset.images[:probe])
        timings = []
        with torch.no_grad():
            self.model(images)
            for _ in range(2):
                start = time.perf_counter()
                self.model(images)
                timings.append(time.perf_counter() - start)
        return max(min(timings) / len(images), 1e-9)

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.to(self.device)
        if self.channels_last and tensor.dim() == 4:
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        return tensor

    def _split(
        self, parameters: dict[str, torch.Tensor], signatures: dict[str, object]
    ) -> tuple[list[dict[str, torch.Tensor]], list[tuple]]:
        per_stage: list[dict[str, torch.Tensor]] = [{} for _ in self.stages]
        signature: list[list] = [[] for _ in self.stages]
        for name, value in parameters.items():
            uses = self._uses[name]
            value = value.to(self.device)
            if value.stride() != self._strides[name]:  # the private copy's layout, exactly
                value = torch.empty_strided(
                    value.shape, self._strides[name], dtype=value.dtype, device=self.device
                ).copy_(value)
            for index, local in uses:
                per_stage[index][local] = value
            # No signature: a fresh token, equal to nothing, so that stage is always recomputed
            # (an id() could be reused by a later tensor and match stale stored inputs).
            signature[uses[0][0]].append((name, signatures.get(name, object())))
        return per_stage, [tuple(sorted(s, key=str)) for s in signature]

    def _run_chunk(
        self, chunk: int, per_stage: list[dict[str, torch.Tensor]], prefixes: list[tuple]
    ) -> tuple[torch.Tensor, int]:
        """Logits of one chunk and the stage its pass started at (under the lock)."""
        stored = self._inputs[chunk]
        start = max(
            k
            for k in range(len(self.stages))
            if stored[k] is not None and stored[k][0] == prefixes[k]
        )
        x = stored[start][1]
        if x is None:
            x = self._to_device(self.dataset.images[self._chunk_samples[chunk]])
        for k in range(start, len(self.stages)):
            if k > start:
                stored[k] = (prefixes[k], x)
            stage, params = self.stages[k].module, per_stage[k]
            x = torch.func.functional_call(stage, params, (x,)) if params else stage(x)
        return x.float().cpu(), start

    def _passes(
        self, parameters: dict[str, torch.Tensor], signatures: dict[str, object] | None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        """(samples, logits, stage started at) of each chunk in turn; a chunk's dense logits
        are computed first when they are not yet known (the dense state is just that)."""
        per_stage, stage_signatures = self._split(parameters, signatures or {})
        prefixes = [tuple(stage_signatures[:k]) for k in range(len(self.stages))]
        no_change = [{} for _ in self.stages]
        dense_prefixes = [((),) * k for k in range(len(self.stages))]
        for chunk, samples in enumerate(self._chunk_samples):
            with torch.no_grad(), self._lock:
                dense_start = len(self.stages)
                if self._dense_chunks[chunk] is None:
                    logits, dense_start = self._run_chunk(chunk, no_change, dense_prefixes)
                    self._dense_chunks[chunk] = logits
                if parameters:
                    logits, start = self._run_chunk(chunk, per_stage, prefixes)
                else:
                    logits, start = self._dense_chunks[chunk], dense_start
            yield samples, logits, start

    def _outcome(
        self, done: list[torch.Tensor], outputs: list[torch.Tensor], resumed: int
    ) -> IncrementalResult:
        samples = torch.cat(done)
        order = samples.argsort()
        samples, logits = samples[order], torch.cat(outputs)[order]
        labels, classes = self.dataset.labels, len(self.dataset.classes)
        result = metrics_from_logits(logits, labels[samples], classes)
        if self._dense is not None and len(samples) == len(labels):
            dense = self._dense.result
        else:
            dense_logits = torch.cat([self._dense_chunks[c] for c in range(len(done))])[order]
            dense = metrics_from_logits(dense_logits, labels[samples], classes)
        return IncrementalResult(
            result, dense, logits, samples, len(labels), resumed, len(self.stages)
        )

    def steps(
        self, parameters: dict[str, torch.Tensor], signatures: dict[str, object] | None = None
    ) -> Iterator[IncrementalResult]:
        """Evaluate the dense model with ``parameters`` (name -> tensor) substituted, one chunk
        at a time: yields the result on the chunks done so far after each; the last is complete.

        ``signatures`` (name -> hashable) identify parameter values across calls; a parameter
        without one is taken as new, so its stage always runs again. ``PrunedState.parameters``
        / ``.signatures`` fit directly.
        """
        done: list[torch.Tensor] = []
        outputs: list[torch.Tensor] = []
        resumed = len(self.stages)
        for samples, logits, start in self._passes(parameters, signatures):
            done.append(samples)
            outputs.append(logits)
            resumed = min(resumed, start)
            yield self._outcome(done, outputs, resumed)

    def evaluate(
        self, parameters: dict[str, torch.Tensor], signatures: dict[str, object] | None = None
    ) -> IncrementalResult:
        """The complete evaluation (what the last of ``steps`` is), metrics computed once."""
        done, outputs, starts = [], [], []
        for samples, logits, start in self._passes(parameters, signatures):
            done.append(samples)
            outputs.append(logits)
            starts.append(start)
        return self._outcome(done, outputs, min(starts))

    def steps_for_state(self, state: object) -> Iterator[IncrementalResult]:
        """``steps`` for a ``PrunedState`` (its masked parameters)."""
        return self.steps(state.parameters, state.signatures)

    def evaluate_state(self, state: object) -> IncrementalResult:
        """Evaluate a ``PrunedState`` (its masked parameters)."""
        return self.evaluate(state.parameters, state.signatures)
