"""A pruning plan: plain, hashable data that lives in session state, a URL, a JSON file alike.

The plan says *what* to prune; ``explorer.engine.pruning`` turns it into masks. Names of methods and
criteria are checked against their registries there; here only the shape of the data is checked.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

SCOPES = ("global", "layer")
#: The fields of a plan's plain-data form (JSON, URL); "version" only in JSON.
PLAN_FIELDS = ("method", "criterion", "scope", "amount", "layers", "dense", "norm", "nm", "seed")
PLAN_VERSION = 1


def _is_number(value: object) -> bool:
    """An int or float, but not a bool (JSON ``true`` is not a number here)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_whole(value: object) -> bool:
    """An int, but not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_amount(amount: object, what: str = "amount") -> float:
    """``amount`` as a float in [0, 1], or a ValueError that says what was wrong."""
    if not _is_number(amount):
        raise ValueError(f"{what} must be a number between 0 and 1, got {amount!r}")
    value = float(amount)
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{what} must be between 0 and 1 (a fraction, 0.5 = 50%), got {amount!r}")
    return value


@dataclass(frozen=True)
class PruningPlan:
    """What to prune, as plain data.

    Attributes:
        method: granularity, a name in ``explorer.engine.pruning.METHODS`` (e.g.
        ``"unstructured"``).
        criterion: importance score, a name in ``explorer.engine.importance.CRITERIA``.
        scope: ``"global"`` ranks units of all layers together; ``"layer"`` prunes each layer
            by its own amount.
        amount: the global fraction to prune, in [0, 1] (of weights, channels or heads).
        layer_amounts: per-layer overrides ``(name, amount)``, sorted by name; an overridden
            layer is pruned by exactly its own amount and leaves the global ranking.
        dense_layers: layers left untouched, sorted.
        norm: the p of the Ln norm that turns element scores into channel / head scores.
        n, m: the N:M pattern (keep n of every m consecutive weights) for the ``nm`` method.
        seed: seed of the ``random`` criterion.
    """

    method: str = "unstructured"
    criterion: str = "magnitude"
    scope: str = "global"
    amount: float = 0.0
    layer_amounts: tuple[tuple[str, float], ...] = ()
    dense_layers: tuple[str, ...] = ()
    norm: float = 1.0
    n: int = 2
    m: int = 4
    seed: int = 0
    _overrides: Mapping[str, float] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.scope not in SCOPES:
            raise ValueError(f"unknown scope {self.scope!r}; choose one of {list(SCOPES)}")
        set_ = object.__setattr__  # frozen: normalise in place once, at construction
        set_(self, "amount", check_amount(self.amount, "global amount"))
        overrides = {}
        for name, amount in dict(self.layer_amounts).items():
            overrides[str(name)] = check_amount(amount, f"amount of layer {name!r}")
        set_(self, "layer_amounts", tuple(sorted(overrides.items())))
        set_(self, "_overrides", overrides)
        set_(self, "dense_layers", tuple(sorted(set(map(str, self.dense_layers)))))
        if not (_is_number(self.norm) and 0 < self.norm < math.inf):
            raise ValueError(f"norm must be a positive number (1 = L1, 2 = L2), got {self.norm!r}")
        if not (_is_whole(self.n) and _is_whole(self.m) and 0 < self.n < self.m):
            raise ValueError(f"N:M needs whole numbers 0 < N < M, got {self.n}:{self.m}")

    # --- queries --------------------------------------------------------------------------------

    def amount_for(self, layer: str) -> float:
        """The amount that applies to ``layer`` in layer-wise scope (override, dense, or global)."""
        if layer in self.dense_layers:
            return 0.0
        return self._overrides.get(layer, self.amount)

    @property
    def overrides(self) -> Mapping[str, float]:
        return self._overrides

    def layer_names(self) -> set[str]:
        """Every layer the plan names (overrides and dense layers)."""
        return set(self._overrides) | set(self.dense_layers)

    # --- edits return new plans ------------------------------------------------------------------

    def with_amount(self, amount: float) -> PruningPlan:
        return replace(self, amount=amount)

    def with_layer(self, layer: str, amount: float) -> PruningPlan:
        """A copy in which ``layer`` is pruned by exactly ``amount``."""
        return replace(self, layer_amounts=tuple({**self._overrides, layer: amount}.items()))

    def without_layer(self, layer: str) -> PruningPlan:
        """A copy in which ``layer`` follows the global amount again."""
        rest = {k: v for k, v in self._overrides.items() if k != layer}
        return replace(self, layer_amounts=tuple(rest.items()))

    def with_dense(self, layer: str, dense: bool = True) -> PruningPlan:
        layers = set(self.dense_layers) | {layer} if dense else set(self.dense_layers) - {layer}
        return replace(self, dense_layers=tuple(layers))

    def with_global_everywhere(self) -> PruningPlan:
        """Drop every per-layer override: all layers follow the global amount."""
        return replace(self, layer_amounts=())

    # --- plain data -----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": PLAN_VERSION,
            "method": self.method,
            "criterion": self.criterion,
            "scope": self.scope,
            "amount": self.amount,
            "layers": dict(self.layer_amounts),
            "dense": list(self.dense_layers),
            "norm": self.norm,
            "nm": [self.n, self.m],
            "seed": self.seed,
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PruningPlan:
        """A plan from ``to_dict`` output; every key is optional; unknown keys are an error."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a plan must be a JSON object, got {type(data).__name__}")
        known = {"version", *PLAN_FIELDS}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown plan field(s) {unknown}; a plan has {sorted(known)}")
        if data.get("version", PLAN_VERSION) != PLAN_VERSION:
            raise ValueError(
                f"plan version {data['version']!r} is not supported "
                f"(this is version {PLAN_VERSION})"
            )
        layers = data.get("layers", {})
        if not isinstance(layers, Mapping):
            raise ValueError('"layers" must map layer names to amounts, e.g. {"fc1": 0.9}')
        dense = data.get("dense", [])
        if isinstance(dense, str) or not isinstance(dense, list | tuple):
            raise ValueError('"dense" must be a list of layer names, e.g. ["fc3"]')
        nm = data.get("nm", [2, 4])
        if not (isinstance(nm, list | tuple) and len(nm) == 2):
            raise ValueError(f'"nm" must be a pair [N, M], e.g. [2, 4], got {nm!r}')
        for key in ("method", "criterion", "scope"):
            if key in data and not isinstance(data[key], str):
                raise ValueError(f'"{key}" must be a string, got {data[key]!r}')
        seed = data.get("seed", 0)
        if not _is_whole(seed):
            raise ValueError(f'"seed" must be a whole number, got {seed!r}')
        return cls(
            method=data.get("method", "unstructured"),
            criterion=data.get("criterion", "magnitude"),
            scope=data.get("scope", "global"),
            amount=data.get("amount", 0.0),
            layer_amounts=tuple(layers.items()),
            dense_layers=tuple(dense),
            norm=data.get("norm", 1.0),
            n=nm[0],
            m=nm[1],
            seed=seed,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> PruningPlan:
        """A plan from JSON text; a ValueError that says where the JSON is broken otherwise."""
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"the plan is not valid JSON: {err}") from None
        return cls.from_dict(data)


