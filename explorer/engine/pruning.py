"""Plans -> masks -> masked parameters, fast; the dense model is never modified.

Three layers, kept apart (as in Torch-Pruning):

- *scoring* — ``explorer.engine.importance`` criteria give scores, once per (model, criterion);
- *selection* — a ``Method`` (``explorer.engine.methods``) defines the units (weights, channels,
  heads) and turns a count into a keep-mask: a prefix of the unit's sorted order, so a new
  amount is a threshold pick, not a re-sort;
- *surgery* — ``explorer.engine.compaction`` removes what the masks zeroed.

Global scope ranks the units of all participating layers together; a layer with its own amount
is pruned by exactly that amount and leaves the global ranking; dense layers are never touched.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from explorer.engine.importance import ScoringContext, criteria_for, get_criterion
from explorer.engine.inspection import copy_model
from explorer.engine.limits import mask_cache_bytes
from explorer.engine.methods import METHODS, Method, Unit, get_method, plan_label
from explorer.engine.plan import PruningPlan
from explorer.engine.structure import ModelStructure
from explorer.zoo.mnist import ImageDataset

__all__ = [
    "METHODS",
    "Method",
    "PrunedState",
    "Pruner",
    "ScoreTable",
    "Unit",
    "get_method",
    "plan_label",
]


@dataclass(eq=False)
class ScoreTable:
    """Scores of every unit for one (method, criterion, norm, seed), sorted once."""

    units: list[Unit]
    scores: list[torch.Tensor]
    orders: list[torch.Tensor]
    #: Per unit, the ascending positions of its elements in the global ranking of all units.
    global_positions: list[torch.Tensor]

    def prefix_counts(self, length: int, units: list[int]) -> list[int]:
        """How many elements of each of ``units`` lie among the first ``length`` ranked."""
        return [int(torch.searchsorted(self.global_positions[i], length)) for i in units]


@dataclass(frozen=True, eq=False)
class PrunedState:
    """A plan resolved against a model: what is pruned, and the masked parameters.

    Attributes:
        plan: the plan.
        units: the method's units in graph order.
        pruned: number of pruned elements per unit name.
        keeps: bool keep-vector (unit.size,) per unit that lost anything.
        masks: 0/1 float mask per masked parameter name (parameters not listed are dense).
        parameters: ``dense * mask`` per masked parameter name.
        signatures: per masked parameter, a hashable key of what determined its mask.
        warnings: things the user should know (100% layers, skipped layers).
    """

    plan: PruningPlan
    units: list[Unit]
    pruned: dict[str, int]
    keeps: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor]
    parameters: dict[str, torch.Tensor]
    signatures: dict[str, Hashable]
    warnings: tuple[str, ...]

    def unit_sparsity(self) -> dict[str, float]:
        """Fraction of each unit's elements (weights, channels, heads) that is pruned."""
        return {u.name: self.pruned[u.name] / u.size if u.size else 0.0 for u in self.units}


def _nbytes(value: object) -> int:
    """Bytes held by the tensors in ``value`` (a tensor, or a dict / tuple of them)."""
    if isinstance(value, torch.Tensor):
        return value.element_size() * value.nelement()
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    if isinstance(value, tuple | list):
        return sum(_nbytes(v) for v in value)
    if isinstance(value, ScoreTable):
        return _nbytes((value.scores, value.orders, value.global_positions))
    return 0


class _LRU(OrderedDict):
    """Least-recently-used cache bounded by the bytes of the tensors it holds."""

    def __init__(self, budget_bytes: int) -> None:
        super().__init__()
        self.budget = budget_bytes
        self.used = 0

    def remember(self, key: Hashable, value: object) -> object:
        if key in self:
            self.used -= _nbytes(self.pop(key))
        self[key] = value
        self.used += _nbytes(value)
        while self.used > self.budget and len(self) > 1:
            _, evicted = self.popitem(last=False)
            self.used -= _nbytes(evicted)
        return value


