"""One model on its data, ready to prune: plan in, honest numbers out (CLI and app share it)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any

import torch
from torch import nn

from explorer.engine.compaction import CompactionError, can_compact, compact
from explorer.engine.cost import LayerCost, model_cost, size_report
from explorer.engine.diagnosis import chance_warning
from explorer.engine.evaluation import EvalResult, IncrementalEvaluator
from explorer.engine.inspection import copy_model, model_flops
from explorer.engine.latency import HONEST_NOTE, Latency, measure_latency
from explorer.engine.plan import PruningPlan
from explorer.engine.pruning import PrunedState, Pruner
from explorer.engine.subject import Subject
from explorer.engine.summary import Footprint, runs_dense_kernels
from explorer.zoo.mnist import ImageDataset, calibration_batch, load_dataset
from explorer.zoo.models import get_spec, load_card, load_model

CALIBRATION_SIZE = 256
RETIME_ATTEMPTS = 3  # timings of one architecture: at most this many tries at a steady one


def default_device() -> torch.device:
    """CUDA when present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass(frozen=True)
class Report:
    """Everything measured for one plan. Counts are per eval sample; sizes in bytes."""

    plan: dict[str, Any]
    accuracy: float
    dense_accuracy: float
    loss: float
    dense_loss: float
    changed: int
    eval_samples: int
    per_class_accuracy: list[float]
    dense_per_class_accuracy: list[float]
    params_total: int
    params_nonzero: int
    sparsity: float
    prunable_sparsity: float
    flops_dense: int
    flops_effective: int
    flops_compacted: int | None
    params_compacted: int | None
    size_dense: int
    size_sparse: int
    size_compacted: int | None
    layers: list[dict[str, Any]]
    units: list[dict[str, Any]]
    warnings: list[str]
    seconds: float
    resumed_from_stage: int
    latency: list[dict[str, Any]] = field(default_factory=list)
    latency_note: str = HONEST_NOTE

    @property
    def accuracy_delta(self) -> float:
        return self.accuracy - self.dense_accuracy

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Workbench:
    """A subject's model with its eval split, calibration batch, pruner and incremental
    evaluator.

    Heavy parts are built once and then only read; ``report(plan)`` never modifies the model.
    """

    def __init__(
        self,
        subject: Subject | str,
        model: nn.Module,
        eval_set: ImageDataset,
        calibration: ImageDataset | None,
        card: dict[str, Any] | None = None,
        notes: Sequence[str] = (),
        fit_source: ImageDataset | Callable[[], ImageDataset] | None = None,
    ) -> None:
        self.subject = Subject.of(subject)
        self.name = self.subject.label
        self._notes = tuple(notes)
        self.model = model.eval()
        self.eval_set = eval_set
        self.card = card or {}
        self.pruner = Pruner(self.model, eval_set.input_shape, calibration)
        self._scratch: nn.Module | None = None
        self._scratch_lock = threading.Lock()
        self._latency_cache: dict[tuple, tuple[list[Latency], int]] = {}
        self._latency_lock = threading.Lock()
        self._fit_source = fit_source
        self._fit_lock = threading.Lock()

    @property
    def fit_set(self) -> ImageDataset:
        """The whole fit part of the data (what fine-tuning trains on), loaded on first use.

        Raises ``ValueError`` when the workbench was built without a way to read it."""
        with self._fit_lock:
            if isinstance(self._fit_source, ImageDataset):
                return self._fit_source
            if self._fit_source is None:
                raise ValueError(f"{self.name}: no fit data is known for this model")
            self._fit_source = self._fit_source()
            return self._fit_source

    @cached_property
    def evaluator(self) -> IncrementalEvaluator:
        return IncrementalEvaluator(self.model, self.eval_set)

    @property
    def notes(self) -> tuple[str, ...]:
        """What the user should know: the loaders' notes, and the speed tricks this model runs
        without (once it has been evaluated)."""
        evaluator = self.__dict__.get("evaluator")
        return self._notes + (evaluator.tricks.notes if evaluator is not None else ())

    @property
    def dense(self) -> EvalResult:
        return self.evaluator.dense.result

    @property
    def dense_flops(self) -> int:
        return self.pruner.structure.total_flops

    @contextmanager
    def borrowed_model(self) -> Iterator[nn.Module]:
        """A private copy of the dense model, lent to one caller at a time.

        For code that runs ``torch.func.functional_call`` (which swaps parameters in place while
        it runs): the shared ``self.model`` must stay untouched for every other session.
        """
        with self._scratch_lock:
            if self._scratch is None:
                self._scratch = copy_model(self.model)
            yield self._scratch

    def changed_samples(self, state: PrunedState) -> list[int]:
        """Eval indices whose predicted class under ``state`` differs from the dense model's."""
        return self.evaluator.evaluate_state(state).result.changed_vs(self.dense).tolist()

    def resolve(self, plan: PruningPlan) -> PrunedState:
        return self.pruner.resolve(plan)

    def evaluate(self, plan: PruningPlan) -> tuple[PrunedState, EvalResult, int]:
        """Masks and eval metrics for ``plan`` (incremental), plus the stage it resumed at."""
        state = self.pruner.resolve(plan)
        outcome = self.evaluator.evaluate_state(state)
        return state, outcome.result, outcome.resumed_from

    def report(
        self,
        plan: PruningPlan,
        latency: bool = False,
        latency_repeats: int = 30,
        batch_sizes: tuple[int, ...] = (1, 32),
        threads: int | None = None,
    ) -> Report:
        """All numbers for ``plan``: quality vs dense, counts, FLOPs, sizes, optional latency."""
        start = time.perf_counter()
        state, result, resumed = self.evaluate(plan)
        cost = model_cost(self.pruner, state)
        footprint = self.footprint(state)
        compacted, sizes = footprint.compacted, footprint.sizes
        dense = self.dense
        units = [
            {
                "name": u.name,
                "kind": u.kind,
                "size": u.size,
                "pruned": state.pruned[u.name],
                "layers": list(u.layers),
            }
            for u in state.units
        ]
        report = Report(
            plan=plan.to_dict(),
            accuracy=result.accuracy,
            dense_accuracy=dense.accuracy,
            loss=result.loss,
            dense_loss=dense.loss,
            changed=len(result.changed_vs(dense)),
            eval_samples=len(self.eval_set),
            per_class_accuracy=[round(float(a), 6) for a in result.per_class_accuracy],
            dense_per_class_accuracy=[round(float(a), 6) for a in dense.per_class_accuracy],
            params_total=cost.params_total,
            params_nonzero=cost.params_nonzero,
            sparsity=cost.sparsity,
            prunable_sparsity=cost.prunable_sparsity,
            flops_dense=cost.flops_dense,
            flops_effective=cost.flops_effective,
            flops_compacted=(
                model_flops(compacted, self.eval_set.input_shape) if compacted is not None else None
            ),
            params_compacted=(
                sum(p.numel() for p in compacted.parameters()) if compacted is not None else None
            ),
            size_dense=sizes.dense,
            size_sparse=sizes.sparse,
            size_compacted=sizes.compacted,
            layers=[_layer_row(layer) for layer in cost.layers],
            units=units,
            warnings=[
                *state.warnings,
                *([footprint.not_compacted] if footprint.not_compacted else []),
                *filter(None, [chance_warning(dense.accuracy, self.eval_set, self.subject)]),
            ],
            seconds=time.perf_counter() - start,
            resumed_from_stage=resumed,
        )
        if not latency:
            return report
        timings = self.latency(state, compacted, batch_sizes, latency_repeats, threads)
        return _with_latency(report, timings)

    def footprint(self, state: PrunedState) -> Footprint:
        """The compacted model (structured plans) and the bytes on disk of every form.

        Compaction and ``torch.save`` take a second on a big model: the app asks for this only
        once the first accuracy numbers are on screen.
        """
        compacted, problem = self.compacted(state)
        return Footprint(
            compacted,
            size_report(self.model, state, compacted),
            runs_dense_kernels(compacted, self.model),
            problem,
        )

    def compacted(self, state: PrunedState) -> tuple[nn.Module | None, str | None]:
        """The physically smaller model of a structured plan (None for other methods), or None
        and the reason when this model's code cannot lose those channels or heads."""
        if not can_compact(state.plan.method):
            return None, None
        try:
            return compact(self.pruner, state), None
        except CompactionError as err:
            return None, str(err)

    def latency(
        self,
        state: PrunedState,
        compacted: nn.Module | None = None,
        batch_sizes: tuple[int, ...] = (1, 32),
        repeats: int = 30,
        threads: int | None = None,
        budget_s: float | None = None,
        between: Callable[[], None] | None = None,
    ) -> list[Latency]:
        """Dense, masked and (structured plans) compacted latency, timed side by side."""
        if compacted is None:
            compacted, _ = self.compacted(state)
        models = {"dense": self.model, "masked": self.pruner.pruned_model(state)}
        if compacted is not None:
            models["compacted"] = compacted
        return measure_latency(
            models,
            self.eval_set.input_shape,
            batch_sizes,
            repeats=repeats,
            threads=threads,
            budget_s=budget_s,
            between=between,
        )

    def latency_by_architecture(
        self, state: PrunedState, compacted: nn.Module | None = None, **options: Any
    ) -> tuple[list[Latency], bool]:
        """``latency`` timed once per architecture; returns (timings, whether they were cached).

        Kernel time depends on shapes, not on the values in the tensors: a masked model runs the
        same dense kernels whatever its zeros, and a compacted model's time depends only on its
        layer widths. So timings are reused while the timed architecture stays the same. A
        disturbed timing (another process took the cores: a wide spread) is kept too, but timed
        again on the next calls, up to ``RETIME_ATTEMPTS`` times, keeping the steadiest.
        """
        if compacted is None:
            compacted, _ = self.compacted(state)
        key = (
            ("dense kernels",)
            if compacted is None
            else tuple((name, tuple(p.shape)) for name, p in compacted.named_parameters())
        )
        with self._latency_lock:
            kept = self._latency_cache.get(key)
        if kept is not None and (_steady(kept[0]) or kept[1] >= RETIME_ATTEMPTS):
            return kept[0], True
        timings = self.latency(state, compacted, **options)
        attempts = 1
        if kept is not None:
            attempts = kept[1] + 1
            timings = min(kept[0], timings, key=_unsteadiness)
        with self._latency_lock:
            if key not in self._latency_cache and len(self._latency_cache) >= 256:
                self._latency_cache.pop(next(iter(self._latency_cache)))
            self._latency_cache[key] = (timings, attempts)
        return timings, False

    def curve(self, plan: PruningPlan, amounts: Sequence[float]) -> list[tuple[float, float]]:
        """(sparsity of prunable weights, eval accuracy) for ``plan`` at each global amount."""
        points = []
        for amount in amounts:
            state, result, _ = self.evaluate(plan.with_amount(amount))
            points.append((model_cost(self.pruner, state).prunable_sparsity, result.accuracy))
        return points


