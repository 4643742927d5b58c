"""What a pruned model costs: parameters, sparsity per layer, FLOPs, size on disk."""

from __future__ import annotations

import io
import weakref
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from explorer.engine.pruning import PrunedState, Pruner


@dataclass(frozen=True)
class LayerCost:
    """One prunable layer under a plan.

    Attributes:
        name: layer name.
        weights: weight entries.
        nonzero: weight entries that are not zero.
        flops_dense: FLOPs of the dense layer for one sample.
        flops_effective: FLOPs counting only multiply-adds with a nonzero weight.
    """

    name: str
    weights: int
    nonzero: int
    flops_dense: int
    flops_effective: int

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzero / self.weights if self.weights else 0.0


@dataclass(frozen=True)
class ModelCost:
    """Counts for a whole model under a plan (FLOPs per sample; bytes of a torch.save)."""

    params_total: int
    params_nonzero: int
    flops_dense: int
    flops_effective: int
    layers: tuple[LayerCost, ...]

    @property
    def sparsity(self) -> float:
        """Fraction of all parameters that are zero."""
        return 1.0 - self.params_nonzero / self.params_total

    @property
    def prunable_sparsity(self) -> float:
        """Fraction of the prunable layers' weights that are zero."""
        weights = sum(layer.weights for layer in self.layers)
        return 1.0 - sum(layer.nonzero for layer in self.layers) / weights


def model_cost(pruner: Pruner, state: PrunedState | None = None) -> ModelCost:
    """Parameter counts and FLOPs of the dense model with ``state``'s masks applied."""
    structure = pruner.structure
    masked = state.parameters if state is not None else {}
    dense_counts = _dense_nonzero(structure)
    # Each masked tensor is counted once (a ResNet-18 has 11M entries: this runs on every move).
    nonzero = {
        name: int(torch.count_nonzero(masked[name])) if name in masked else count
        for name, count in dense_counts.items()
    }
    params_total = sum(p.numel() for p in structure.parameters.values())
    params_nonzero = sum(nonzero.values())
    layers = []
    for layer in structure.layers:
        weight = structure.parameters[f"{layer.name}.weight"]
        count = nonzero[f"{layer.name}.weight"]
        density = count / weight.numel()
        layers.append(
            LayerCost(layer.name, weight.numel(), count, layer.flops, round(layer.flops * density))
        )
    flops_dense = structure.total_flops
    saved = sum(layer.flops_dense - layer.flops_effective for layer in layers)
    return ModelCost(params_total, params_nonzero, flops_dense, flops_dense - saved, tuple(layers))


_DENSE_NONZERO: weakref.WeakKeyDictionary[object, dict[str, int]] = weakref.WeakKeyDictionary()


def _dense_nonzero(structure: object) -> dict[str, int]:
    """Nonzero entries of each dense parameter, counted once per model (it never changes)."""
    if structure not in _DENSE_NONZERO:
        _DENSE_NONZERO[structure] = {
            name: int(torch.count_nonzero(param)) for name, param in structure.parameters.items()
        }
    return _DENSE_NONZERO[structure]


def _saved_bytes(obj: object) -> int:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getbuffer().nbytes


def sparse_encoding(tensor: torch.Tensor) -> dict[str, torch.Tensor | tuple[int, ...]]:
    """A tensor as a packed bitmap of its nonzeros plus their values (1 bit per entry)."""
    flat = tensor.detach().cpu().flatten()
    nonzero = flat != 0
    bitmap = torch.from_numpy(np.packbits(nonzero.numpy()))
    return {"shape": tuple(tensor.shape), "bitmap": bitmap, "values": flat[nonzero].clone()}


def decode_sparse(encoded: dict[str, torch.Tensor | tuple[int, ...]]) -> torch.Tensor:
    """Inverse of ``sparse_encoding``."""
    shape = tuple(encoded["shape"])
    count = int(np.prod(shape)) if shape else 1
    bits = np.unpackbits(encoded["bitmap"].numpy())[:count].astype(bool)
    flat = torch.zeros(count, dtype=encoded["values"].dtype)
    flat[torch.from_numpy(bits)] = encoded["values"]
    return flat.reshape(shape)


_DENSE_BYTES: weakref.WeakKeyDictionary[nn.Module, int] = weakref.WeakKeyDictionary()


def _dense_bytes(model: nn.Module) -> int:
    """Bytes of the dense state_dict, saved once per model (the app never modifies it)."""
    if model not in _DENSE_BYTES:
        _DENSE_BYTES[model] = _saved_bytes(model.state_dict())
    return _DENSE_BYTES[model]


@dataclass(frozen=True)
class SizeReport:
    """Bytes of ``torch.save`` for the dense, the sparse-encoded and the compacted model."""

    dense: int
    sparse: int
    compacted: int | None


def size_report(
    model: nn.Module, state: PrunedState | None, compacted: nn.Module | None = None
) -> SizeReport:
    """Serialised sizes: the dense state_dict; the pruned one with every tensor that is at least
    half zeros stored as bitmap + values; the compacted model's state_dict if there is one."""
    dense_state = model.state_dict()
    dense_bytes = _dense_bytes(model)
    masked = state.parameters if state is not None else {}
    encoded: dict[str, object] = {}
    for name, value in dense_state.items():
        value = masked.get(name, value)
        sparse = (
            value.is_floating_point()
            and value.numel() >= 64
            and int(torch.count_nonzero(value)) * 2 <= value.numel()
        )
        encoded[name] = sparse_encoding(value) if sparse else value
    return SizeReport(
        dense_bytes,
        _saved_bytes(encoded),
        _saved_bytes(compacted.state_dict()) if compacted is not None else None,
    )
