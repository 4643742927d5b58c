"""The sample-model zoo: architectures, committed weights and model cards.

Every sample model is an ``nn.Sequential`` of named stages, so evaluation can resume from any
stage (see ``explorer.engine.evaluation.IncrementalEvaluator``); inside a stage anything goes
(residual blocks, attention).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ZOO_DIR = Path(__file__).resolve().parents[2] / "sample_models"
WEIGHT_KINDS = ("trained", "init")


# --- building blocks ----------------------------------------------------------------------------


class ResidualBlock(nn.Module):
    """conv-bn-relu-conv-bn plus a skip (identity, or 1x1 conv + bn when the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class PatchEmbed(nn.Module):
    """Image -> tokens: a strided conv per patch, a learned [CLS] token and position embeddings."""

    def __init__(self, image_size: int, patch_size: int, in_channels: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, patch_size, patch_size)
        num_patches = (image_size // patch_size) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, num_patches + 1, dim) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.proj(x).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(len(x), -1, -1)
        return torch.cat([cls, tokens], dim=1) + self.pos_embed


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection laid out as [q heads|k heads|v heads].

    Head ``h`` owns rows ``h*d:(h+1)*d`` of each of the q, k and v thirds of ``qkv`` and columns
    ``h*d:(h+1)*d`` of ``proj``; removing a head removes exactly those (see ``compaction``).
    """

    def __init__(self, dim: int, num_heads: int, head_dim: int | None = None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim or dim // num_heads
        inner = self.num_heads * self.head_dim
        self.qkv = nn.Linear(dim, 3 * inner)
        self.proj = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, -1))


class TransformerBlock(nn.Module):
    """Pre-norm encoder block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp_dim)
        self.fc2 = nn.Linear(mlp_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class ClassifierHead(nn.Module):
    """Final LayerNorm, take the [CLS] token, linear classifier."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(x)[:, 0])


# --- the sample architectures -------------------------------------------------------------------


def lenet_300_100(num_classes: int = 10) -> nn.Sequential:
    """LeNet-300-100 (LeCun et al. 1998; the MLP of Han et al. 2015): 784-300-100-10."""
    return nn.Sequential(
        OrderedDict(
            flatten=nn.Flatten(),
            fc1=nn.Linear(784, 300),
            relu1=nn.ReLU(),
            fc2=nn.Linear(300, 100),
            relu2=nn.ReLU(),
            fc3=nn.Linear(100, num_classes),
        )
    )


def lenet5(num_classes: int = 10) -> nn.Sequential:
    """LeNet-5 with ReLU and max-pooling: conv 6@5x5, conv 16@5x5, fc 120-84-10."""
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(1, 6, 5, padding=2),
            relu1=nn.ReLU(),
            pool1=nn.MaxPool2d(2),
            conv2=nn.Conv2d(6, 16, 5),
            relu2=nn.ReLU(),
            pool2=nn.MaxPool2d(2),
            flatten=nn.Flatten(),
            fc1=nn.Linear(400, 120),
            relu3=nn.ReLU(),
            fc2=nn.Linear(120, 84),
            relu4=nn.ReLU(),
            fc3=nn.Linear(84, num_classes),
        )
    )


def resnet_mini(num_classes: int = 10, width: int = 32) -> nn.Sequential:
    """A small ResNet with BatchNorm: stem, 3 residual blocks, global pooling, linear classifier.

    The identity skips couple channels: the stem's outputs and block1.conv2's outputs are added,
    so they can only be pruned together (likewise block2 and block3).
    """
    return nn.Sequential(
        OrderedDict(
            stem=nn.Sequential(
                OrderedDict(
                    conv=nn.Conv2d(1, width, 3, stride=2, padding=1, bias=False),
                    bn=nn.BatchNorm2d(width),
                    relu=nn.ReLU(),
                )
            ),
            block1=ResidualBlock(width, width),
            block2=ResidualBlock(width, 2 * width, stride=2),
            block3=ResidualBlock(2 * width, 2 * width),
            pool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(),
            fc=nn.Linear(2 * width, num_classes),
        )
    )


def vit_tiny(num_classes: int = 10, dim: int = 64, depth: int = 3, heads: int = 4) -> nn.Sequential:
    """A tiny Vision Transformer: 7x7 patches (16 + [CLS] tokens), pre-norm encoder blocks."""
    stages: OrderedDict[str, nn.Module] = OrderedDict(embed=PatchEmbed(28, 7, 1, dim))
    for i in range(depth):
        stages[f"block{i + 1}"] = TransformerBlock(dim, heads, 2 * dim)
    stages["head"] = ClassifierHead(dim, num_classes)
    return nn.Sequential(stages)


@dataclass(frozen=True)
class ModelSpec:
    """A zoo entry: how to build the architecture and what it is."""

    name: str
    title: str
    build: Callable[[], nn.Module]
    summary: str
    dataset: str = "mnist"


ZOO: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            "lenet300",
            "LeNet-300-100 (MLP)",
            lenet_300_100,
            "Fully connected 784-300-100-10 with ReLU; the classic pruning benchmark.",
        ),
        ModelSpec(
            "lenet5",
            "LeNet-5 (CNN)",
            lenet5,
            "Two 5x5 conv layers with max-pooling, then 120-84-10 fully connected.",
        ),
        ModelSpec(
            "resnet_mini",
            "Mini ResNet (BatchNorm, 3 residual blocks)",
            resnet_mini,
            "Stem + 3 residual blocks (32-64 channels); identity skips couple channels.",
        ),
        ModelSpec(
            "vit_tiny",
            "Tiny Vision Transformer (3 blocks, 4 heads)",
            vit_tiny,
            "7x7 patches, [CLS] token, 3 pre-norm encoder blocks of 4 heads, dim 64.",
        ),
    )
}


def get_spec(name: str) -> ModelSpec:
    """The zoo entry ``name``; a clear error naming the choices otherwise."""
    try:
        return ZOO[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(ZOO)}") from None


def weights_path(name: str, kind: str = "trained") -> Path:
    """Where the committed ``kind`` weights of zoo model ``name`` live."""
    if kind not in WEIGHT_KINDS:
        raise ValueError(f"unknown weights {kind!r}; choose one of {list(WEIGHT_KINDS)}")
    get_spec(name)
    return ZOO_DIR / name / ("weights.pt" if kind == "trained" else "init.pt")


def load_model(name: str, kind: str = "trained") -> nn.Module:
    """A fresh zoo model in eval mode with its committed ``kind`` weights ("trained" or "init")."""
    model = get_spec(name).build()
    path = weights_path(name, kind)
    if not path.exists():
        raise FileNotFoundError(
            f"no {kind} weights for {name!r} at {path}; train them with "
            "`python sample_models/train.py`"
        )
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


def load_card(name: str) -> dict[str, Any]:
    """The model card of zoo model ``name`` (written by the training script)."""
    path = ZOO_DIR / get_spec(name).name / "card.json"
    if not path.exists():
        return {"name": name, "title": get_spec(name).title, "summary": get_spec(name).summary}
    return json.loads(path.read_text())


def list_models() -> list[dict[str, Any]]:
    """Every zoo model's card, in zoo order."""
    return [load_card(name) for name in ZOO]
