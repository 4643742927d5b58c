"""Fine-tuned weights as new weights of the same subject: a *variant*.

A fine-tune (``explorer.recovery.training``) produces a state_dict. ``save_variant`` keeps it in the
content-addressed store (``store:<sha256>.pt``, a plain state_dict that the ``--weights`` loaders
read with ``torch.load(weights_only=True)``), so the fine-tuned model is simply
``subject.with_weights("sha256:<hex>")``: same architecture, same data, other weights. Every cache,
URL and saved experiment keyed by subjects then tells the variant apart from its parent.

Beside the weights a small JSON record says where they came from: name, parent subject, the plan
they were fine-tuned under, the recipe, before / after metrics and when. Records live in
``explorer.loading.store.home() / "variants"``, one file per weights hash, written atomically (a
temporary file renamed into place); a record that cannot be read is skipped with a warning, never a
crash.

A *family* is an architecture on its data (the subject without its weights): a variant's name is
unique within its family, and ``list_variants(subject)`` lists the family of ``subject``, so a
variant of a variant is listed beside its parent.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import threading
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from explorer.engine.plan import PruningPlan
from explorer.engine.structure import source_names
from explorer.engine.subject import HASH_PREFIX, STORE_PREFIX, Subject
from explorer.loading.store import default_store, home
from explorer.recovery.training import Recipe

VARIANTS_FOLDER = "variants"
MAX_NAME_LENGTH = 100
#: Suffixes ``weights_bytes`` can write, all of which ``--weights`` reads.
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")
#: A record is a few kilobytes; anything far larger is not one.
RECORD_LIMIT = 1 << 20
RECORD_VERSION = 1

_lock = threading.Lock()


class VariantNotFound(ValueError):
    """No variant has those weights."""


@dataclass(frozen=True)
class Variant:
    """One saved fine-tune, as plain data.

    Attributes:
        name: unique within its family (architecture + data), chosen by the user.
        weights: ``"sha256:<hex>"`` of the weights file.
        store_ref: where the store keeps it, ``"store:<hex>.pt"``.
        parent: ``Subject.to_dict()`` of the subject that was pruned and fine-tuned.
        plan: ``PruningPlan.to_dict()`` of the plan the masks came from.
        recipe: ``Recipe.to_dict()`` of the fine-tuning.
        metrics: numbers before and after (e.g. ``dense_accuracy``, ``pruned_accuracy``,
            ``finetuned_accuracy``), JSON data.
        created: when it was saved, UTC, ISO 8601.
    """

    name: str
    weights: str
    store_ref: str
    parent: dict[str, Any] = field(hash=False)
    plan: dict[str, Any] = field(hash=False)
    recipe: dict[str, Any] = field(hash=False)
    metrics: dict[str, Any] = field(hash=False)
    created: str = ""

    @property
    def digest(self) -> str:
        """The 64 hex digits of the weights' SHA-256."""
        return self.weights[len(HASH_PREFIX) :]

    @property
    def parent_subject(self) -> Subject:
        return Subject.from_dict(self.parent)

    @property
    def subject(self) -> Subject:
        """The fine-tuned model: the parent's architecture and data with these weights."""
        return self.parent_subject.with_weights(self.weights)

    @property
    def pruning_plan(self) -> PruningPlan:
        return PruningPlan.from_dict(self.plan)

    @property
    def training_recipe(self) -> Recipe:
        return Recipe.from_dict(self.recipe)

    @property
    def available(self) -> bool:
        """Whether the store still holds the weights (the store's quota may have evicted them)."""
        try:
            return default_store().path(self.store_ref).is_file()
        except (OSError, ValueError):
            return False

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": RECORD_VERSION,
            "name": self.name,
            "weights": self.weights,
            "store_ref": self.store_ref,
            "parent": self.parent,
            "plan": self.plan,
            "recipe": self.recipe,
            "metrics": self.metrics,
            "created": self.created,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Variant:
        """A variant from ``to_dict`` output; a ValueError says what is wrong otherwise."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a variant record is a JSON object, got {type(data).__name__}")
        if data.get("version", RECORD_VERSION) != RECORD_VERSION:
            raise ValueError(f"record version {data.get('version')!r} is not supported")
        missing = [key for key in ("name", "weights", "store_ref", "parent") if key not in data]
        if missing:
            raise ValueError(f"the record lacks {missing}")
        for key in ("parent", "plan", "recipe", "metrics"):
            if not isinstance(data.get(key, {}), Mapping):
                raise ValueError(f'"{key}" must be an object')
        variant = cls(
            name=check_name(data["name"]),
            weights=str(data["weights"]),
            store_ref=str(data["store_ref"]),
            parent=dict(data["parent"]),
            plan=dict(data.get("plan", {})),
            recipe=dict(data.get("recipe", {})),
            metrics=dict(data.get("metrics", {})),
            created=str(data.get("created", "")),
        )
        Subject.from_dict(variant.parent).with_weights(variant.weights)  # ValueError if bad
        if not variant.store_ref.startswith(STORE_PREFIX + variant.digest):
            raise ValueError("its store reference does not match its weights")
        return variant


def check_name(name: object) -> str:
    """``name`` without surrounding blanks, or a ValueError that says what is wrong."""
    if not isinstance(name, str):
        raise ValueError(f"a variant's name is text, got {type(name).__name__}")
    name = name.strip()
    if not name:
        raise ValueError("a variant needs a name (it was empty)")
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(
            f"a variant's name has at most {MAX_NAME_LENGTH} characters, this one has {len(name)}"
        )
    if any(not c.isprintable() for c in name):
        raise ValueError(f"a variant's name may not contain control characters, got {name!r}")
    return name


def family(subject: Subject) -> Subject:
    """The architecture on its data: ``subject`` without its weights."""
    return subject.with_weights(None)


# --- weights as bytes -----------------------------------------------------------------------------


def weights_bytes(
    state_dict: Mapping[str, torch.Tensor], suffix: str = ".pt", model: nn.Module | None = None
) -> bytes:
    """``state_dict`` as the bytes of a weights file that ``--weights`` reads.

    Args:
        state_dict: parameter / buffer name -> tensor (any device; written from the CPU).
        suffix: ``.safetensors`` (safetensors) or one of ``.pt .pth .bin .ckpt`` (torch.save).
        model: the module the state_dict came from; when given, keys a loader renamed (an
            unpacked ``nn.MultiheadAttention``: ``in_proj.weight``) get their original names back
            (``in_proj_weight``), so that the file loads into the user's own architecture.
    """
    suffix = suffix.lower()
    if suffix not in WEIGHT_SUFFIXES:
        raise ValueError(
            f"weights are written as {', '.join(WEIGHT_SUFFIXES)} (what --weights reads), "
            f"got {suffix or 'no suffix'!r}"
        )
    renamed = source_names(model) if model is not None else {}
    state = {
        renamed.get(key, key): value.detach().to("cpu").contiguous().clone()
        for key, value in state_dict.items()
    }
    if suffix == ".safetensors":
        from safetensors.torch import save

        return save(state)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


# --- records --------------------------------------------------------------------------------------


def variants_dir() -> Path:
    """Where the records live (created on first use)."""
    path = home() / VARIANTS_FOLDER
    path.mkdir(parents=True, exist_ok=True)
    return path


def _hex(digest: str) -> str:
    """64 hex digits out of ``sha256:<hex>``, ``store:<hex>.<suffix>`` or ``<hex>``."""
    text = digest.strip()
    if text.startswith(STORE_PREFIX):
        text = text[len(STORE_PREFIX) :].split(".")[0]
    text = text.removeprefix(HASH_PREFIX).lower()
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise ValueError(f"weights are named by their hash, sha256:<64 hex>; got {digest!r}")
    return text


def _read(path: Path) -> Variant:
    if path.stat().st_size > RECORD_LIMIT:
        raise ValueError(f"{path.stat().st_size:,} bytes is too large for a record")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"not JSON: {err}") from None
    variant = Variant.from_dict(data)
    if variant.digest != path.stem:
        raise ValueError("its file name does not match its weights")
    return variant


def _write(path: Path, variant: Variant) -> None:
    """Write then rename: a reader never sees half a record."""
    text = json.dumps(variant.to_dict(), indent=2, sort_keys=True) + "\n"
    with tempfile.NamedTemporaryFile(
        "w", dir=path.parent, prefix=".tmp-", suffix=".json", delete=False, encoding="utf-8"
    ) as handle:
        handle.write(text)
    try:
        os.replace(handle.name, path)
    except OSError:
        Path(handle.name).unlink(missing_ok=True)
        raise


def list_variants(subject: Subject | str | None = None) -> list[Variant]:
    """Saved variants, newest first; with ``subject``, only its family's (same architecture and
    data, whatever the weights). An unreadable record is skipped with a ``UserWarning``."""
    wanted = family(Subject.of(subject)) if subject is not None else None
    found = []
    for path in sorted(variants_dir().glob("*.json")):
        if path.name.startswith("."):
            continue
        try:
            variant = _read(path)
        except (OSError, ValueError) as err:
            warnings.warn(f"skipped variant record {path.name}: {err}", stacklevel=2)
            continue
        if wanted is None or family(variant.parent_subject) == wanted:
            found.append(variant)
    return sorted(found, key=lambda v: v.created, reverse=True)


def get_variant(digest: str) -> Variant:
    """The variant whose weights are ``digest`` (``sha256:<hex>``, ``store:<hex>.pt`` or the bare
    hex); ``VariantNotFound`` when there is none, a ValueError when its record is unreadable."""
    hex_ = _hex(digest)
    path = variants_dir() / f"{hex_}.json"
    if not path.is_file():
        raise VariantNotFound(f"no variant has the weights {hex_[:12]}…")
    try:
        return _read(path)
    except (OSError, ValueError) as err:
        raise ValueError(f"the record of variant {hex_[:12]}… is unreadable: {err}") from None


def name_taken(subject: Subject | str, name: str) -> Variant | None:
    """The variant of ``subject``'s family already called ``name``, if any."""
    name = check_name(name)
    return next((v for v in list_variants(subject) if v.name == name), None)