# --- URL query parameters -----------------------------------------------------------------------


def plan_to_query(plan: PruningPlan) -> dict[str, str]:
    """The plan as short, readable URL query parameters (defaults left out).

    ``layers=fc1:0.9,fc2:0.5`` and ``dense=fc3,conv1`` carry the per-layer parts.
    """
    default = PruningPlan()
    query = {
        "method": plan.method,
        "criterion": plan.criterion,
        "scope": plan.scope,
        "amount": f"{plan.amount:g}",
    }
    if plan.layer_amounts:
        query["layers"] = ",".join(f"{name}:{amount:g}" for name, amount in plan.layer_amounts)
    if plan.dense_layers:
        query["dense"] = ",".join(plan.dense_layers)
    if plan.norm != default.norm:
        query["norm"] = f"{plan.norm:g}"
    if (plan.n, plan.m) != (default.n, default.m):
        query["nm"] = f"{plan.n}:{plan.m}"
    if plan.seed != default.seed:
        query["seed"] = str(plan.seed)
    return query


def _number(text: str, what: str, kind: type = float) -> float:
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"{what} must be a number, got {text!r}") from None


def plan_from_query(query: Mapping[str, str]) -> PruningPlan:
    """Inverse of ``plan_to_query``; a ValueError that names the bad parameter otherwise."""
    data: dict[str, Any] = {}
    for key in ("method", "criterion", "scope"):
        if key in query:
            data[key] = query[key]
    if "amount" in query:
        data["amount"] = _number(query["amount"], "amount")
    if query.get("layers"):
        layers = {}
        for item in query["layers"].split(","):
            name, sep, amount = item.rpartition(":")
            if not sep or not name:
                raise ValueError(f"layers must look like fc1:0.9,fc2:0.5; got {item!r}")
            layers[name] = _number(amount, f"amount of layer {name!r}")
        data["layers"] = layers
    if query.get("dense"):
        data["dense"] = query["dense"].split(",")
    if "norm" in query:
        data["norm"] = _number(query["norm"], "norm")
    if "nm" in query:
        n, sep, m = query["nm"].partition(":")
        if not (sep and n.isdigit() and m.isdigit()):
            raise ValueError(f"nm must look like 2:4, got {query['nm']!r}")
        data["nm"] = [int(n), int(m)]
    if "seed" in query:
        data["seed"] = int(_number(query["seed"], "seed", int))
    return PruningPlan.from_dict(data)
