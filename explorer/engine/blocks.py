"""Whole blocks: residual blocks and transformer encoder blocks, found, measured and removed.

A removable block computes ``after(x + f(x))`` or ``after(skip(x) + f(x))``: a residual branch
``f`` added to a skip connection, and possibly something after the add (torchvision's and the
zoo's ResNet blocks apply a ReLU there). A transformer encoder block adds two branches in turn
(``x + attn(ln(x))``, then ``+ mlp(ln(x))``), with nothing after the adds.

**Removed = the block becomes its skip connection**, precisely: the residual branches are gone
and what the block does after its last add stays, so a removed block computes
``after(skip(x))``:

- torchvision ``BasicBlock`` / ``Bottleneck``: ``relu(x)``, or ``relu(downsample(x))`` when the
  block has a ``downsample``;
- the zoo's ``ResidualBlock``: ``relu(shortcut(x))`` (its shortcut is an identity or a 1x1 conv
  + BatchNorm);
- torchvision ``EncoderBlock`` and the zoo's ``TransformerBlock``: the identity.

The ReLU is kept because it is what the masked block computes (``relu(0 + skip(x))``); after
an identity skip it usually changes nothing (the block's input is a ReLU output already), but
keeping it makes the masked and the compacted model agree exactly for any input.

**Masked** (``branch`` of a ``Block``): every parameter of the block outside its skip module:
the convs, Linears, BatchNorm / LayerNorm weights and biases and attention projections of the
residual branches. With them all zero each branch outputs exactly 0 (a zeroed BatchNorm or
LayerNorm outputs 0 whatever its input; attention over all-zero q, k, v averages zero values;
GELU(0) = 0), so the masked model computes ``after(skip(x))`` exactly, in eval and in train
mode (batch statistics, as fine-tuning runs it), and the masked parameters are exactly those
that compaction removes (a masked model's parameter count then matches the compacted one's, and
so do its FLOPs for conv nets, whose FLOPs are all in weighted layers).

**Compacted** (``remove_blocks``): the block's module is replaced by ``nn.Identity`` when the
removed block is the identity, else by a ``SkipBlock`` holding the block's own skip module
under its own attribute name (so the surviving parameters keep their names) and a fresh,
not-in-place ReLU.

Blocks are recognised by class through a registry of ``BlockKind`` (class -> where its skip is,
what follows the add); a subclass counts only if it keeps the registered class's ``forward``.
Blocks inside a removable block are not offered on their own (they go with it). A transformer
block's two branches are not offered separately: it goes whole.

**Units** (``BlockStage``, the ``blocks`` method's unit): the blocks one module holds side by
side, e.g. torchvision ResNet's ``layer1`` .. ``layer4`` or its ViT's ``encoder.layers``; the
zoo's models hold theirs at the top, so their stage is named ``block1..block3``. A layer-wise
amount removes ``round(amount x blocks)`` of a stage; the global amount ranks all blocks.

**Scores** (``explorer.engine.importance``): weight criteria (magnitude, taylor) take the Ln mean of
their scores over a block's ``weights``; ``branch`` is ``removal_changes`` (the residual
branch's output relative to the skip's); ``ablation`` is ``removal_losses`` (the loss rise
without the block); ``random`` the baseline.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.models.vision_transformer import EncoderBlock

from explorer.zoo.models import ResidualBlock, TransformerBlock

__all__ = [
    "BLOCK_KINDS",
    "Block",
    "BlockKind",
    "BlockStage",
    "SkipBlock",
    "block_kind",
    "find_block_stages",
    "register_block_kind",
    "removal_changes",
    "removal_losses",
    "remove_blocks",
    "removed_form",
]


@dataclass(frozen=True)
class BlockKind:
    """How one class of block adds its residual branches to its skip connection.

    Attributes:
        title: the kind in words.
        base: the class. A subclass counts only if it keeps this class's ``forward``.
        skip: the attribute holding the skip module; None, or the attribute being None, means
            the skip is the identity.
        after_add: builds what the block applies after its last add (a new module, e.g.
            ``nn.ReLU``), or None when the sum is the block's output.
    """

    title: str
    base: type[nn.Module]
    skip: str | None = None
    after_add: Callable[[], nn.Module] | None = None


#: Removable block kinds by class; add one with ``register_block_kind``.
BLOCK_KINDS: dict[type[nn.Module], BlockKind] = {}


def register_block_kind(kind: BlockKind) -> BlockKind:
    """Make blocks of ``kind.base`` removable."""
    BLOCK_KINDS[kind.base] = kind
    return kind


for _kind in (
    BlockKind("residual block", ResidualBlock, skip="shortcut", after_add=nn.ReLU),
    BlockKind("transformer block", TransformerBlock),
    BlockKind("torchvision BasicBlock", BasicBlock, skip="downsample", after_add=nn.ReLU),
    BlockKind("torchvision Bottleneck", Bottleneck, skip="downsample", after_add=nn.ReLU),
    BlockKind("torchvision EncoderBlock", EncoderBlock),
):
    register_block_kind(_kind)


def block_kind(module: nn.Module) -> BlockKind | None:
    """The registered kind of ``module``, or None (also for a subclass with its own forward)."""
    for cls in type(module).__mro__:
        kind = BLOCK_KINDS.get(cls)
        if kind is not None:
            return kind if type(module).forward is cls.forward else None
    return None


@dataclass(frozen=True, eq=False)
class Block:
    """One removable block of a model.

    Attributes:
        name: its module name, e.g. ``"layer2.0"``.
        kind: its ``BlockKind``.
        skip: module name of its skip connection, or None when the skip is the identity.
        branch: names of the parameters of its residual branches (every parameter of the
            block outside ``skip``): zeroed when the block is removed.
        weights: the parameters of ``branch`` with two or more dimensions (conv kernels,
            Linear and attention projection matrices): what weight criteria score.
        layers: the Linear / Conv2d layers of the branches that the forward pass runs.
    """

    name: str
    kind: BlockKind
    skip: str | None
    branch: tuple[str, ...]
    weights: tuple[str, ...]
    layers: tuple[str, ...]


@dataclass(frozen=True, eq=False)
class BlockStage:
    """The removable blocks one module holds side by side: a plan's unit of whole blocks.

    Attributes:
        name: the holding module (``"layer1"``, ``"encoder.layers"``); for blocks held by the
            model itself, the first block's name, or ``"first..last"`` for several.
        blocks: the blocks, in the order the holder lists them.
    """

    name: str
    blocks: tuple[Block, ...]

    @property
    def size(self) -> int:
        return len(self.blocks)

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(layer for block in self.blocks for layer in block.layers)


def _block(name: str, module: nn.Module, kind: BlockKind, layers: Collection[str]) -> Block:
    skip_module = getattr(module, kind.skip, None) if kind.skip else None
    skip_prefix = f"{kind.skip}." if isinstance(skip_module, nn.Module) else None
    branch, weights = [], []
    for local, param in module.named_parameters():
        if skip_prefix and local.startswith(skip_prefix):
            continue
        branch.append(f"{name}.{local}")
        if param.dim() >= 2:
            weights.append(f"{name}.{local}")
    inner = [
        f"{name}.{local}"
        for local, child in module.named_modules()
        if local and not (skip_prefix and local.startswith(skip_prefix))
    ]
    return Block(
        name,
        kind,
        f"{name}.{kind.skip}" if skip_prefix else None,
        tuple(branch),
        tuple(weights),
        tuple(layer for layer in inner if layer in layers),
    )


def find_block_stages(model: nn.Module, layers: Collection[str]) -> list[BlockStage]:
    """Every removable block of ``model`` that the forward pass runs, grouped by holder.

    Args:
        model: the model (read, never changed).
        layers: names of the Linear / Conv2d layers the forward pass runs (a block with none
            of them in its branches is not offered: removing it would change nothing).
    """
    by_holder: dict[str, list[Block]] = {}
    taken: list[str] = []
    for name, module in model.named_modules():
        # Pre-order: a block inside a removable block comes after it and goes with it.
        if not name or any(name.startswith(f"{outer}.") for outer in taken):
            continue
        kind = block_kind(module)
        if kind is None:
            continue
        block = _block(name, module, kind, layers)
        if not block.layers:
            continue
        taken.append(name)
        by_holder.setdefault(name.rpartition(".")[0], []).append(block)
    stages = []
    for holder, blocks in by_holder.items():
        if holder:
            stage_name = holder
        elif len(blocks) == 1:
            stage_name = blocks[0].name
        else:
            stage_name = f"{blocks[0].name}..{blocks[-1].name}"
        stages.append(BlockStage(stage_name, tuple(blocks)))
    return stages


class SkipBlock(nn.Module):
    """What a removed block becomes when that is more than the identity: ``after(skip(x))``.

    The skip module is held under the attribute name the block gave it (e.g. ``downsample``),
    so that its parameters keep their names; ``after`` is what followed the block's last add.
    """

    def __init__(
        self, skip: nn.Module | None, after: nn.Module | None, skip_name: str = "skip"
    ) -> None:
        super().__init__()
        self.skip_name = skip_name
        self.add_module(skip_name, skip if skip is not None else nn.Identity())
        self.after = after if after is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.after(self._modules[self.skip_name](x))


def removed_form(block: Block, module: nn.Module) -> nn.Module:
    """The module that computes what ``module`` (the block ``block`` names) computes once
    removed: ``nn.Identity``, or a ``SkipBlock`` sharing ``module``'s skip module."""
    kind = block.kind
    skip = getattr(module, kind.skip, None) if kind.skip else None
    after = kind.after_add() if kind.after_add is not None else None
    if skip is None and after is None:
        return nn.Identity()
    return SkipBlock(skip, after, kind.skip or "skip")


