"""Streamlit glue, the only module of ``explorer`` that imports streamlit.

Caches (one dense model per subject, shared by every session and never mutated), session-state
keys, the URL <-> plan sync, and reusable widget groups (``*_ui``) that return plain values.
A session holds only plain data: the subject (model source, weights by content hash, data)
and the plan.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import runpy
import sys
import threading
import time
import uuid
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st
import torch
from torch import nn

from explorer.engine.diagnosis import chance_warning, near_chance
from explorer.engine.evaluation import IncrementalResult
from explorer.engine.plan import QUERY_KEYS, PruningPlan, plan_from_query, plan_to_query
from explorer.engine.pruning import METHODS, PrunedState, plan_label
from explorer.engine.subject import (
    HASH_PREFIX,
    STORE_PREFIX,
    SUBJECT_FIELDS,
    ModelSource,
    Subject,
    subject_from_query,
    subject_to_query,
)
from explorer.engine.sweeps import sweeps_from_query, sweeps_to_query
from explorer.engine.workbench import Workbench, open_workbench
from explorer.inside.activations import UnitStats, observation_points, unit_statistics
from explorer.inside.decision_paths import PathComparison, class_unit_map, compare_paths
from explorer.inside.dynamic import (
    DynamicPoint,
    DynamicResult,
    dynamic_predict,
    gate_points,
    static_plan,
    static_point,
)
from explorer.inside.flips import Flips, flips_for_plan
from explorer.inside.saliency import (
    ATTRIBUTIONS,
    Attribution,
    PairExplanation,
    attributions_for,
    get_attribution,
)
from explorer.inside.saliency.compare import RANKED_PIXELS
from explorer.inside.saliency.explain import pair_of_maps
from explorer.inside.saliency.gradcam import conv_layers
from explorer.inside.saliency.occlusion import window_for
from explorer.keep.quantize import Int8Report, int8_report
from explorer.loading.arguments import add_data_options, data_spec_from_args
from explorer.loading.options import read_by
from explorer.loading.store import default_store
from explorer.plots.common import image_data_uri
from explorer.plots.saliency import saliency_figure
from explorer.recovery.jobs import balanced_indices
from explorer.recovery.variants import list_variants
from explorer.zoo.mnist import ImageDataset
from explorer.zoo.models import ZOO, load_card, weights_path

DEFAULT_MODEL = "lenet5"
MODEL_KEY = "model"
PLAN_KEY = "plan"
NOTICES_KEY = "notices"
#: The sweeps the Prune page's chart shows (plans, amount 0), mirrored into the URL's ``sweeps``
#: so that a shared link redraws them; kept per session, dropped when the subject changes.
SWEEPS_KEY = "sweeps_shown"
PLAN_VERSION_KEY = "plan_version"
PLAN_SOURCE_KEY = "plan_source"
DRAWN_KEY = "derived_widgets_drawn"
DERIVED_KEYS = "derived_widget_keys"
#: What a table cell without a value shows (``st.dataframe(placeholder=...)``), never "None";
#: the column's help says why it can be empty.
MISSING = "–"

HELP = {
    "model": "A bundled model trained on the bundled MNIST fit split; every number is measured "
    "on the held-out eval split (5,000 images) that no training ever saw.",
    "method": "What gets removed: single weights (unstructured), whole neurons/filters or input "
    "channels (structured), N of every M weights (N:M), attention heads, or whole residual / "
    "transformer blocks (each becomes its skip connection).",
    "criterion": "How importance is scored. Magnitude: small weights matter least. Taylor: "
    "gradient x weight, the first-order loss change if the weight were zeroed (root mean "
    "square over calibration mini-batches). "
    "Activation/APoZ: measured on real inputs. Random: the baseline to beat.",
    "scope": "Global: rank all layers together, so sparsity flows to the layers that can "
    "afford it. Layer-wise: every layer loses exactly its own fraction.",
    "amount": "Fraction of weights (or channels, heads) to remove. In global scope it is the "
    "fraction over all layers without their own setting.",
    "latency": "Measured now on this machine (median of repeated runs). A masked model uses the "
    "same dense kernels as the original, so it is not faster; only the compacted "
    "model, physically smaller, can be.",
}


# --- caches -------------------------------------------------------------------------------------


# A user's model holds its data (up to 2 GiB) and stored activations (1 GiB by default): a few
# subjects at a time, least recently used dropped (a session still using one keeps it alive).
@st.cache_resource(max_entries=6, show_spinner="Loading the model, its data and its structure…")
def get_workbench(subject_json: str) -> Workbench:
    """The workbench of a subject (its canonical JSON); shared by every session, never mutated.

    Raises ``LoadError`` (a ValueError) for a subject whose files cannot be used.
    """
    settings = app_settings()
    with read_by("app"):  # its messages and notes name the app's fields, not the CLI's flags
        bench = open_workbench(
            Subject.from_json(subject_json),
            trust_code=settings.trust_code,
            trust_pickle=settings.trust_pickle,
        )
    bench.evaluator  # noqa: B018 - warm the dense pass once, here, behind the spinner
    return bench


@st.cache_resource(max_entries=8, show_spinner=False)
def pruned_model(subject_json: str, plan_json: str) -> nn.Module:
    """The pruned copy (zeros in place) of a subject's model under a plan; shared, never
    mutated."""
    bench = get_workbench(subject_json)
    return bench.pruner.pruned_model(bench.resolve(PruningPlan.from_json(plan_json)))


#: Per-unit statistics of one plan take about this long on a slow model (fast ones: all images).
UNIT_STATS_SECONDS = 3.0


@st.cache_data(max_entries=32, show_spinner=False)
def eval_unit_stats(subject_json: str, plan_json: str) -> dict[str, UnitStats]:
    """Per-unit statistics of every prunable layer on the eval split, for one (subject, plan)."""
    bench = get_workbench(subject_json)
    state = bench.resolve(PruningPlan.from_json(plan_json))
    layers = [layer.name for layer in bench.pruner.structure.layers]
    # A big model is measured on a class-balanced part of the eval set (a few seconds per
    # plan); the page says on how many images.
    images = bench.eval_set.images[bench.evaluator.samples_within(UNIT_STATS_SECONDS)]
    with bench.borrowed_model() as model:  # functional_call must not touch the shared model
        points = observation_points(model, layers)
        return unit_statistics(model, images, points, state.parameters)


@st.cache_resource(max_entries=16, show_spinner=False)
def flips_of(subject_json: str, plan_json: str) -> Flips:
    """Every eval prediction a plan flipped, with per-class counts and confusion matrices;
    computed once per (subject, plan) from the incremental evaluation, shared, plain data."""
    bench = get_workbench(subject_json)
    return flips_for_plan(bench, PruningPlan.from_json(plan_json))


@st.cache_data(max_entries=64, show_spinner=False)
def thumbnails(subject_json: str, indices: tuple[int, ...]) -> list[str]:
    """Small PNG ``data:`` URIs of eval images, for a table's image column."""
    data = get_workbench(subject_json).eval_set
    return [image_data_uri(data.pixels(i)) for i in indices]


