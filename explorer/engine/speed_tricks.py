"""Speed tricks that must never change what runs: BatchNorm folding and channels_last memory.

oneDNN's CPU convolutions run 1.2-2x faster in ``channels_last`` memory, and a BatchNorm folded
into the convolution before it saves a pass over the activations. Both are only *equivalent*
on models that never look at memory layout: ``x.view(x.size(0), -1)`` after a convolution, the
most common flatten in PyTorch tutorials, cannot run on a channels_last tensor, and torch.fx
folding can misread a model whose BatchNorm is applied twice or which branches on its input.

So a trick is never assumed: ``checked_copy`` builds the candidate, runs it once on a probe
batch and keeps it only where it runs and its outputs match the plain model's within float
rounding. Otherwise it steps back (fewer tricks, down to a plain copy) and says why in
``Tricks.notes``. Evaluation, latency timing and int8 all go through here.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn

from explorer.engine.inspection import copy_model, has_conv2d

try:  # torch's own conv+BatchNorm folding for eval-mode models
    from torch.fx.experimental.optimization import fuse as _fuse_conv_bn
except ImportError:  # pragma: no cover - very old torch
    _fuse_conv_bn = None

#: Largest logit difference a trick may make, relative to the largest logit (float rounding of
#: a reordered sum is ~1e-6; a real change of computation is far larger).
RELATIVE_TOLERANCE = 1e-4
#: Samples in the probe batch (two, so that batch-dependent code paths show up).
PROBE_SAMPLES = 2


@dataclass(frozen=True)
class Tricks:
    """Which speed tricks a copy uses, and why any was left out.

    Attributes:
        folded: BatchNorm layers were folded into the convolutions before them.
        channels_last: weights (and inputs, through ``prepare_input``) are channels_last.
        notes: one sentence per trick left out, naming the reason (empty when none was).
    """

    folded: bool = False
    channels_last: bool = False
    notes: tuple[str, ...] = ()

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in the memory layout this copy runs fastest in."""
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x


def fold_batchnorm(model: nn.Module) -> nn.Module | None:
    """An eval-mode copy with BatchNorm folded into the preceding convolutions by torch.fx, or
    None where fx cannot trace the model (dynamic control flow, ``len(x)``) or finds nothing to
    fold. Unchecked: ``checked_copy`` compares it with the model before it is used."""
    if _fuse_conv_bn is None or not any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()
    ):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _fuse_conv_bn(copy_model(model).eval(), inplace=True).eval()
    except Exception:  # untraceable: the model keeps its BatchNorm
        return None


def _outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(x)
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"the model returned a {type(out).__name__}, not a tensor")
    return out.detach().float()


def _why_different(got: torch.Tensor, expected: torch.Tensor) -> str | None:
    """None when ``got`` equals ``expected`` up to float rounding, else what differs."""
    if got.shape != expected.shape:
        return f"it gives outputs of shape {tuple(got.shape)}, not {tuple(expected.shape)}"
    if not torch.isfinite(got).all() and torch.isfinite(expected).all():
        return "it gives NaN or infinite outputs"
    scale = max(float(expected.abs().max()), 1e-6)
    error = float((got - expected).abs().max())
    if error > RELATIVE_TOLERANCE * scale:
        return f"its outputs differ by {error:.2g} (largest output {scale:.2g})"
    return None


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:160]}" if text else type(err).__name__


def checked_copy(
    model: nn.Module,
    probe: torch.Tensor,
    *,
    fold: bool = True,
    channels_last: bool = True,
) -> tuple[nn.Module, Tricks]:
    """A copy of ``model`` (eval mode) with the requested tricks that keep its outputs.

    Candidates are tried from the most tricks to none: folded + channels_last, channels_last,
    folded, plain. The first whose outputs on ``probe`` match the plain model's is returned.
    ``model`` itself is never modified.

    Args:
        model: the model, in eval mode.
        probe: a batch of inputs (a couple of real or random samples), on the model's device.
        fold: try folding BatchNorm into convolutions.
        channels_last: try channels_last memory (only conv nets can gain from it).
    """
    probe = probe[:PROBE_SAMPLES]
    expected = _outputs(model, probe)
    channels_last = channels_last and has_conv2d(model) and probe.dim() == 4
    folded = fold_batchnorm(model) if fold else None
    failures: dict[tuple[bool, bool], str] = {}
    chosen: tuple[nn.Module, Tricks] | None = None
    for use_fold in (True, False) if folded is not None else (False,):
        for use_cl in (True, False) if channels_last else (False,):
            if not use_fold and not use_cl:
                continue  # the plain copy needs no check
            tricks = Tricks(use_fold, use_cl)
            candidate = copy_model(folded if use_fold else model).eval()
            if use_cl:
                candidate = candidate.to(memory_format=torch.channels_last)
            try:
                why = _why_different(_outputs(candidate, tricks.prepare_input(probe)), expected)
            except Exception as err:  # e.g. .view after a conv on a channels_last tensor
                why = f"it fails: {_first_line(err)}"
            if why is None:
                chosen = candidate, tricks
                break
            failures[(use_fold, use_cl)] = why
        if chosen is not None:
            break
    if chosen is None:
        chosen = copy_model(model).eval(), Tricks()
    copied, tricks = chosen
    notes = []
    if channels_last and not tricks.channels_last:
        why = failures.get((tricks.folded, True), "")
        notes.append(f"Runs in the plain memory layout: in channels_last {why.rstrip('.')}.")
    if folded is not None and not tricks.folded:
        why = failures.get((True, tricks.channels_last), "")
        notes.append(f"Runs with its BatchNorm layers unfolded: folded, {why.rstrip('.')}.")
    return copied, Tricks(tricks.folded, tricks.channels_last, tuple(notes))


__all__ = ["Tricks", "checked_copy", "fold_batchnorm"]
