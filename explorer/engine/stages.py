"""Cut a model's forward pass into stages that evaluation can resume from.

Incremental re-evaluation keeps, for every chunk of the eval data, the input of every stage from
the last pass; a plan that changes only parameters of stage k onward then resumes there. A
stage boundary is only possible where exactly one value crosses it (a ResNet's block outputs,
not the middle of a block, where the residual branch is still alive), and every boundary costs
memory: one stored activation per eval image. So:

- an ``nn.Sequential`` is cut between its children (the bundled models);
- any other model is traced with ``torch.fx`` and cut where a single tensor is alive, the
  traced graph's pieces running the model's own modules (torchvision's ResNets, MobileNets,
  ViTs, a user's class);
- of the possible boundaries, those that save the most computation per stored byte are kept
  while the stored activations fit the memory budget; the others are merged away.

Whatever cannot be traced (data-dependent control flow, TorchScript) or whose pieces do not
reproduce the model on an example is one stage: a full pass every time, never a wrong answer.
"""

from __future__ import annotations

import itertools
import math
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import fx, nn
from torch.utils.flop_counter import FlopCounterMode


@dataclass(frozen=True, eq=False)
class Stage:
    """One piece of the forward pass: it takes one tensor and gives one.

    Attributes:
        name: what it starts with (a child's or a module's name; ``""`` for the whole model).
        module: runs the piece; its parameters are the model's own objects, named as in the
            model when ``prefix`` is ``""`` (full name = ``prefix + local name``).
        prefix: what to put before a local parameter name to get the model's name.
    """

    name: str
    module: nn.Module
    prefix: str = ""


@dataclass(frozen=True)
class _Cut:
    """A possible boundary: after graph position ``position``, where ``node`` alone is alive."""

    position: int
    node: fx.Node | None  # None for a Sequential's child boundary
    bytes_per_image: float
    flops_before: float


def split_stages(
    model: nn.Module, example: torch.Tensor, budget_bytes_per_image: float = math.inf
) -> list[Stage]:
    """The stages of ``model`` (see the module docstring), storing at most
    ``budget_bytes_per_image`` of stage inputs per image (the first stage's input, the data
    itself, is not counted: evaluation reads it from the dataset).

    Args:
        model: in eval mode; read, never written (the stages share its modules).
        example: a small batch of real inputs (2+ images), to size activations and check the cut.
        budget_bytes_per_image: the memory budget divided by the number of eval images.
    """
    if isinstance(model, nn.Sequential) and len(model) > 1:
        return _split_sequential(model, example, budget_bytes_per_image)
    try:
        stages = _split_traced(model, example, budget_bytes_per_image)
    except Exception:  # anything fx cannot trace or run is evaluated whole
        return [Stage("", model)]
    return stages if _reproduces(model, stages, example) else [Stage("", model)]


def _choose(cuts: list[_Cut], budget: float) -> list[_Cut]:
    """The cuts kept under ``budget`` bytes per image: most computation saved per byte first."""
    chosen, used = [], 0.0
    for cut in sorted(cuts, key=lambda c: -c.flops_before / max(c.bytes_per_image, 1.0)):
        if used + cut.bytes_per_image <= budget:
            chosen.append(cut)
            used += cut.bytes_per_image
    return sorted(chosen, key=lambda c: c.position)


# --- nn.Sequential ------------------------------------------------------------------------------


def _split_sequential(model: nn.Sequential, example: torch.Tensor, budget: float) -> list[Stage]:
    children = list(model.named_children())
    cuts, flops = [], 0.0
    x = example
    with torch.no_grad():
        for position, (_, child) in enumerate(children[:-1]):
            with FlopCounterMode(display=False) as counter:
                x = child(x)
            flops += counter.get_total_flops()
            cuts.append(_Cut(position, None, x.numel() * x.element_size() / len(x), flops))
    bounds = [-1] + [c.position for c in _choose(cuts, budget)] + [len(children) - 1]
    stages = []
    for start, end in itertools.pairwise(bounds):
        piece = children[start + 1 : end + 1]
        if len(piece) == 1:
            name, child = piece[0]
            stages.append(Stage(name, child, f"{name}."))
        else:  # merged children keep their names, so parameters keep theirs too
            stages.append(Stage(piece[0][0], nn.Sequential(OrderedDict(piece)), ""))
    return stages


# --- traced graphs ------------------------------------------------------------------------------