@st.cache_resource(max_entries=128, show_spinner=False)
def path_comparison(
    subject_json: str, plan_json: str, index: int, target: int, top_k: int
) -> PathComparison:
    """One eval image's decision path in the dense and the pruned model (``compare_paths``),
    cached per (subject and its weights, plan, sample, target, units per layer)."""
    bench = get_workbench(subject_json)
    state = bench.resolve(PruningPlan.from_json(plan_json))
    x = bench.eval_set.images[index : index + 1]
    pruned = pruned_model(subject_json, plan_json)
    return compare_paths(bench.model, pruned, state, x, target, bench.pruner.structure, top_k)


#: Eval images the class x unit map reads: balanced over the classes (a second or so on the
#: bundled models; a slow model gets what ``CLASS_MAP_SECONDS`` of its passes allow).
CLASS_MAP_IMAGES = 1000
CLASS_MAP_SECONDS = 5.0


@st.cache_resource(max_entries=32, show_spinner=False)
def class_units(
    subject_json: str, plan_json: str | None, layer: str, top_k: int
) -> tuple[np.ndarray, int]:
    """The class x unit map of ``layer`` (``paths.class_unit_map``) for the dense model
    (``plan_json`` None) or a pruned one, and on how many eval images it was measured."""
    bench = get_workbench(subject_json)
    model = bench.model if plan_json is None else pruned_model(subject_json, plan_json)
    data = bench.eval_set
    budget = len(bench.evaluator.samples_within(CLASS_MAP_SECONDS))
    chosen = balanced_indices(data.labels, min(CLASS_MAP_IMAGES, budget))
    matrix = class_unit_map(
        model, data.images[chosen], data.labels[chosen], layer, len(data.classes), top_k
    )
    return matrix, len(chosen)


#: Eval images dynamic pruning is measured on (balanced over the classes).
DYNAMIC_IMAGES = 2000
#: Keep shares of the dynamic-pruning curve.
DYNAMIC_KEEPS = (1.0, 0.75, 0.5, 0.35, 0.25, 0.15, 0.1, 0.05)


def _dynamic_images(bench: Workbench) -> torch.Tensor:
    budget = len(bench.evaluator.samples_within(CLASS_MAP_SECONDS))
    return balanced_indices(bench.eval_set.labels, min(DYNAMIC_IMAGES, budget))


@st.cache_resource(max_entries=32, show_spinner=False)
def dynamic_result(subject_json: str, layers: tuple[str, ...], keep: float) -> DynamicResult:
    """The dense model with only each input's top ``keep`` units of ``layers`` computed
    (``dynamic.dynamic_predict``), on a class-balanced part of the eval split."""
    bench = get_workbench(subject_json)
    chosen = _dynamic_images(bench)
    structure = bench.pruner.structure
    return dynamic_predict(
        bench.model,
        bench.eval_set.images[chosen],
        bench.eval_set.labels[chosen],
        keep,
        layers,
        len(bench.eval_set.classes),
        {layer.name: layer.flops for layer in structure.layers},
        bench.dense_flops,
        points=gate_points(bench.model, layers, bench.eval_set.input_shape),
    )


def dynamic_points(subject_json: str, layers: tuple[str, ...]) -> list[DynamicPoint]:
    """``dynamic_result`` at every ``DYNAMIC_KEEPS`` share, as curve points."""
    return [
        DynamicPoint(keep, r.accuracy, r.units_computed, r.flops_computed)
        for keep in DYNAMIC_KEEPS
        for r in [dynamic_result(subject_json, layers, keep)]
    ]


@st.cache_resource(max_entries=16, show_spinner=False)
def static_points(subject_json: str, layers: tuple[str, ...]) -> list[DynamicPoint] | str:
    """The static counterpart of ``dynamic_points`` on the same images: at every
    ``DYNAMIC_KEEPS`` share, the same units removed for every input (``dynamic.static_plan``);
    or why the model has none (a one-line reason)."""
    bench = get_workbench(subject_json)
    chosen = _dynamic_images(bench)
    structure = bench.pruner.structure
    points = []
    for keep in DYNAMIC_KEEPS:
        try:
            state = bench.resolve(static_plan(layers, keep, structure))
        except ValueError as error:
            return str(error)
        # static_point runs its own private copy: the shared model is only read
        points.append(
            static_point(
                bench.model,
                bench.eval_set.images[chosen],
                bench.eval_set.labels[chosen],
                state.parameters,
                state.masks,
                keep,
                layers,
                {layer.name: layer.flops for layer in structure.layers},
                bench.dense_flops,
            )
        )
    return points


#: Timing of the int8 section: batches 1 and 32, a fraction of a second per model and batch.
INT8_LATENCY = {"batch_sizes": (1, 32), "repeats": 12, "budget_s": 0.12}


@st.cache_resource(max_entries=16, show_spinner=False)
def int8_figures(subject_json: str, plan_json: str) -> Int8Report:
    """The int8 variant of a plan's deployable model next to fp32 and dense: accuracy, bytes,
    latency (``int8_report``); computed once per (subject, plan), shared, plain data."""
    bench = get_workbench(subject_json)
    return int8_report(bench, PruningPlan.from_json(plan_json), **INT8_LATENCY)


# --- background runs (fine-tuning and friends) ----------------------------------------------------

#: Runs training at once on this server; more would only share the same cores more thinly.
MAX_RUNNING_JOBS = 2
#: Finished runs the server keeps (with their weights) for pages to show; older ones go.
KEEP_FINISHED_JOBS = 12


@dataclass(eq=False)
class JobRecord:
    """A background run and what it is about, kept by the server (sessions hold its ``id``).

    Attributes:
        id: random hex, the handle a session keeps in its state.
        kind: what runs (``"finetune"``, ``"gradual"``, ``"snip"``, ``"ticket"``).
        subject_json, plan_json: the subject and plan it started from.
        job: the running object (``TrainingJob`` or ``BackgroundJob``): progress, result, stop.
        started: ``time.time()`` at start.
        info: plain data about it (recipe, accuracies before, evaluations so far).
    """

    id: str
    kind: str
    subject_json: str
    plan_json: str
    job: Any
    started: float
    info: dict[str, Any] = field(default_factory=dict)


