"""Why a dense model scores about chance: one loud warning that names the usual causes.

A model at chance on its own eval images makes every number after it meaningless (pruning cannot
hurt it further). The model is rarely the cause; the way in is: no trained weights, images
prepared otherwise than in training (size, mean and std, channels), or classes in another
order than the model's outputs.
"""

from __future__ import annotations

import math

from explorer.engine.subject import Subject
from explorer.zoo.mnist import ImageDataset

#: Above chance by at least this share of the way to 100%, or two standard errors of a guesser
#: on this many images, whichever is more: below that, the model is no better than guessing.
ABOVE_CHANCE_SHARE = 0.1


def chance_level(classes: int) -> float:
    """The accuracy of guessing one class out of ``classes``."""
    return 1 / max(classes, 1)


def near_chance(accuracy: float, classes: int, images: int) -> bool:
    """Whether ``accuracy`` on ``images`` eval images is within guessing of chance."""
    chance = chance_level(classes)
    spread = 2 * math.sqrt(chance * (1 - chance) / max(images, 1))
    return accuracy <= chance + max(ABOVE_CHANCE_SHARE * (1 - chance), spread)


def _values(value: float | tuple[float, ...]) -> str:
    values = value if isinstance(value, tuple) else (value,)
    return ", ".join(f"{v:.3g}" for v in values)


def chance_warning(
    accuracy: float, data: ImageDataset, subject: Subject, so_far: bool = False
) -> str | None:
    """One paragraph naming what to check, most likely first; None when above chance.
    ``so_far``: ``accuracy`` is a preview on part of the eval images (said as "≈")."""
    classes = len(data.classes)
    if not near_chance(accuracy, classes, len(data)):
        return None
    channels, height, width = data.input_shape
    causes = []
    if subject.weights is None and subject.model.kind != "zoo":
        causes.append(
            "weights: none were given, so the model has its random initial weights "
            "(nothing is downloaded here): give the trained weights file"
        )
    else:
        causes.append("weights: are they the trained ones, for this architecture?")
    causes += [
        f"preprocessing: the images are fed as {height}×{width}, mean ({_values(data.mean)}),"
        f" std ({_values(data.std)}): is that how the model was trained? (Preprocessing: the "
        "model's declared size and ImageNet statistics, or the images' own)",
        f"channels: {channels} ({'grey' if channels == 1 else 'RGB'}); grey images repeated "
        "to RGB, or colour averaged to grey, may not be what it saw",
        "labels: the model's output i must be class i of the data, whose classes are, "
        f"in order: {', '.join(data.classes[:6])}{'…' if classes > 6 else ''} (folders and "
        "labels sorted by name)",
    ]
    return (
        f"The dense model scores {'≈' if so_far else ''}{accuracy:.1%} on the eval images"
        f"{' so far' if so_far else ''}: about chance for "
        f"{classes} classes ({chance_level(classes):.1%}). Every number after this means "
        "little. Check: " + "; ".join(causes) + "."
    )


__all__ = ["chance_level", "chance_warning", "near_chance"]