class _Sizer(fx.Interpreter):
    """Runs the graph once, noting each value's bytes per image and the FLOPs so far."""

    def __init__(self, module: fx.GraphModule, batch: int) -> None:
        super().__init__(module)
        self.batch = batch
        self.tensor_bytes: dict[fx.Node, float] = {}
        self.flops_after: dict[fx.Node, float] = {}
        self.counter = FlopCounterMode(display=False)

    def run_node(self, node: fx.Node) -> object:
        value = super().run_node(node)
        if isinstance(value, torch.Tensor) and value.dim() > 0 and len(value) == self.batch:
            self.tensor_bytes[node] = value.numel() * value.element_size() / self.batch
        self.flops_after[node] = self.counter.get_total_flops()
        return value


def _split_traced(model: nn.Module, example: torch.Tensor, budget: float) -> list[Stage]:
    traced = fx.symbolic_trace(model)
    nodes = list(traced.graph.nodes)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        return [Stage("", model)]
    sizer = _Sizer(traced, len(example))
    with torch.no_grad(), sizer.counter:
        sizer.run(example)
    position = {node: i for i, node in enumerate(nodes)}
    last_use = {
        node: max((position[user] for user in node.users), default=position[node]) for node in nodes
    }
    # Parameters are re-read in any stage (get_attr), so they never block a cut.
    values = [n for n in nodes if n.op not in ("get_attr", "output")]
    cuts, alive = [], set()
    for node in values:
        alive = {n for n in alive if last_use[n] > position[node]}
        if last_use[node] > position[node]:
            alive.add(node)
        single = len(alive) == 1 and node in alive and node.op != "placeholder"
        if single and node in sizer.tensor_bytes:
            bytes_per_image = sizer.tensor_bytes[node]
            cuts.append(_Cut(position[node], node, bytes_per_image, sizer.flops_after[node]))
    useful = _useful_cuts(traced, nodes, cuts)
    chosen = _choose(useful, budget)
    if not chosen:
        return [Stage("", model)]
    bounds = [placeholders[0]] + [c.node for c in chosen]
    stages = []
    for k, start in enumerate(bounds):
        end = bounds[k + 1] if k + 1 < len(bounds) else None
        graph = _piece(traced.graph, nodes, start, end, position)
        piece = fx.GraphModule(traced, graph)
        stages.append(Stage(_first_module(graph) or start.name, piece, ""))
    return stages


def _useful_cuts(traced: fx.GraphModule, nodes: list[fx.Node], cuts: list[_Cut]) -> list[_Cut]:
    """For each node that reads parameters, the latest cut before it: resuming anywhere else
    would recompute work whose parameters did not change."""
    modules = dict(traced.named_modules())
    useful: dict[int, _Cut] = {}
    for index, node in enumerate(nodes):
        reads_parameters = node.op == "get_attr" or (
            node.op == "call_module" and any(True for _ in modules[str(node.target)].parameters())
        )
        if not reads_parameters:
            continue
        before = [c for c in cuts if c.position < index]
        if before:
            useful[before[-1].position] = before[-1]
    return list(useful.values())


def _piece(
    graph: fx.Graph,
    nodes: list[fx.Node],
    start: fx.Node,
    end: fx.Node | None,
    position: dict[fx.Node, int],
) -> fx.Graph:
    """The nodes after ``start`` up to ``end`` (or the output) as a graph of one input."""
    piece = fx.Graph()
    env: dict[fx.Node, fx.Node] = {start: piece.placeholder("x")}

    def lookup(node: fx.Node) -> fx.Node:
        if node not in env:  # a parameter read earlier in the model: read it here too
            if node.op != "get_attr":
                raise ValueError(f"{node.name} crosses the cut")
            env[node] = piece.node_copy(node, lookup)
        return env[node]

    stop = position[end] if end is not None else len(nodes)
    for node in nodes[position[start] + 1 : stop + 1]:
        if node.op == "get_attr":
            continue  # copied where used
        env[node] = piece.node_copy(node, lookup)
    if end is not None:
        piece.output(env[end])
    piece.lint()
    return piece


def _first_module(graph: fx.Graph) -> str:
    for node in graph.nodes:
        if node.op == "call_module":
            return str(node.target)
    return ""


def _reproduces(model: nn.Module, stages: list[Stage], example: torch.Tensor) -> bool:
    """Whether running the stages in turn gives the model's own output on ``example``."""
    with torch.no_grad():
        expected = model(example)
        x = example
        for stage in stages:
            x = stage.module(x)
    return (
        isinstance(expected, torch.Tensor)
        and isinstance(x, torch.Tensor)
        and x.shape == expected.shape
        and torch.allclose(x, expected, rtol=1e-4, atol=1e-5)
    )