@st.cache_resource(show_spinner=False)
def _job_registry() -> dict[str, JobRecord]:
    return {}


_job_lock = threading.Lock()


def running_jobs() -> list[JobRecord]:
    """Runs still going on this server (every session's)."""
    with _job_lock:
        return [r for r in _job_registry().values() if not r.job.done]


def start_job(kind: str, subject_json: str, plan_json: str, job: Any, **info: Any) -> JobRecord:
    """Register ``job`` (not yet started) and start it. Raises ``RuntimeError`` when the server
    already runs ``MAX_RUNNING_JOBS``."""
    with _job_lock:
        registry = _job_registry()
        if sum(not r.job.done for r in registry.values()) >= MAX_RUNNING_JOBS:
            raise RuntimeError(
                f"this server already trains {MAX_RUNNING_JOBS} models; start again when one "
                "has finished (or stop one)"
            )
        record = JobRecord(uuid.uuid4().hex, kind, subject_json, plan_json, job, time.time(), info)
        registry[record.id] = record
        # Finished runs hold their weights: keep the newest few, not every run since start.
        finished = sorted((r for r in registry.values() if r.job.done), key=lambda r: r.started)
        for old in finished[: max(0, len(finished) - KEEP_FINISHED_JOBS)]:
            del registry[old.id]
    job.start()
    return record


def get_job(job_id: str | None) -> JobRecord | None:
    with _job_lock:
        return _job_registry().get(job_id) if job_id else None


def latest_job(kind: str, subject_json: str, plan_json: str | None = None) -> JobRecord | None:
    """The newest run of ``kind`` on this subject (and plan): what a reloaded page shows."""
    with _job_lock:
        found = [
            r
            for r in _job_registry().values()
            if r.kind == kind
            and r.subject_json == subject_json
            and (plan_json is None or r.plan_json == plan_json)
        ]
    return max(found, key=lambda r: r.started, default=None)


# --- how the operator started the app ------------------------------------------------------------


@dataclass(frozen=True)
class AppSettings:
    """What the operator decided when starting the app (never a visitor).

    Attributes:
        subject: the subject to open first (``streamlit run app.py -- --model … --data …``).
        trust_code: a ``.py`` model file may be imported (local files are the operator's own;
            uploaded ones only with ``--trust-code`` / ``PRUNING_EXPLORER_TRUST_CODE=1``).
        trust_pickle: a whole pickled module may be unpickled (``--trust-pickle``).
        uploads_trusted: uploaded ``.py`` files may be imported (``--trust-code`` only).
    """

    subject: Subject | None = None
    trust_code: bool = False
    trust_pickle: bool = False
    uploads_trusted: bool = False
    problem: str = ""  # why the startup model could not be used (shown on every page)


def _flag(env: str) -> bool:
    return os.environ.get(env, "").strip().lower() in ("1", "true", "yes")


@st.cache_resource(show_spinner=False)
def app_settings() -> AppSettings:
    """The operator's settings: the script's own arguments (after ``--``) and the environment.

    A bad argument is reported on the page (``startup_problem``), never a crash.
    """
    parser = argparse.ArgumentParser(prog="app.py", add_help=False, exit_on_error=False)
    parser.add_argument("--model")
    parser.add_argument("--weights")
    parser.add_argument("--model-args")
    add_data_options(parser)
    parser.add_argument("--trust-code", action="store_true")
    parser.add_argument("--trust-pickle", action="store_true")
    trust_code = _flag("PRUNING_EXPLORER_TRUST_CODE")
    trust_pickle = _flag("PRUNING_EXPLORER_TRUST_PICKLE")
    try:
        args, _ = parser.parse_known_args(sys.argv[1:])
    except argparse.ArgumentError as err:
        problem = f"The app's arguments cannot be used: {err}."
        return AppSettings(None, trust_code, trust_pickle, False, problem)
    trust_code = args.trust_code or trust_code
    trust_pickle = args.trust_pickle or trust_pickle
    subject, problem = None, ""
    if args.model:
        try:
            source = ModelSource.parse(args.model, args.model_args)
            weights = default_store().register(args.weights) if args.weights else None
            subject = Subject(source, weights, data_spec_from_args(args))
        except (ValueError, OSError) as err:
            problem = f"The model the app was started with cannot be used: {err}."
        else:
            # The operator named a local file: it is theirs to run.
            trust_code = trust_code or (source.runs_user_code and source.kind != "pickle")
    return AppSettings(subject, trust_code, trust_pickle, args.trust_code, problem)


# --- session state and the URL ------------------------------------------------------------------


def notify(message: str, kind: str = "warning") -> None:
    """Queue a message to show once at the top of the next page drawn."""
    st.session_state.setdefault(NOTICES_KEY, []).append((kind, message))


def show_notices() -> None:
    for kind, message in st.session_state.pop(NOTICES_KEY, []):
        getattr(st, kind)(named(message))


def init_session() -> None:
    """On a session's first run, take the subject and plan from the URL (or defaults)."""
    if MODEL_KEY in st.session_state:
        return
    params = st.query_params.to_dict()
    subject = _subject_from_link(params)
    plan = PruningPlan()
    query = {key: params[key] for key in QUERY_KEYS if key in params}
    if query:
        try:
            candidate = plan_from_query(query)
            get_workbench(subject.to_json()).resolve(candidate)
            plan = candidate
        except ValueError as err:
            notify(
                f"The link's pruning plan could not be used: {err}. Showing the dense model "
                "instead."
            )
    _store_plan(plan)
    st.session_state[MODEL_KEY] = subject
    if params.get("sweeps"):
        _sweeps_from_link(params["sweeps"], subject)
    write_url()


def _sweeps_from_link(text: str, subject: Subject) -> None:
    """Take the sweeps a link names (see ``sweeps_to_query``) for the Prune page's chart."""
    try:
        plans = sweeps_from_query(text)
        bench = get_workbench(subject.to_json())
        for plan in plans:
            bench.resolve(plan)
    except ValueError as err:
        notify(f"The link's sweeps cannot be drawn: {err}.")
        return
    st.session_state[SWEEPS_KEY] = plans


