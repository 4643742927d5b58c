"""The settings people give a model and its data, named the way the reader of a message knows
them: the CLI's flag (``--mean``) or the app's field ("Preprocessing › Mean").

The loaders' messages are shared by the CLI and the app; they name a setting through
``option(name)``, so each reader is told what to change where it can change it. A setting only
the operator of the app can change (``--trust-code``, ``--trust-pickle``) is given when the
server starts: ``allow(name)`` tells a visitor that the operator must restart the app with it.

Whose wording is used is ``reader()``: ``"cli"`` unless a caller reads ``with read_by("app")``
(the app's script does, for everything a page runs).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass

#: Who a message is for: the command line, or a person using the app in a browser.
READERS = ("cli", "app")


@dataclass(frozen=True)
class Option:
    """One setting, as each reader names it.

    Attributes:
        flag: the command line's flag (the CLI's and ``streamlit run app.py -- …``'s).
        field: where the app shows it ("Preprocessing › Mean"), or None for a setting that only
            the operator gives, when the app starts.
    """

    flag: str
    field: str | None


OPTIONS: dict[str, Option] = {
    "data": Option("--data", "Data"),
    "size": Option("--size", "Preprocessing › Size"),
    "channels": Option("--channels", "Preprocessing › Channels"),
    "mean": Option("--mean", "Preprocessing › Mean and std (custom)"),
    "std": Option("--std", "Preprocessing › Mean and std (custom)"),
    "weights": Option("--weights", "the Weights upload"),
    "model_args": Option("--model-args", "the model's Arguments (JSON)"),
    "trust_code": Option("--trust-code", None),
    "trust_pickle": Option("--trust-pickle", None),
}

_reader: contextvars.ContextVar[str] = contextvars.ContextVar("explorer_reader", default="cli")


def reader() -> str:
    """Who the messages made now are for: ``"cli"`` or ``"app"``."""
    return _reader.get()


@contextlib.contextmanager
def read_by(who: str) -> Iterator[None]:
    """Word the messages made inside the block for ``who`` (one of ``READERS``)."""
    if who not in READERS:
        raise ValueError(f"unknown reader {who!r}; choose one of {list(READERS)}")
    token = _reader.set(who)
    try:
        yield
    finally:
        _reader.reset(token)


def _get(name: str) -> Option:
    try:
        return OPTIONS[name]
    except KeyError:
        raise ValueError(f"unknown option {name!r}; choose one of {sorted(OPTIONS)}") from None


def option(name: str, who: str | None = None) -> str:
    """The setting ``name`` as its reader (``who``, default ``reader()``) knows it: ``"--mean"``
    on the command line, ``"Preprocessing › Mean"`` in the app (an operator's setting: its flag
    for both)."""
    found = _get(name)
    app = (who or reader()) == "app"
    return found.field if app and found.field is not None else found.flag


def allow(name: str, who: str | None = None) -> str:
    """How the reader (``who``, default ``reader()``) gets an operator's setting ``name`` turned
    on, as a clause: "run with --trust-pickle" (CLI), "the operator must restart the app with
    --trust-pickle" (app, where a visitor cannot change it)."""
    flag = _get(name).flag
    if (who or reader()) == "app":
        return f"the operator must restart the app with {flag}"
    return f"run with {flag}"


__all__ = ["OPTIONS", "READERS", "Option", "allow", "option", "read_by", "reader"]
