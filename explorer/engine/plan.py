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
PLAN_FIELDS = ("method", "criterion", "scope", "amount", "units", "dense", "norm", "nm", "seed")
#: 2: per-unit amounts are "units" (a structured unit spans several layers); version 1 called
#: them "layers", and plans, links and experiments saved then still read.
PLAN_VERSION = 2
#: Names of version 1 that still read, as (old, new): in JSON and in links.
RENAMED_FIELDS = {"layers": "units"}
#: Every key a link may carry a plan in, old names included.
QUERY_KEYS = (*PLAN_FIELDS, *RENAMED_FIELDS)


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
        scope: ``"global"`` ranks units of all layers together; ``"layer"`` prunes each unit
            by its own amount.
        amount: the global fraction to prune, in [0, 1] (of weights, channels or heads).
        unit_amounts: per-unit overrides ``(name, amount)``, sorted by name; a unit is what
            the method prunes by (a layer, a coupled channel group, a block): an overridden
            unit is pruned by exactly its own amount and leaves the global ranking.
        dense_units: units left untouched, sorted.
        norm: the p of the Ln norm that turns element scores into channel / head scores.
        n, m: the N:M pattern (keep n of every m consecutive weights) for the ``nm`` method.
        seed: seed of the ``random`` criterion.
    """

    method: str = "unstructured"
    criterion: str = "magnitude"
    scope: str = "global"
    amount: float = 0.0
    unit_amounts: tuple[tuple[str, float], ...] = ()
    dense_units: tuple[str, ...] = ()
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
        for name, amount in dict(self.unit_amounts).items():
            overrides[str(name)] = check_amount(amount, f"amount of unit {name!r}")
        set_(self, "unit_amounts", tuple(sorted(overrides.items())))
        set_(self, "_overrides", overrides)
        set_(self, "dense_units", tuple(sorted(set(map(str, self.dense_units)))))
        if not (_is_number(self.norm) and 0 < self.norm < math.inf):
            raise ValueError(f"norm must be a positive number (1 = L1, 2 = L2), got {self.norm!r}")
        if not (_is_whole(self.n) and _is_whole(self.m) and 0 < self.n < self.m):
            raise ValueError(f"N:M needs whole numbers 0 < N < M, got {self.n}:{self.m}")

    # --- queries --------------------------------------------------------------------------------

    def amount_for(self, unit: str) -> float:
        """The amount that applies to ``unit`` in layer-wise scope (override, dense, or global)."""
        if unit in self.dense_units:
            return 0.0
        return self._overrides.get(unit, self.amount)

    @property
    def overrides(self) -> Mapping[str, float]:
        return self._overrides

    def unit_names(self) -> set[str]:
        """Every unit the plan names (overrides and dense units)."""
        return set(self._overrides) | set(self.dense_units)

    # --- edits return new plans ------------------------------------------------------------------

    def with_amount(self, amount: float) -> PruningPlan:
        return replace(self, amount=amount)

    def with_unit(self, unit: str, amount: float) -> PruningPlan:
        """A copy in which ``unit`` is pruned by exactly ``amount``."""
        return replace(self, unit_amounts=tuple({**self._overrides, unit: amount}.items()))

    def without_unit(self, unit: str) -> PruningPlan:
        """A copy in which ``unit`` follows the global amount again."""
        rest = {k: v for k, v in self._overrides.items() if k != unit}
        return replace(self, unit_amounts=tuple(rest.items()))

    def with_dense(self, unit: str, dense: bool = True) -> PruningPlan:
        units = set(self.dense_units) | {unit} if dense else set(self.dense_units) - {unit}
        return replace(self, dense_units=tuple(units))

    def with_global_everywhere(self) -> PruningPlan:
        """Drop every per-unit override: all units follow the global amount."""
        return replace(self, unit_amounts=())

    # --- plain data -----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": PLAN_VERSION,
            "method": self.method,
            "criterion": self.criterion,
            "scope": self.scope,
            "amount": self.amount,
            "units": dict(self.unit_amounts),
            "dense": list(self.dense_units),
            "norm": self.norm,
            "nm": [self.n, self.m],
            "seed": self.seed,
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PruningPlan:
        """A plan from ``to_dict`` output; every key is optional; unknown keys are an error.
        A plan of version 1 (per-unit amounts under "layers") reads as well."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a plan must be a JSON object, got {type(data).__name__}")
        data = _current_names(data)
        known = {"version", *PLAN_FIELDS}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown plan field(s) {unknown}; a plan has {sorted(known)}")
        units = data.get("units", {})
        if not isinstance(units, Mapping):
            raise ValueError('"units" must map unit names to amounts, e.g. {"fc1": 0.9}')
        dense = data.get("dense", [])
        if isinstance(dense, str) or not isinstance(dense, list | tuple):
            raise ValueError('"dense" must be a list of unit names, e.g. ["fc3"]')
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
            unit_amounts=tuple(units.items()),
            dense_units=tuple(dense),
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


def _current_names(data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` with the field names of this version: a plan of version 1 (or one without a
    version that uses the old names, as hand-written plans do) has its renamed fields moved."""
    version = data.get("version", PLAN_VERSION)
    if version not in (1, PLAN_VERSION):
        raise ValueError(
            f"plan version {version!r} is not supported (this is version {PLAN_VERSION}; "
            "version 1 reads too)"
        )
    current = {k: v for k, v in data.items() if k != "version"}
    for old, new in RENAMED_FIELDS.items():
        if old not in current:
            continue
        if version == PLAN_VERSION and "version" in data:
            raise ValueError(f'"{old}" is "{new}" since plan version {PLAN_VERSION}')
        if new in current:
            raise ValueError(f'give "{new}" or its old name "{old}", not both')
        current[new] = current.pop(old)
    return current


# --- URL query parameters -----------------------------------------------------------------------


def plan_to_query(plan: PruningPlan) -> dict[str, str]:
    """The plan as short, readable URL query parameters (defaults left out).

    ``units=fc1:0.9,fc2:0.5`` and ``dense=fc3,conv1`` carry the per-unit parts (links made
    before version 2 say ``layers=``: they still open).
    """
    default = PruningPlan()
    query = {
        "method": plan.method,
        "criterion": plan.criterion,
        "scope": plan.scope,
        "amount": f"{plan.amount:g}",
    }
    if plan.unit_amounts:
        query["units"] = ",".join(f"{name}:{amount:g}" for name, amount in plan.unit_amounts)
    if plan.dense_units:
        query["dense"] = ",".join(plan.dense_units)
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
    for key in ("units", *(old for old, new in RENAMED_FIELDS.items() if new == "units")):
        if not query.get(key):
            continue
        units = {}
        for item in query[key].split(","):
            name, sep, amount = item.rpartition(":")
            if not sep or not name:
                raise ValueError(f"{key} must look like fc1:0.9,fc2:0.5; got {item!r}")
            units[name] = _number(amount, f"amount of unit {name!r}")
        data["units"] = {**data.get("units", {}), **units}
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