def _subject_from_link(params: dict[str, str]) -> Subject:
    """The subject a link names, if it can be opened here; else the default, with a notice."""
    settings, bundled = app_settings(), Subject.bundled(DEFAULT_MODEL)
    if settings.problem:
        notify(settings.problem + f" Showing {DEFAULT_MODEL!r}.", "error")
    default = settings.subject or bundled
    if default != bundled:
        try:
            get_workbench(default.to_json())
        except (ValueError, OSError) as err:
            notify(
                f"The model the app was started with cannot be opened: {err}. "
                f"Showing {DEFAULT_MODEL!r}.",
                "error",
            )
            default = bundled
    if "model" not in params:
        return default
    fallback = f"showing {default.label!r}"
    try:
        subject = subject_from_query({k: params[k] for k in SUBJECT_FIELDS if k in params})
    except ValueError as err:
        notify(f"The link's model could not be used: {err}; {fallback}.")
        return default
    if subject.model.kind == "zoo":
        name = subject.model.ref
        if name not in ZOO:
            notify(
                f"The link names an unknown model {name!r}; {fallback}. "
                f"Bundled models: {', '.join(ZOO)}."
            )
            return default
        if not weights_path(name).exists():
            notify(
                f"{name!r} has no trained weights yet (run `python sample_models/train.py "
                f"{name}`); {fallback}."
            )
            return default
    if subject.is_bundled:
        return subject
    try:
        get_workbench(subject.to_json())
    except (ValueError, OSError) as err:  # LoadError, or a file the server no longer holds
        notify(
            f"The link names {subject.label}, which this server cannot open: {err}. Upload "
            f"its files on Model & data to open it again; {fallback}."
        )
        return default
    remember_subject(subject)
    return subject


def current_subject() -> Subject:
    """What the session works on: model source, weights and data (plain data)."""
    init_session()  # a fragment rerun can reach a session whose full run never happened
    return st.session_state[MODEL_KEY]


def current_model() -> str:
    """The current subject as the text every cache is keyed by (its canonical JSON)."""
    return current_subject().to_json()


def subject_tag() -> str:
    """A short name of the current subject for widget keys and file names."""
    subject = current_subject()
    return subject.model.ref if subject.is_bundled and not subject.weights else subject.key


def current_plan() -> PruningPlan:
    init_session()
    return st.session_state[PLAN_KEY]


def current_workbench() -> Workbench:
    return get_workbench(current_model())


def write_url() -> None:
    """Mirror the subject and plan into the URL so that a link reopens this exact state."""
    target = {**subject_to_query(current_subject()), **plan_to_query(current_plan())}
    if st.session_state.get(SWEEPS_KEY):
        target["sweeps"] = sweeps_to_query(st.session_state[SWEEPS_KEY])
    if st.query_params.to_dict() != target:
        st.query_params.from_dict(target)


def set_plan(plan: PruningPlan, source: Hashable = None) -> bool:
    """Adopt ``plan`` if the current model can take it; otherwise keep the last good plan and
    queue the reason. Returns whether the plan was adopted.

    ``source`` names the control that made the change (see ``derived_widget_key``); None for
    anything else (a reset, an upload, a model switch, a control that shows no derived value).
    """
    try:
        current_workbench().resolve(plan)
    except ValueError as err:
        notify(f"That change was not applied: {err}", "error")
        return False
    _store_plan(plan, source)
    write_url()
    return True


def _store_plan(plan: PruningPlan, source: Hashable = None) -> None:
    """The one place the session's plan is written: every write gets a new version."""
    st.session_state[PLAN_KEY] = plan
    st.session_state[PLAN_VERSION_KEY] = st.session_state.get(PLAN_VERSION_KEY, 0) + 1
    st.session_state[PLAN_SOURCE_KEY] = source


USER_SUBJECTS_KEY = "user_subjects"
UPLOAD_NAMES_KEY = "upload_names"


def remember_upload(ref: str, name: str) -> None:
    """Keep the name a file was uploaded as (``ref``: its ``store:`` reference), to show it
    instead of the hash the store names it by. Display only: the hash stays every key."""
    names = st.session_state.setdefault(UPLOAD_NAMES_KEY, {})
    names[ref] = names[default_store().digest(ref)] = Path(name).name  # weights: by digest


def upload_names() -> dict[str, str]:
    """This session's uploads: ``store:`` reference and ``sha256:`` digest -> uploaded name."""
    return st.session_state.get(UPLOAD_NAMES_KEY, {})


def shown_label(subject: Subject) -> str:
    """``subject.label`` with this session's uploads by the names they were uploaded as."""
    return subject.label_with(upload_names())


def named(text: str) -> str:
    """``text`` (a message, a note) with each of this session's uploads called by the name it
    was uploaded as wherever the text names it by its hash: the store reference, the stored
    file's name (``<sha256>.onnx``, what the loaders see), the digest or its first digits."""
    for ref, name in upload_names().items():
        if not ref.startswith(STORE_PREFIX):
            continue
        stored = ref[len(STORE_PREFIX) :]
        digest = stored.split(".")[0]
        for form in (ref, stored, HASH_PREFIX + digest, digest, digest[:12] + "…"):
            text = text.replace(form, name)
    return text


def remember_subject(subject: Subject) -> None:
    """Offer ``subject`` in the model picker for the rest of the session."""
    known = st.session_state.setdefault(USER_SUBJECTS_KEY, [])
    if subject not in known and not subject.is_bundled:
        known.append(subject)


def _open_or_say_why(subject: Subject, failed: str, advice: str = "") -> Workbench | None:
    """The workbench of ``subject``, or None with the reason queued for the page."""
    if subject.model.kind == "zoo" and subject.model.ref not in ZOO:
        notify(
            f"This installation has no bundled model {subject.model.ref!r} "
            f"(bundled: {', '.join(ZOO)}).",
            "error",
        )
        return None
    if subject.model.kind == "zoo" and not weights_path(subject.model.ref).exists():
        notify(
            f"{subject.model.ref!r} has no trained weights here: run "
            f"`python sample_models/train.py {subject.model.ref}`.",
            "error",
        )
        return None
    try:
        return get_workbench(subject.to_json())
    except (ValueError, OSError) as err:
        notify(f"{shown_label(subject)} {failed}: {err}.{advice}", "error")
        return None