class Pruner:
    """Resolves plans on one dense model, fast; never modifies it.

    Args:
        model: the dense model, in eval mode. It is read, never written.
        input_shape: shape of one input sample, e.g. (1, 28, 28).
        calibration: a batch of the fit split for data-dependent criteria (taylor, activation,
            apoz); ``None`` allows only magnitude and random.
    """

    def __init__(
        self,
        model: nn.Module,
        input_shape: tuple[int, ...],
        calibration: ImageDataset | None = None,
    ) -> None:
        self.model = model
        self.structure = ModelStructure(model, input_shape)
        self.context = ScoringContext(self.structure, calibration)
        self._units: dict[str, list[Unit]] = {}
        # One budget (PRUNING_EXPLORER_MASK_CACHE_MB) bounds memory per model: half for score
        # tables (a ResNet-18's unstructured table is ~220 MB, so a few criteria and seeds fit),
        # half for masks, where a few hundred recent amounts per layer fit easily.
        budget = mask_cache_bytes()
        self._tables = _LRU(budget // 2)
        self._keeps = _LRU(budget // 16)
        self._unit_masks = _LRU(budget * 3 // 16)
        self._param_masks = _LRU(budget // 4)
        self._lock = threading.RLock()

    # --- units ----------------------------------------------------------------------------------

    def units(self, method: str) -> list[Unit]:
        """The prunable units of ``method`` for this model, in graph order."""
        with self._lock:
            if method not in self._units:
                self._units[method] = get_method(method).units(self.structure)
            return self._units[method]

    # --- validation -----------------------------------------------------------------------------

    def check(self, plan: PruningPlan) -> list[str]:
        """Raise ValueError for a plan this model cannot take; return warnings otherwise."""
        method = get_method(plan.method)
        criterion = get_criterion(plan.criterion)
        units = {u.name: u for u in self.units(plan.method)}
        if not units:
            why = method.why_absent(self.structure)
            raise ValueError(
                f"this model has nothing that {method.title!r} can prune"
                + (f" ({why})" if why else "")
            )
        if method.unit_kind not in criterion.unit_kinds:
            usable = sorted(criteria_for(method.unit_kind))
            raise ValueError(
                f"criterion {criterion.name!r} cannot score {method.unit_kind} "
                f"(method {method.name!r}); choose one of {usable}"
            )
        if criterion.needs_data and self.context.calibration is None:
            raise ValueError(f"criterion {criterion.name!r} needs calibration data")
        layer_names = {layer.name for layer in self.structure.layers}
        for name in sorted(plan.unit_names()):
            if name in units:
                continue
            if name in layer_names:
                raise ValueError(
                    method.reason_unavailable(self.structure, name)
                    or f"layer {name!r} cannot be pruned by {method.name!r}"
                )
            raise ValueError(f"unknown unit {name!r}; choose one of {sorted(units)}")
        warnings = []
        for unit in units.values():
            reason = method.reason_left_dense(unit, plan)
            if reason and plan.amount_for(unit.name) > 0:
                if unit.name in plan.overrides:
                    raise ValueError(f"unit {unit.name!r} cannot take {plan.n}:{plan.m}: {reason}")
                warnings.append(f"{unit.name} left dense: {reason}")
        return warnings

    def adapt(self, plan: PruningPlan) -> tuple[PruningPlan, list[str]]:
        """``plan`` without the layer settings this model / method does not have, and the names
        dropped (for when the user switches model or method and keeps the rest of the plan)."""
        units = {u.name for u in self.units(plan.method)}
        dropped = sorted(plan.unit_names() - units)
        if not dropped:
            return plan, []
        layers = tuple((k, v) for k, v in plan.unit_amounts if k in units)
        dense = tuple(name for name in plan.dense_units if name in units)
        return replace(plan, unit_amounts=layers, dense_units=dense), dropped

    # --- scoring (once per method, criterion, norm, seed) ---------------------------------------

    def _table_key(self, plan: PruningPlan) -> tuple[Hashable, ...]:
        method = get_method(plan.method)
        return (
            plan.method,
            plan.criterion,
            plan.norm if method.structured else None,
            plan.seed if get_criterion(plan.criterion).seeded else None,
        )

    def score_table(self, plan: PruningPlan) -> ScoreTable:
        """Scores and sort orders for the plan's method and criterion (computed once)."""
        key = self._table_key(plan)
        with self._lock:
            if key not in self._tables:
                return self._tables.remember(key, self._build_table(plan))
            self._tables.move_to_end(key)
            return self._tables[key]

    def _build_table(self, plan: PruningPlan) -> ScoreTable:
        method, criterion = get_method(plan.method), get_criterion(plan.criterion)
        context = self.context.seeded(plan.seed)
        units = self.units(plan.method)
        scores = [method.scores(context, criterion, unit, plan.norm) for unit in units]
        orders = [torch.argsort(s, stable=True) for s in scores]
        ranked = [s / s.mean().clamp(min=1e-12) if method.normalize_globally else s for s in scores]
        ids = torch.cat([torch.full((len(s),), i, dtype=torch.int32) for i, s in enumerate(ranked)])
        ids_in_rank_order = ids[torch.argsort(torch.cat(ranked), stable=True)]
        positions = [torch.nonzero(ids_in_rank_order == i).flatten() for i in range(len(units))]
        return ScoreTable(units, scores, orders, positions)

    def unit_scores(self, plan: PruningPlan, unit: str) -> tuple[torch.Tensor, float | None]:
        """Scores of ``unit``'s elements under the plan's criterion (flat, (unit.size,)) and the
        threshold: the highest pruned score (None when nothing is pruned)."""
        state = self.resolve(plan)
        table = self.score_table(plan)
        index = next((i for i, u in enumerate(table.units) if u.name == unit), None)
        if index is None:
            raise ValueError(
                f"unknown unit {unit!r}; choose one of {[u.name for u in table.units]}"
            )
        scores = table.scores[index]
        keep = state.keeps.get(unit)
        if keep is None or bool(keep.all()):
            return scores, None
        return scores, float(scores[~keep].max())

    # --- selection ------------------------------------------------------------------------------

    def pruned_counts(self, plan: PruningPlan) -> dict[str, int]:
        """How many elements of each unit the plan prunes (exact: round(amount x size))."""
        method = get_method(plan.method)
        table = self.score_table(plan)
        counts = {}
        participating = torch.zeros(len(table.units), dtype=torch.bool)
        for i, unit in enumerate(table.units):
            if unit.name in plan.dense_units:
                counts[unit.name] = 0
            elif plan.scope == "layer" or not method.supports_global or unit.name in plan.overrides:
                counts[unit.name] = round(plan.amount_for(unit.name) * unit.size)
            else:
                participating[i] = True
        members = torch.nonzero(participating).flatten().tolist()
        if members:
            total = round(plan.amount * sum(table.units[i].size for i in members))
            # The smallest global prefix holding `total` participating elements: binary search
            # on its length (the ranking is fixed, so this is a threshold pick, not a sort).
            low, high = 0, sum(len(p) for p in table.global_positions)
            while low < high:
                middle = (low + high) // 2
                if sum(table.prefix_counts(middle, members)) >= total:
                    high = middle
                else:
                    low = middle + 1
            for i, count in zip(members, table.prefix_counts(low, members), strict=True):
                counts[table.units[i].name] = count
        return counts

    def _keep(self, plan: PruningPlan, key: Hashable, index: int, pruned: int) -> torch.Tensor:
        table = self.score_table(plan)
        cache_key = (key, index, pruned, plan.n, plan.m)
        if cache_key not in self._keeps:
            keep = get_method(plan.method).keep(
                table.orders[index], table.scores[index], pruned, plan
            )
            self._keeps.remember(cache_key, keep)
        return self._keeps[cache_key]

    def resolve(self, plan: PruningPlan) -> PrunedState:
        """Masks and masked parameters for ``plan``; raises ValueError for an invalid plan."""
        warnings = self.check(plan)
        method = get_method(plan.method)
        table_key = self._table_key(plan)
        with self._lock:
            table = self.score_table(plan)
            counts = self.pruned_counts(plan)
            contributions: dict[str, list[tuple[Hashable, torch.Tensor]]] = {}
            pruned: dict[str, int] = {}
            keeps: dict[str, torch.Tensor] = {}
            for index, unit in enumerate(table.units):
                count = counts[unit.name]
                if count and method.reason_left_dense(unit, plan):
                    count = 0
                if count == 0:
                    pruned[unit.name] = 0
                    continue
                keep = self._keep(plan, table_key, index, count)
                keeps[unit.name] = keep
                pruned[unit.name] = int((~keep).sum())  # a pattern can differ from ``count``
                mask_key = (table_key, unit.name, count, plan.n, plan.m)
                if mask_key not in self._unit_masks:
                    self._unit_masks.remember(mask_key, method.masks(self.structure, unit, keep))
                for param, mask in self._unit_masks[mask_key].items():
                    contributions.setdefault(param, []).append((mask_key, mask))
                if pruned[unit.name] == unit.size:
                    warnings.append(
                        f"{unit.name} is pruned 100%: "
                        + (
                            "every block of it is now its skip connection"
                            if unit.kind == "blocks"
                            else "the model still runs, but nothing flows through this "
                            "layer any more"
                        )
                    )
            masks, parameters, signatures = {}, {}, {}
            for param, parts in contributions.items():
                signature = tuple(key for key, _ in parts)
                if (param, signature) not in self._param_masks:
                    mask = parts[0][1]
                    for _, other in parts[1:]:
                        mask = mask * other
                    dense = self.structure.parameters[param].detach()
                    self._param_masks.remember(
                        (param, signature), (mask, dense * mask.to(dense.device))
                    )
                masks[param], parameters[param] = self._param_masks[(param, signature)]
                signatures[param] = signature
        return PrunedState(
            plan, table.units, pruned, keeps, masks, parameters, signatures, tuple(warnings)
        )

    # --- materialising ---------------------------------------------------------------------------

    def pruned_model(self, plan_or_state: PruningPlan | PrunedState) -> nn.Module:
        """A new model (deep copy) whose pruned weights are permanent zeros."""
        state = self.state_for(plan_or_state)
        model = copy_model(self.model)
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in state.parameters.items():
                params[name].copy_(value)
        return model

    def torch_pruned_model(self, plan_or_state: PruningPlan | PrunedState) -> nn.Module:
        """A deep copy pruned with ``torch.nn.utils.prune`` (``weight_orig`` + ``weight_mask``)."""
        state = self.state_for(plan_or_state)
        model = copy_model(self.model)
        modules = dict(model.named_modules())
        for name, mask in state.masks.items():
            module_name, _, param = name.rpartition(".")
            torch_prune.custom_from_mask(modules[module_name], param, mask)
        return model

    def state_for(self, plan_or_state: PruningPlan | PrunedState) -> PrunedState:
        """``plan_or_state`` resolved (a ``PrunedState`` is returned as it is)."""
        if isinstance(plan_or_state, PrunedState):
            return plan_or_state
        return self.resolve(plan_or_state)
