"""Train the bundled sample models on the fit split; write weights, initial weights and cards.

    python sample_models/train.py                 # all models
    python sample_models/train.py lenet5 vit_tiny # some

Fixed seeds and 2 CPU threads; the card records the recipe and the minutes it took. Only the fit
split is used for training; the eval split is scored once at the end for the card.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from explorer.engine.evaluation import evaluate
from explorer.engine.inspection import model_flops
from explorer.zoo.mnist import ImageDataset, load_mnist
from explorer.zoo.models import ZOO, ZOO_DIR, get_spec


@dataclass(frozen=True)
class Recipe:
    epochs: int
    lr: float
    weight_decay: float
    batch_size: int = 128
    optimizer: str = "AdamW"
    schedule: str = "one-cycle (cosine), 15% warm-up"
    augmentation: str = "random affine per sample: rotation +-10 deg, scale 0.9-1.1, shift +-2 px"
    label_smoothing: float = 0.0
    seed: int = 0


RECIPES = {
    "lenet300": Recipe(epochs=60, lr=2e-3, weight_decay=1e-4),
    "lenet5": Recipe(epochs=40, lr=3e-3, weight_decay=1e-4),
    "resnet_mini": Recipe(epochs=25, lr=4e-3, weight_decay=5e-4),
    "vit_tiny": Recipe(epochs=80, lr=2e-3, weight_decay=5e-2, label_smoothing=0.1),
}


def augment(images: torch.Tensor, background: float, generator: torch.Generator) -> torch.Tensor:
    """Random rotation, scale and shift per sample, padding with the background value."""
    n = len(images)
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(10)
    scale = 0.9 + torch.rand(n, generator=generator) * 0.2
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * (2 / 14)  # +-2 px in [-1, 1] units
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    # grid_sample pads with 0, so sample around the background value to pad with background.
    warped = F.grid_sample(images - background, grid, align_corners=False)
    return warped + background


def train(name: str, fit: ImageDataset, eval_set: ImageDataset) -> dict:
    recipe = RECIPES[name]
    spec = get_spec(name)
    torch.manual_seed(recipe.seed)
    model = spec.build()
    out_dir = ZOO_DIR / name
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out_dir / "init.pt")

    generator = torch.Generator().manual_seed(recipe.seed)
    background = -fit.mean / fit.std
    steps_per_epoch = math.ceil(len(fit) / recipe.batch_size)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=recipe.lr, total_steps=recipe.epochs * steps_per_epoch, pct_start=0.15
    )
    start = time.perf_counter()
    for epoch in range(recipe.epochs):
        model.train()
        order = torch.randperm(len(fit), generator=generator)
        total_loss = 0.0
        for step in range(steps_per_epoch):
            idx = order[step * recipe.batch_size : (step + 1) * recipe.batch_size]
            x = augment(fit.images[idx], background, generator)
            loss = F.cross_entropy(
                model(x), fit.labels[idx], label_smoothing=recipe.label_smoothing
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total_loss += loss.item()
        print(
            f"  {name} epoch {epoch + 1}/{recipe.epochs} loss {total_loss / steps_per_epoch:.4f}"
            f"  ({time.perf_counter() - start:.0f}s)",
            flush=True,
        )
    seconds = time.perf_counter() - start
    model.eval()
    torch.save(model.state_dict(), out_dir / "weights.pt")

    result = evaluate(model, eval_set)
    fit_result = evaluate(model, fit)
    flops = model_flops(model, fit.input_shape)
    card = {
        "name": name,
        "title": spec.title,
        "summary": spec.summary,
        "task": "handwritten digit classification (10 classes)",
        "dataset": spec.dataset,
        "input_shape": list(fit.input_shape),
        "architecture": str(model),
        "params": sum(p.numel() for p in model.parameters()),
        "flops": flops,
        "eval_accuracy": round(result.accuracy, 4),
        "eval_loss": round(result.loss, 4),
        "fit_accuracy": round(fit_result.accuracy, 4),
        "eval_samples": len(eval_set),
        "fit_samples": len(fit),
        "recipe": asdict(recipe),
        "train_minutes": round(seconds / 60, 1),
        "train_hardware": f"{torch.get_num_threads()} CPU threads ({platform.machine()})",
        "torch": torch.__version__,
    }
    (out_dir / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    (out_dir / "MODEL_CARD.md").write_text(card_markdown(card))
    return card


def card_markdown(card: dict) -> str:
    recipe = card["recipe"]
    return f"""# {card["title"]}

{card["summary"]}

| | |
|---|---|
| task | {card["task"]} |
| data | bundled MNIST: fit split ({card["fit_samples"]:,}) for training, eval split \
({card["eval_samples"]:,}) held out |
| parameters | {card["params"]:,} |
| FLOPs per image | {card["flops"]:,} (torch.utils.flop_counter; a multiply-add counts 2) |
| eval accuracy | **{card["eval_accuracy"]:.2%}** (loss {card["eval_loss"]:.4f}) |
| fit accuracy | {card["fit_accuracy"]:.2%} |
| training | {recipe["epochs"]} epochs, {recipe["optimizer"]} lr {recipe["lr"]}, weight decay \
{recipe["weight_decay"]}, batch {recipe["batch_size"]}, {recipe["schedule"]}, label smoothing \
{recipe["label_smoothing"]}, seed {recipe["seed"]} |
| augmentation | {recipe["augmentation"]} |
| training time | {card["train_minutes"]} min on {card["train_hardware"]}, torch {card["torch"]} |

Files: `weights.pt` (trained state_dict), `init.pt` (the initial weights, for rewinding),
`card.json` (this card, machine-readable).
Reproduce with `python sample_models/train.py {card["name"]}`.

```
{card["architecture"]}
```
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "models",
        nargs="*",
        default=list(ZOO),
        metavar="MODEL",
        help=f"models to train (default all: {', '.join(ZOO)})",
    )
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    fit, eval_set = load_mnist("fit"), load_mnist("eval")
    for name in args.models:
        card = train(name, fit, eval_set)
        print(f"{name}: eval accuracy {card['eval_accuracy']:.2%} in {card['train_minutes']} min")


if __name__ == "__main__":
    main()