def set_subject(subject: Subject) -> bool:
    """Switch to ``subject``, keeping what of the plan still applies; the last good subject
    stays when this one cannot be opened (the reason is queued). Returns whether it switched."""
    bench = _open_or_say_why(subject, "could not be opened")
    if bench is None:
        return False
    st.session_state[MODEL_KEY] = subject
    st.session_state.pop(SWEEPS_KEY, None)  # a sweep is of one subject
    remember_subject(subject)
    plan = current_plan()
    if plan.method not in usable_methods(bench):
        notify(
            f"{shown_label(subject)} has nothing for {METHODS[plan.method].title!r}; switched to "
            "unstructured pruning.",
            "info",
        )
        plan = PruningPlan(amount=plan.amount)
    plan, dropped = bench.pruner.adapt(plan)
    if dropped:
        notify(
            f"Per-layer settings for {', '.join(dropped)} do not apply to {shown_label(subject)} "
            "and "
            "were dropped.",
            "info",
        )
    if not set_plan(plan):
        _store_plan(PruningPlan())
        write_url()
    return True


def load_state(subject: Subject, plan: PruningPlan) -> bool:
    """Switch to ``subject`` with exactly ``plan`` (a saved experiment brought back). Nothing
    changes when the subject cannot be opened here or the plan does not apply to it (the
    reason is queued). Returns whether it switched."""
    bench = _open_or_say_why(
        subject,
        "cannot be opened on this server",
        " Upload its files on Model & data to open it again.",
    )
    if bench is None:
        return False
    try:
        bench.resolve(plan)
    except ValueError as err:
        notify(f"The saved plan does not apply to {shown_label(subject)}: {err}", "error")
        return False
    st.session_state[MODEL_KEY] = subject
    st.session_state.pop(SWEEPS_KEY, None)  # a sweep is of one subject
    remember_subject(subject)
    _store_plan(plan)
    write_url()
    return True


def usable_methods(bench: Workbench) -> list[str]:
    """Methods that have at least one unit in this model."""
    return [name for name in METHODS if bench.pruner.units(name)]


# --- widget groups ------------------------------------------------------------------------------


def _short_title(subject: Subject) -> str:
    # the short title: the sidebar is narrow, the details are on Model & data
    return load_card(subject.model.ref).get("title", subject.model.ref).split(" (")[0]


def _saved_variants() -> dict[Subject, str]:
    """Fine-tuned variants kept on this server whose weights are still stored: subject ->
    name (the Recover page keeps them; every page can open them from the picker)."""
    try:
        return {v.subject: v.name for v in list_variants() if v.available}
    except (OSError, ValueError):  # an unreadable data directory: no variants, not a crash
        return {}


def _picker_label(
    subject: Subject,
    variants: dict[Subject, str] | None = None,
    names: dict[str, str] | None = None,
) -> str:
    """The picker's label of ``subject``; ``names``: the uploads' names (``upload_names()``,
    read once by the caller: a widget's format function may run outside the script)."""
    name = (variants or {}).get(subject)
    parent = Subject(subject.model, None, subject.data)
    if name is not None and parent.is_bundled:
        return f"{_short_title(parent)} · {name}"
    if name is not None:
        return f"{subject.model_label} · {name}"
    if subject.is_bundled and not subject.weights:
        return _short_title(subject)
    return subject.label_with(upload_names() if names is None else names)


#: (the subject the sidebar's picker was made for, how many pickers this session has had)
PICKER_MOUNT_KEY = "model_picker_mount"


def model_picker_ui() -> Subject:
    """Sidebar model choice: the bundled models and the subjects opened in this session;
    switching keeps the parts of the plan that still apply."""
    options = [Subject.bundled(name) for name in ZOO]
    variants = _saved_variants()
    options += [s for s in variants if s not in options]
    options += [s for s in st.session_state.get(USER_SUBJECTS_KEY, []) if s not in options]
    current = current_subject()
    if current not in options:
        options.append(current)

    # A fresh widget after every switch, however it was made (this picker, an upload adopted,
    # a link): a key per subject alone is not enough, because going back to a subject brought
    # back its old widget with the value last chosen in it (the other model), so choosing that
    # model again was no change and did nothing. The old widgets' values are dropped with them.
    mounted_for, mount = st.session_state.get(PICKER_MOUNT_KEY, (None, 0))
    if mounted_for != current.key:
        mount += 1
        st.session_state[PICKER_MOUNT_KEY] = (current.key, mount)
        for stale in [k for k in st.session_state if str(k).startswith("model_picker::")]:
            del st.session_state[stale]
    key = f"model_picker::{mount}"
    names = upload_names()

    def changed() -> None:
        if st.session_state.get(PICKER_MOUNT_KEY) == (current_subject().key, mount):
            set_subject(st.session_state[key])

    st.selectbox(
        "Model",
        options,
        index=options.index(current),
        key=key,
        on_change=changed,
        help=HELP["model"],
        format_func=lambda subject: _picker_label(subject, variants, names),
    )
    chosen = current_subject()
    if not chosen.is_bundled or chosen.weights:  # the narrow box cuts a long label short
        st.caption(_picker_label(chosen, variants, names))
    return chosen


def plan_summary_ui(plan: PruningPlan | None = None) -> None:
    """A compact description of the plan in the sidebar (pages call it inside their fragments,
    so that it follows fragment reruns)."""
    st.sidebar.caption(f"**Plan:** {plan_label(plan or current_plan())}")


def sync_widget(key: str, value: object) -> None:
    """Show ``value`` in a user-owned control, writing it only when the plan changed elsewhere
    (reset, upload, model switch): a control the user is moving is never overwritten."""
    if st.session_state.get(key) != value:
        st.session_state[key] = value


# --- widgets that show a value derived from the plan ---------------------------------------------
#
# A per-layer slider shows a *derived* value (the layer's actual sparsity, which the global
# ranking moves). Writing such values into session state races with fast interactions: an
# interrupted rerun leaves the browser showing stale values, which it sends back as if the user
# had set them. So such a widget gets a fresh key whenever the plan changes, and starts at its
# ``value=`` - except the control the user is operating: its key is kept while the user's own
# changes come in, so it keeps the keyboard focus (a remounted widget loses it).


def derived_widget_key(kind: str, name: str) -> str:
    """Key of a widget that shows a value derived from the plan, e.g. ("amount", "fc1").

    The key stays while the latest plan change came from this very widget (its callback passes
    ``source=(kind, name)`` to ``set_plan``), and is new after any other change.
    """
    init_session()
    version = st.session_state.get(PLAN_VERSION_KEY, 0)
    keys = st.session_state.setdefault(DERIVED_KEYS, {})
    if (kind, name) not in keys or st.session_state.get(PLAN_SOURCE_KEY) != (kind, name):
        keys[(kind, name)] = f"{kind}::{subject_tag()}::{name}::v{version}"
    return keys[(kind, name)]


