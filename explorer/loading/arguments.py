"""The settings of a model's data on a command line, shared by the CLI's commands and the
app's own startup arguments (``streamlit run app.py -- --data ...``); argument types
that name the flag in their error."""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable

from explorer.engine.subject import FROM_IMAGES, DataSpec


def shown(text: str) -> str:
    return text if text.strip() else repr(text)


def whole_number(flag: str, minimum: int | None = None) -> Callable[[str], int]:
    """An argparse type: an int (``>= minimum``), or an error that names ``flag``."""
    want = "a whole number" if minimum is None else f"a whole number >= {minimum}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} must be {want}, got {shown(text)}") from None
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"{flag} must be {want}, got {shown(text)}")
        return value

    return parse


def parse_float(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def fraction(flag: str) -> Callable[[str], float]:
    """An argparse type: a number in [0, 1] (nan and inf are not), or an error naming ``flag``."""

    def parse(text: str) -> float:
        value = parse_float(text)
        if value is None or not 0.0 <= value <= 1.0:
            raise argparse.ArgumentTypeError(
                f"{flag} must be a number between 0 and 1 (0.5 = 50%), got {shown(text)}"
            )
        return value

    return parse


def numbers(flag: str) -> Callable[[str], tuple[float, ...]]:
    """An argparse type: one number or one per channel, comma-separated."""

    def parse(text: str) -> tuple[float, ...]:
        values = tuple(parse_float(part) for part in text.split(","))
        if not values or any(v is None for v in values):
            raise argparse.ArgumentTypeError(
                f"{flag} must be a number or one per channel, e.g. 0.5 or 0.485,0.456,0.406; "
                f"got {shown(text)}"
            )
        return values  # type: ignore[return-value]

    return parse


def image_size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*([0-9]+)\s*(?:[xX×,]\s*([0-9]+))?\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(
            f"--size must be N or HxW, e.g. 224 or 32x32; got {text!r}"
        )
    height = int(match.group(1))
    width = int(match.group(2) or height)
    if not (1 <= height <= 4096 and 1 <= width <= 4096):
        raise argparse.ArgumentTypeError(f"--size must be within 1..4096, got {text!r}")
    return height, width


def from_images_setting(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in FROM_IMAGES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"takes a comma-separated list of {', '.join(FROM_IMAGES)}, got {text!r}"
        )
    return names


def add_data_options(group: argparse._ActionsContainer) -> None:
    """--data and its preprocessing: the same flags for every command and for the app."""
    group.add_argument(
        "--data",
        metavar="SOURCE",
        default="mnist",
        help="mnist (bundled), an .npz (images, labels), an ImageFolder tree or .zip, or a "
        "CIFAR-10 / MNIST folder (default mnist)",
    )
    group.add_argument("--size", type=image_size, help="resize images to N or HxW pixels")
    group.add_argument("--channels", type=int, choices=(1, 3), help="convert images to 1 or 3")
    group.add_argument("--mean", type=numbers("--mean"), help="normalisation mean(s)")
    group.add_argument("--std", type=numbers("--std"), help="normalisation std(s)")
    group.add_argument(
        "--from-images",
        type=from_images_setting,
        default=(),
        metavar="SETTINGS",
        help="take these from the images even where the model declares its own (e.g. a "
        f"torchvision model's 224×224, ImageNet mean and std): comma-separated, of "
        f"{', '.join(FROM_IMAGES)}",
    )
    group.add_argument(
        "--eval-fraction",
        type=fraction("--eval-fraction"),
        default=0.3,
        help="share of each class held out for evaluation (own data; default 0.3)",
    )
    group.add_argument(
        "--split-seed", type=whole_number("--split-seed", 0), default=0, help="seed of that split"
    )


def data_spec_from_args(args: argparse.Namespace) -> DataSpec:
    """The data the flags of ``add_data_options`` describe (ValueError when they disagree)."""
    return DataSpec(
        source=args.data,
        size=args.size,
        channels=args.channels,
        mean=args.mean,
        std=args.std,
        eval_fraction=args.eval_fraction,
        seed=args.split_seed,
        from_images=args.from_images,
    )