def save_variant(
    subject: Subject | str,
    state_dict: Mapping[str, torch.Tensor],
    name: str,
    plan: PruningPlan | Mapping[str, Any],
    recipe: Recipe | Mapping[str, Any],
    metrics: Mapping[str, Any],
    *,
    model: nn.Module | None = None,
) -> tuple[Subject, Variant]:
    """Keep fine-tuned weights as a new variant of ``subject``; returns (its subject, record).

    Args:
        subject: the subject that was pruned and fine-tuned (the parent).
        state_dict: the fine-tuned weights (``TrainingResult.state_dict``).
        name: unique within the parent's family; a ValueError names the variant in the way.
        plan: the plan the masks came from.
        recipe: the fine-tuning recipe.
        metrics: JSON numbers, e.g. ``{"dense_accuracy": ..., "finetuned_accuracy": ...}``.
        model: the module the state_dict came from, for ``weights_bytes``'s renaming.
    """
    parent = Subject.of(subject)
    name = check_name(name)
    plan_data = plan.to_dict() if isinstance(plan, PruningPlan) else dict(plan)
    recipe_data = recipe.to_dict() if isinstance(recipe, Recipe) else dict(recipe)
    metrics_data = dict(metrics)
    try:
        json.dumps([plan_data, recipe_data, metrics_data], allow_nan=True)
    except (TypeError, ValueError) as err:
        raise ValueError(f"plan, recipe and metrics must be JSON data: {err}") from None
    data = weights_bytes(state_dict, ".pt", model)
    digest = hashlib.sha256(data).hexdigest()
    path = variants_dir() / f"{digest}.json"
    with _lock:
        taken = name_taken(parent, name)
        if taken is not None:
            raise ValueError(
                f"a variant named {name!r} exists already for {family(parent).label} (weights "
                f"{taken.digest[:12]}…, saved {taken.created[:19].replace('T', ' ')} UTC); "
                "choose another name"
            )
        if path.is_file():
            try:
                same = _read(path)
            except (OSError, ValueError):
                same = None  # an unreadable record of these weights: this one replaces it
            if same is not None:
                raise ValueError(
                    f"these weights are saved already, as variant {same.name!r}; "
                    "an identical fine-tune needs no second name"
                )
        ref = default_store().put(data, ".pt")
        variant = Variant(
            name=name,
            weights=HASH_PREFIX + digest,
            store_ref=ref,
            parent=parent.to_dict(),
            plan=plan_data,
            recipe=recipe_data,
            metrics=metrics_data,
            created=datetime.now(timezone.utc).isoformat(timespec="microseconds"),
        )
        _write(path, variant)
    return variant.subject, variant