def drawn_value(key: str, derived: object) -> object:
    """The value to draw a derived widget with (what it already holds, else ``derived``),
    remembered so that ``user_changed`` can tell an echo from a change."""
    value = st.session_state.get(key, derived)
    st.session_state.setdefault(DRAWN_KEY, {})[key] = value
    return value


def forget_drawn_values() -> None:
    """Call before drawing a set of derived widgets: only those of this draw count."""
    st.session_state[DRAWN_KEY] = {}


def user_changed(kind: str, name: str, key: str) -> bool:
    """Whether a derived widget's event is a user's change rather than the browser echoing.

    Widgets registered in a rerun that a newer event interrupted have no committed state, so
    the browser sending their values back looks like a change. Such an event comes from a key
    that is no longer current, or carries exactly the value the server drew the widget with.
    """
    drawn = st.session_state.get(DRAWN_KEY, {})
    current = st.session_state.get(DERIVED_KEYS, {}).get((kind, name))
    return key == current and key in drawn and st.session_state[key] != drawn[key]


def metric_change(value: float, spec: str, unit: str = "", color: str = "normal") -> dict:
    """``delta`` arguments for ``st.metric``: a change that rounds to zero is "no change" in
    grey (a red "+0.0000" with an arrow would claim a change that is not there).

    Args:
        value: the change; spec: its format, e.g. ``".2f"``; unit: appended, e.g. ``" pts"``;
        color: ``delta_color`` of a real change (``"normal"``, ``"inverse"`` or ``"off"``).
    """
    text = f"{value:+{spec}}"
    if float(text) == 0:
        return {"delta": "no change", "delta_color": "off", "delta_arrow": "off"}
    return {"delta": text + unit, "delta_color": color}


def dense_accuracy_ui(
    bench: Workbench, label: str = "Eval accuracy", warnings: Any = None
) -> Callable[[], None]:
    """The dense model's eval accuracy as a metric, here. A big model's dense pass is
    progressive: until it is done the metric is a preview (≈, with its 95% interval), and
    the returned ``refine`` (call it once the rest of the page is drawn) runs the pass on,
    updating the metric; leaving the page interrupts it and keeps what was done.

    ``warnings``: a placeholder (``st.empty()``, full width) where a dense accuracy at about
    chance is said loudly, with what to check (``explorer.engine.diagnosis``)."""
    cell = st.empty()
    total = len(bench.eval_set)

    def warn(accuracy: float, so_far: bool = False) -> None:
        text = chance_warning(accuracy, bench.eval_set, bench.subject, so_far)
        if warnings is not None and text:
            warnings.warning(named(text), icon=":material/warning:")

    def show(outcome: IncrementalResult) -> None:
        accuracy = outcome.result.accuracy
        if outcome.complete:
            cell.metric(label, f"{accuracy:.2%}", help=f"Dense, on all {total:,} eval images.")
            warn(accuracy)
            return
        low, high = outcome.accuracy_interval()
        if near_chance(high, len(bench.eval_set.classes), total):  # sure already: said now
            warn(accuracy, so_far=True)  # the metric's own number, not the interval's end
        cell.metric(
            label,
            f"≈{accuracy * 100:.1f}%",
            f"95%: {low * 100:.0f}–{high * 100:.0f}%",
            delta_color="off",
            delta_arrow="off",
            help=f"Dense, so far on {outcome.covered:,} of the {total:,} eval images (spread "
            f"over every class); the accuracy on all of them lies between {low:.1%} and "
            f"{high:.1%} (95%). Refined while the page is open.",
        )

    if bench.evaluator.dense_done == total:  # known already: no preview to show
        show(bench.evaluator.dense)
        return lambda: None
    steps = bench.evaluator.dense_steps()
    show(next(steps))

    def refine() -> None:
        for outcome in steps:
            show(outcome)

    return refine


def global_amount_ui(key: str, extra_help: str = "") -> None:
    """The global amount slider, labelled with what the method's amount counts ("Filters /
    neurons removed (%)"); it writes the shared plan (any page can show one)."""
    plan = current_plan()

    def changed() -> None:
        set_plan(current_plan().with_amount(st.session_state[key] / 100))

    sync_widget(key, round(plan.amount * 100))
    switch = METHODS[plan.method].amount_is_switch
    st.slider(
        METHODS[plan.method].amount_label(),
        0,
        100,
        step=1,
        key=key,
        on_change=changed,
        disabled=switch,
        help=HELP["amount"]
        + (
            f" {METHODS[plan.method].title} has no amount: its pattern fixes the sparsity "
            "(switch it on the Prune page)."
            if switch
            else ""
        )
        + (" " + extra_help if extra_help else ""),
    )


def layer_picker_ui(bench: Workbench, key: str, help: str) -> str:
    """A prunable layer of the current model, labelled with its type and weight shape."""
    layers = {layer.name: layer for layer in bench.pruner.structure.layers}
    return st.selectbox(
        "Layer",
        list(layers),
        key=f"{key}::{subject_tag()}",
        format_func=lambda n: f"{n} · {layers[n].kind} {layers[n].shape_text}",
        help=help,
    )


def sample_picker_ui(
    dataset: ImageDataset,
    changed: Callable[[], list[int]] | None = None,
    key: str = "sample",
) -> int:
    """Choose an eval sample by index, by class, or among those whose prediction changed
    (``changed`` computes them, only when that mode is chosen: a pass over the eval set)."""
    modes = ["by index", "by class"] + (["prediction changed"] if changed is not None else [])
    mode = st.radio(
        "Choose a sample",
        modes,
        horizontal=True,
        key=f"{key}_mode",
        help="Browse the held-out eval images by position, by true class, or only "
        "those whose predicted class the current plan changed.",
    )
    if mode == "by class":
        cols = st.columns(2)
        label = cols[0].selectbox(
            "Class",
            list(range(len(dataset.classes))),
            format_func=lambda c: dataset.classes[c],
            key=f"{key}_class",
            help="The true class of the images to browse.",
        )
        members = (dataset.labels == label).nonzero().flatten().tolist()
        nth = cols[1].number_input(
            "Which one",
            0,
            len(members) - 1,
            0,
            key=f"{key}_nth",
            help=f"{len(members)} eval images of this class; 0 is the first.",
        )
        return members[int(nth)]
    if mode == "prediction changed":
        with st.spinner(f"Comparing the {len(dataset):,} eval predictions with the dense model…"):
            changed = changed()
        if not changed:
            st.info("No eval prediction changed under this plan: prune more to see some.")
            return 0
        return st.selectbox(
            "Samples whose prediction changed",
            changed,
            key=f"{key}_changed",
            help=f"{len(changed)} eval images are classified differently from the dense model "
            "under this plan (eval index shown).",
        )
    return int(
        st.number_input(
            "Sample index",
            0,
            len(dataset) - 1,
            0,
            key=f"{key}_index",
            help=f"Position in the eval split, 0 to {len(dataset) - 1}.",
        )
    )


