"""Accuracy-vs-sparsity sweeps: a plan evaluated at global amounts 0 to 95%, kept point by point
so that an interrupted sweep resumes, and labelled so that sweeps of several methods,
criteria, seeds and scopes can be overlaid on one chart.

The sweeps live in a plain dict that the caller keeps (the app: its session state), of the
form ``{key: {"label": str, "points": {amount: (sparsity, accuracy)}, "color": str}}``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, MutableMapping
from typing import Any

from explorer.engine.methods import get_method, plan_label
from explorer.engine.plan import PruningPlan, plan_from_query, plan_to_query
from explorer.engine.workbench import Workbench
from explorer.plots import CurveSeries
from explorer.plots.common import SERIES_COLORS, assign_series_color

#: The global amounts of a sweep: 0%, 5%, ... 95%.
SWEEP_AMOUNTS = tuple(a / 20 for a in range(20))


def can_sweep(plan: PruningPlan) -> bool:
    """Whether ``plan`` has a global amount to sweep (an N:M pattern fixes its sparsity)."""
    return not get_method(plan.method).amount_is_switch


def sweep_key(plan: PruningPlan) -> str:
    """A sweep is the plan with its global amount varied: the plan at amount 0 names it."""
    return plan.with_amount(0.0).to_json(indent=None)


def sweep_label(plan: PruningPlan) -> str:
    """The sweep in a few words: method, criterion (and seed), scope; no amount."""
    return plan_label(plan, amount=False)


# A link carries the sweeps on a chart as ``sweeps=method=magnitude;scope=global~method=random``:
# one plan query (``plan_to_query`` without the amount) per sweep, its fields joined by ";" and
# the sweeps by "~" -- characters that no plan field's value (names, numbers, "fc1:0.9,fc2:0.5")
# holds, so the link stays readable.
_FIELD_SEPARATOR, _SWEEP_SEPARATOR = ";", "~"


def sweeps_to_query(plans: Iterable[PruningPlan]) -> str:
    """The sweeps of ``plans`` (their amounts ignored) as one URL query value."""
    parts = []
    for plan in plans:
        query = plan_to_query(plan.with_amount(0.0))
        del query["amount"]
        parts.append(_FIELD_SEPARATOR.join(f"{key}={value}" for key, value in query.items()))
    return _SWEEP_SEPARATOR.join(parts)


def sweeps_from_query(text: str) -> list[PruningPlan]:
    """Inverse of ``sweeps_to_query``: the plans at amount 0, one per sweep, duplicates dropped;
    a ValueError naming the sweep that cannot be read."""
    plans: list[PruningPlan] = []
    for number, part in enumerate(filter(None, text.split(_SWEEP_SEPARATOR)), start=1):
        query = {}
        for item in filter(None, part.split(_FIELD_SEPARATOR)):
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"sweep {number} ({part!r}): {item!r} is not key=value")
            query[key] = value
        try:
            plan = plan_from_query(query).with_amount(0.0)
            sweepable = can_sweep(plan)  # also checks that the method exists
        except ValueError as err:
            raise ValueError(f"sweep {number} ({part!r}): {err}") from None
        if not sweepable:
            raise ValueError(f"sweep {number} ({part!r}): {plan.method} has no amount to sweep")
        if plan not in plans:
            plans.append(plan)
    return plans


def _color_index(color: object) -> int | None:
    return SERIES_COLORS.index(color) if color in SERIES_COLORS else None


class Sweeps:
    """The sweeps of one subject, kept in ``store`` (see the module docstring).

    Args:
        store: the caller's dict; entries are added and filled in place.
        amounts: the global amounts every sweep is evaluated at.
    """

    def __init__(
        self,
        store: MutableMapping[str, dict[str, Any]],
        amounts: tuple[float, ...] = SWEEP_AMOUNTS,
    ) -> None:
        self.store, self.amounts = store, amounts

    def entry(self, plan: PruningPlan) -> dict[str, Any]:
        """The sweep of ``plan``, started (no points yet) if there was none. A new sweep gets
        its colour for good: the one its label hashes to, unless a kept sweep has it."""
        key = sweep_key(plan)
        if key not in self.store:
            label = sweep_label(plan)
            taken = (entry.get("color") for entry in self.store.values())
            self.store[key] = {
                "label": label,
                "points": {},
                "color": SERIES_COLORS[assign_series_color(label, map(_color_index, taken))],
            }
        return self.store[key]

    def missing(self, plan: PruningPlan) -> list[float]:
        """The amounts of ``plan``'s sweep still to evaluate, in order."""
        points = self.entry(plan)["points"]
        return [amount for amount in self.amounts if amount not in points]

    def fill(
        self, bench: Workbench, plan: PruningPlan, *more: PruningPlan
    ) -> Iterator[tuple[int, int]]:
        """Evaluate the missing points of the sweeps of ``plan`` (and ``more``) one by one, each
        stored as soon as it is known, so that a sweep abandoned half-way (the app's user moved
        on) resumes where it was. Yields (points done, points to do) after each."""
        todo = [(p, amount) for p in (plan, *more) for amount in self.missing(p)]
        for done, (each, amount) in enumerate(todo, start=1):
            self.entry(each)["points"][amount] = bench.curve(each, [amount])[0]
            yield done, len(todo)

    def complete(self) -> dict[str, dict[str, Any]]:
        """The sweeps with every point, in the order they were started."""
        return {
            key: entry
            for key, entry in self.store.items()
            if all(amount in entry["points"] for amount in self.amounts)
        }

    def others(self, plan: PruningPlan) -> list[str]:
        """Keys of the complete sweeps other than ``plan``'s, in the order they were started."""
        this = sweep_key(plan)
        return [key for key in self.complete() if key != this]

    def label(self, key: str) -> str:
        return self.store[key]["label"]

    def series(self, keys: Iterable[str]) -> list[CurveSeries]:
        """The chart's lines for the sweeps ``keys`` (complete ones), in that order."""
        lines = []
        for key in keys:
            entry = self.store[key]
            points = [entry["points"][amount] for amount in self.amounts]
            lines.append(
                CurveSeries(
                    entry["label"],
                    [s for s, _ in points],
                    [a for _, a in points],
                    entry.get("color"),
                )
            )
        return lines

    def forget(self, keys: Iterable[str]) -> None:
        """Drop the sweeps ``keys`` (any that are gone already are ignored)."""
        for key in keys:
            self.store.pop(key, None)