def _unsteadiness(timings: list[Latency]) -> float:
    """The widest relative spread (IQR / median) among ``timings``."""
    return max(t.spread_ms / t.median_ms for t in timings)


def _steady(timings: list[Latency]) -> bool:
    return _unsteadiness(timings) <= 0.5


def _layer_row(layer: LayerCost) -> dict[str, Any]:
    return {**asdict(layer), "sparsity": layer.sparsity}


def _with_latency(report: Report, timings: list[Latency]) -> Report:
    rows = [{**asdict(t), "spread_ms": t.spread_ms} for t in timings]
    return Report(**{**asdict(report), "latency": rows})


def open_workbench(
    subject: Subject | str,
    device: torch.device | None = None,
    *,
    trust_code: bool = False,
    trust_pickle: bool = False,
) -> Workbench:
    """The workbench of ``subject`` (or of a model-source text such as ``"lenet5"``): its model
    on the eval part of its data, calibrated on the fit part.

    A bundled model on the bundled data is built from the zoo; any other subject goes through
    the loaders (``explorer.loading``), whose errors are ``LoadError`` with a clear message.
    ``trust_code`` / ``trust_pickle`` allow importing a ``.py`` model / unpickling a whole
    module: the caller (CLI, an operator's flag) decides.
    """
    subject = Subject.of(subject)
    device = device or default_device()
    if subject.is_bundled and subject.weights is None:
        name = subject.model.ref
        spec = get_spec(name)
        model = load_model(name).to(device)
        eval_set = load_dataset(spec.dataset, "eval")
        fit = load_dataset(spec.dataset, "fit")
        calibration = calibration_batch(fit, CALIBRATION_SIZE)
        return Workbench(subject, model, eval_set, calibration, load_card(name), fit_source=fit)
    from explorer.loading.data import load_data
    from explorer.loading.store import default_store
    from explorer.loading.subjects import load_subject  # user files: heavier imports

    loaded = load_subject(subject, trust_code=trust_code, trust_pickle=trust_pickle)
    preprocessing = loaded.loaded_model.preprocessing

    def read_fit() -> ImageDataset:
        # Read again when fine-tuning asks for it: most sessions never train, and the fit part
        # of a big dataset is most of its memory.
        resolve = default_store().path
        return load_data(subject.data, resolve=resolve, preprocessing=preprocessing).fit

    return Workbench(
        subject,
        loaded.model.to(device),
        loaded.data.eval,
        calibration_batch(loaded.data.fit, CALIBRATION_SIZE),
        loaded.card,
        loaded.notes,
        fit_source=read_fit,
    )