def remove_blocks(model: nn.Module, blocks: Sequence[Block]) -> nn.Module:
    """Replace each of ``blocks`` in ``model`` (in place) by its ``removed_form``; returns it."""
    for block in blocks:
        holder, _, leaf = block.name.rpartition(".")
        parent = model.get_submodule(holder)
        setattr(parent, leaf, removed_form(block, parent.get_submodule(leaf)))
    return model


@torch.no_grad()
def removal_changes(
    model: nn.Module, blocks: Sequence[Block], images: torch.Tensor
) -> dict[str, float]:
    """How much each block's output would change if it alone were removed, relative to what it
    would output then: ``||block(x) - removed(x)|| / ||removed(x)||``, with ``x`` the input the
    block gets when ``model`` runs ``images`` (Frobenius norms over the whole batch).

    Without anything after the add (transformer blocks) this is ``||f(x)|| / ||skip(x)||``,
    the residual branch's share; after a ReLU it is the part of ``f(x)`` that survives it.

    Args:
        model: the model whose blocks ``blocks`` names; forward hooks are added for the call
            and removed after (pass a private copy when others may run the model meanwhile).
        blocks: the blocks to measure.
        images: a batch (N, C, H, W), e.g. calibration images of the fit split.

    Returns:
        block name -> the relative change (>= 0; large when ``removed(x)`` is ~0).
    """
    changes: dict[str, float] = {}

    def hook_for(block: Block) -> Callable[[nn.Module, tuple, torch.Tensor], None]:
        def measure(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            removed = removed_form(block, module)(inputs[0])
            change = (output.float() - removed.float()).norm()
            changes[block.name] = float(change / removed.float().norm().clamp(min=1e-12))

        return measure

    handles = [model.get_submodule(b.name).register_forward_hook(hook_for(b)) for b in blocks]
    try:
        model(images.to(next(model.parameters()).device))
    finally:
        for handle in handles:
            handle.remove()
    return changes


@torch.no_grad()
def removal_losses(
    model: nn.Module, blocks: Sequence[Block], images: torch.Tensor, labels: torch.Tensor
) -> dict[str, float]:
    """How much the mean cross-entropy on ``(images, labels)`` rises when each block alone is
    removed (replaced by its ``removed_form``): an ablation, one forward pass per block.

    Args:
        model: a classifier whose blocks ``blocks`` names. It is changed during the call (one
            block at a time) and restored after: pass a private copy.
        blocks: the blocks to measure.
        images, labels: a batch (N, C, H, W) and its labels (N,), e.g. calibration data.

    Returns:
        block name -> loss without the block minus the loss of ``model`` (may be negative).
    """
    device = next(model.parameters()).device
    x, y = images.to(device), labels.to(device)
    dense = F.cross_entropy(model(x), y)
    rises: dict[str, float] = {}
    for block in blocks:
        holder, _, leaf = block.name.rpartition(".")
        parent = model.get_submodule(holder)
        original = parent.get_submodule(leaf)
        setattr(parent, leaf, removed_form(block, original))
        try:
            rises[block.name] = float(F.cross_entropy(model(x), y) - dense)
        finally:
            setattr(parent, leaf, original)
    return rises