_MARKDOWN_SPECIALS = re.compile(r"([\\`*_{}\[\]()#+\-.!|~<>$])")


# --- saliency, shared by the Saliency and Decisions pages ------------------------------------

EXPLAIN_TARGET_HELP = (
    "Which class's logit both maps (and both decision paths) explain. The dense model's "
    "prediction asks 'why did it say that, and does the pruned model still look there?'; the "
    "true label, the pruned model's prediction or any other class show where the evidence "
    "for that class lies."
)


@st.cache_resource(max_entries=256, show_spinner=False)
def attribution_of(
    subject_json: str, plan_json: str | None, index: int, method: str, target: int, options: str
) -> Attribution:
    """One eval image's attribution map in the dense (``plan_json`` None) or a pruned model,
    cached per (subject and its weights, plan, sample, method, target, options)."""
    bench = get_workbench(subject_json)
    model = bench.model if plan_json is None else pruned_model(subject_json, plan_json)
    x = bench.eval_set.images[index : index + 1]
    return get_attribution(method).explain(model, x, target, **json.loads(options))


#: What marks an attribution computed on request, in words: a symbol (a stopwatch) is not in
#: every browser's fonts and shows as a box where it is missing.
SLOW_TAG = " (slow)"

#: Width of the attribution method's select box: its longest title whole.
METHOD_BOX_PX = 230


def attribution_method_ui(
    model: nn.Module, input_shape: tuple[int, ...], key: str
) -> tuple[str, dict[str, Any]]:
    """The attribution method, among those that apply to this model on (C, H, W) inputs, and
    its settings (a widget per setting, beside the choice)."""
    names = attributions_for(model, input_shape)
    method_key = f"{key}_method"
    if st.session_state.get(method_key) not in names:
        st.session_state[method_key] = names[0]
    # a row that wraps: the setting goes under the method where the two do not fit side by
    # side (a narrow column at 1280 px), and the method's box is wide enough for its longest
    # title ("Integrated Gradients (slow)") wherever it is
    row = st.container(horizontal=True, vertical_alignment="bottom")
    # the methods that do not apply are named in the help, not on the page: it is the
    # question "where is Grad-CAM?" that looks for them
    missing = [m for name, m in ATTRIBUTIONS.items() if name not in names]
    absent = "".join(
        f" · Not for this model: {m.title}, which needs {m.requires or 'another architecture'}."
        for m in missing
    )
    method = row.selectbox(
        "Attribution method",
        names,
        key=method_key,
        format_func=lambda n: ATTRIBUTIONS[n].title + ("" if ATTRIBUTIONS[n].live else SLOW_TAG),
        help=" · ".join(f"{ATTRIBUTIONS[n].title}: {ATTRIBUTIONS[n].help}" for n in names)
        + f" · {SLOW_TAG.strip()}: many passes per map, computed on request."
        + absent,
        width=METHOD_BOX_PX,
    )
    options = {}
    with row:
        for name in ATTRIBUTIONS[method].options:
            options[name] = ATTRIBUTION_SETTINGS[name](model, input_shape, f"{key}_{name}")
    return method, options


def _gradcam_layer_ui(model: nn.Module, input_shape: tuple[int, ...], key: str) -> str:
    convs = conv_layers(model, input_shape)
    return st.selectbox(
        "Layer",
        convs,
        index=len(convs) - 1,
        key=f"{key}::{subject_tag()}",
        help="The convolution whose feature maps Grad-CAM weighs: the last one (default) is "
        "the most class-specific and the coarsest; earlier ones are finer.",
    )


def _ig_steps_ui(model: nn.Module, input_shape: tuple[int, ...], key: str) -> int:
    return st.select_slider(
        "Steps",
        [8, 16, 32, 64, 128],
        value=32,
        key=key,
        help="Points of the path integral from the ink-free image: more steps, a smaller "
        "error in 'the attributions add up to the logit change', and slower.",
    )


def _occlusion_window_ui(model: nn.Module, input_shape: tuple[int, ...], key: str) -> int:
    height, width = input_shape[-2:]
    default = window_for(height, width)
    sizes = sorted({max(2, default // 2), default, min(default * 2, min(height, width))})
    return st.select_slider(
        "Square (px)",
        sizes,
        value=default,
        key=key,
        help="Side of the square hidden at a time (moved by half its side). Smaller: finer "
        "and slower; larger: coarser, and it can hide a whole stroke.",
    )


#: A widget per attribution setting (``AttributionMethod.options``): (model, input shape,
#: key) -> the value.
ATTRIBUTION_SETTINGS: dict[str, Callable[[nn.Module, tuple[int, ...], str], Any]] = {
    "layer": _gradcam_layer_ui,
    "steps": _ig_steps_ui,
    "window": _occlusion_window_ui,
}


def explain_target_ui(
    classes: tuple[str, ...], dense: int, label: int, pruned: int, key: str
) -> int:
    """The class to explain: the dense prediction (default), the true label, the pruned
    prediction or any other class."""
    choices = {
        "dense": ("Dense prediction", dense),
        "label": ("True label", label),
        "pruned": ("Pruned prediction", pruned),
    }
    cols = st.columns([3, 2], vertical_alignment="bottom")
    # fixed labels: a label that changed with the image would make a new widget each time; a
    # select box, not a radio: one line in a narrow column
    choice = cols[0].selectbox(
        "Explain class",
        [*choices, "other"],
        key=f"{key}_target",
        help=EXPLAIN_TARGET_HELP,
        format_func=lambda t: choices[t][0] if t in choices else "Another class",
    )
    if choice in choices:
        cols[1].markdown(f"class **{plain(classes[choices[choice][1]])}**")
        return choices[choice][1]
    return cols[1].selectbox(
        "Class",
        list(range(len(classes))),
        key=f"{key}_target_class",
        format_func=lambda c: classes[c],
        label_visibility="collapsed",
    )


def agreement_ui(explanation: PairExplanation, classes: tuple[str, ...], label: int) -> None:
    """Predictions and the agreement numbers, in one row of metrics."""
    comparison = explanation.comparison
    cols = st.columns(4)
    for col, name, pred in (
        (cols[0], "Dense", explanation.dense),
        (cols[1], "Pruned", explanation.pruned),
    ):
        text = classes[pred.label] if pred.finite else "broken"
        col.metric(
            f"{name} predicts",
            text,
            f"{pred.confidence:.1%} confident" if pred.finite else "non-finite output",
            delta_color="off",
            delta_arrow="off",
            help=f"Top-1 class and its softmax probability; the true label is {classes[label]}.",
        )
    corr, iou = comparison["rank_correlation"], comparison["top_iou"]
    reason = comparison["reason"]
    why = f" Undefined here: {reason}." if reason else ""
    cols[2].metric(
        "Rank correlation",
        f"{corr:+.2f}" if math.isfinite(corr) else "n/a",
        help=f"Spearman correlation of the two maps over {RANKED_PIXELS} (pixels that both "
        "give exactly 0, like the background of Integrated Gradients, would agree by "
        "default): do they come in the same order of importance? 1 = the same order, "
        "0 = unrelated, −1 = the opposite order, whatever how peaked each map is."
        + ("" if math.isfinite(corr) else why),
    )
    cols[3].metric(
        f"Top-{comparison['top_fraction']:.0%} overlap",
        f"{iou:.2f}" if math.isfinite(iou) else "n/a",
        help="Intersection over union of the most important tenth of each map's "
        "pixels: 1 = the same pixels, 0 = none shared." + ("" if math.isfinite(iou) else why),
    )


def saliency_pair_ui(
    bench: Workbench,
    plan_json: str,
    index: int,
    target: int,
    method: str,
    options: dict[str, Any],
    key: str,
) -> PairExplanation | None:
    """Both models' maps of one eval image, their difference and agreement. A cheap method
    runs at once; an expensive one (``live`` False) on request, with progress. Returns the
    explanation drawn, or None while it waits to be requested."""
    attribution = get_attribution(method)
    options_json = json.dumps(options, sort_keys=True)
    subject_json, data = current_model(), bench.eval_set
    request = (subject_json, plan_json, index, method, target, options_json)
    requested = st.session_state.setdefault(f"{key}_requested", set())
    # One slot for the button, drawn empty once the maps are requested: in a fragment's
    # rerun a button that is simply no longer drawn stays on the page, pressed and stale.
    slot = st.empty()
    if not attribution.live and request not in requested:
        # a row, not fixed columns: the button as wide as its label, the note beside it
        row = slot.container(horizontal=True, vertical_alignment="center")
        if not row.button(f"Compute {attribution.title}", key=f"{key}_compute"):
            row.caption(
                f"{attribution.title} runs many forward passes per map, so it runs on "
                "request; once computed it is kept for this image, plan and settings."
            )
            return None
        requested.add(request)
        slot.empty()
    x = data.images[index : index + 1]
    progress = st.progress(0.0, text="Dense model…")
    start = time.perf_counter()
    dense_map = attribution_of(subject_json, None, index, method, target, options_json)
    progress.progress(0.5, text="Pruned model…")
    pruned_map = attribution_of(subject_json, plan_json, index, method, target, options_json)
    seconds = time.perf_counter() - start
    progress.empty()
    pruned = pruned_model(subject_json, plan_json)
    explanation = pair_of_maps(
        method, target, dense_map, pruned_map, bench.model, pruned, x, seconds
    )
    classes, label = data.classes, int(data.labels[index])
    maps = {"Dense": dense_map, "Pruned": pruned_map}
    # a map ≈ 0 is drawn blank with what that means for this method, never stretched to 1
    notes = {name: attribution.zero_means if a.negligible else "" for name, a in maps.items()}
    st.plotly_chart(
        saliency_figure(
            data.pixels(index),
            explanation.dense_scaled,
            explanation.pruned_scaled,
            explanation.comparison["difference"],
            classes[label],
            classes[target],
            (classes[explanation.dense.label], explanation.dense.confidence),
            (classes[explanation.pruned.label], explanation.pruned.confidence),
            dense_note=notes["Dense"],
            pruned_note=notes["Pruned"],
        ),
        config={"displayModeBar": False},
        key=f"{key}_maps",
    )
    agreement_ui(explanation, classes, label)
    if explanation.comparison["reason"]:
        st.caption(f"Agreement n/a: {explanation.comparison['reason']}.")
    for name, map_ in maps.items():
        if map_.negligible:
            st.caption(f"{name} map ≈ 0, drawn blank: {map_.reason}.")
    detail = attribution.describe(bench.model, data.input_shape, **options)
    timing = (
        f"Both maps computed in {seconds * 1000:.0f} ms."
        if seconds >= 0.001
        else "Both maps from the cache."
    )
    st.caption(f"{detail} {timing}".strip())
    return explanation


def plain(text: str) -> str:
    """``text`` (a name or note a user typed) escaped so that markdown shows it as typed."""
    return _MARKDOWN_SPECIALS.sub(r"\\\1", text)


def guarded(render: Callable[[], None]) -> None:
    """Run a page body; an unexpected error becomes a message, never a traceback."""
    try:
        render()
    except Exception as err:
        st.error(
            f"Something went wrong drawing this page: {type(err).__name__}: {err}. "
            "Your plan is kept; try another setting, or reset the plan."
        )


APP_SCRIPT = Path(__file__).resolve().parents[2] / "app.py"
_shell = threading.local()  # each script run has its own thread


@contextmanager
def app_shell() -> Iterator[None]:
    """Marks the page that ``app.py`` runs inside its shell (navigation, session, sidebar)."""
    _shell.active = True
    try:
        yield
    finally:
        _shell.active = False


def run_page(render: Callable[[], None]) -> None:
    """A page's entry point: ``render`` inside the app's shell.

    Streamlit treats a ``pages/`` folder beside the main script as a legacy multipage app until
    ``st.navigation`` first runs in the server process, so the first request after a start can
    run a page file directly (a shared link opened on a fresh server). Such a run executes
    ``app.py`` instead, whose ``st.navigation`` then runs this page inside the shell.
    """
    if getattr(_shell, "active", False):
        guarded(render)
    else:
        runpy.run_path(str(APP_SCRIPT), run_name="__main__")


def resolve_current() -> PrunedState:
    """The current plan resolved on the current model (falls back to dense if it broke)."""
    bench = current_workbench()
    try:
        return bench.resolve(current_plan())
    except ValueError as err:
        notify(f"The plan no longer applies ({err}); showing the dense model.", "error")
        _store_plan(PruningPlan())
        write_url()
        return bench.resolve(PruningPlan())


def bundled_names() -> list[str]:
    """The bundled models, in zoo order."""
    return list(ZOO)
