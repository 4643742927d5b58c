"""Run one step on an unfamiliar model within a memory and time budget, so that no model can
take the process (and every other session of the app) down with it.

torch-pruning's channel analysis follows every reshape of a model; on some architectures its
index lists grow without bound (torchvision's swin_t passed 6 GB within a minute on 64 px
inputs and was killed by the system after 218 s). ``within_budget`` runs such a step in a
forked child process whose address space is capped (``RLIMIT_AS``) and which is killed past
its time; the parent gets the step's result back (through ``torch.save``), or a
``BudgetExceeded`` that names the step, the model and the limit. Where ``fork`` is not there
(Windows, macOS spawn), or the model lives on a GPU (CUDA does not survive a fork), the step
runs in-process, unguarded.
"""

from __future__ import annotations

import io
import os
import select
import signal
import sys
import time
from collections.abc import Callable
from typing import TypeVar

import torch

from explorer.engine.limits import analysis_budget

T = TypeVar("T")
#: How the child reports back: a result, a step error, or running out of memory.
_RESULT, _ERROR, _MEMORY = "result", "error", "memory"


class BudgetExceeded(RuntimeError):
    """A step went past its memory or time budget (a user-facing message)."""


class StepFailed(RuntimeError):
    """The step itself raised in the child; the message is the child's ``Type: first line``."""


def _virtual_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _child(step: Callable[[], T], write_fd: int, memory_bytes: int) -> None:
    import resource

    try:
        torch.set_num_threads(1)  # the parent's thread pool does not survive a fork
        limit = _virtual_bytes() + memory_bytes
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        try:
            payload: tuple[str, object] = (_RESULT, step())
        except MemoryError:
            payload = (_MEMORY, "")
        except Exception as err:
            text = str(err).strip().splitlines()
            kind = _MEMORY if "can't allocate memory" in str(err) else _ERROR
            payload = (kind, f"{type(err).__name__}: {text[0] if text else ''}")
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        data = memoryview(buffer.getvalue())
        while data:
            data = data[os.write(write_fd, data) :]
    finally:
        os._exit(0)


def _can_fork(device: torch.device | None) -> bool:
    return (
        hasattr(os, "fork")
        and sys.platform.startswith("linux")
        and (device is None or device.type == "cpu")
    )


def within_budget(
    step: Callable[[], T],
    *,
    what: str,
    memory_mb: int | None = None,
    seconds: float | None = None,
    device: torch.device | None = None,
) -> T:
    """``step()``'s result, computed in a forked child within ``memory_mb`` more memory and
    ``seconds`` (defaults: the operator's ``PRUNING_EXPLORER_ANALYSIS_MB`` / ``_S``).

    Args:
        step: a function of nothing whose result ``torch.save`` can write (plain data, tensors).
        what: the step and the model, for messages, e.g. "channel analysis of swin_t".
        memory_mb, seconds: the budget; 0 seconds runs the step in-process, unguarded.
        device: where the model lives (a CUDA model runs in-process).

    Raises:
        BudgetExceeded: past the memory or time budget, or the child died.
        StepFailed: the step raised (its type and first line in the message).
    """
    default_mb, default_s = analysis_budget()
    memory_mb = default_mb if memory_mb is None else memory_mb
    seconds = default_s if seconds is None else seconds
    if seconds <= 0 or not _can_fork(device):
        return step()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child ends in os._exit
        os.close(read_fd)
        _child(step, write_fd, memory_mb * 2**20)
    os.close(write_fd)
    chunks: list[bytes] = []
    deadline = time.monotonic() + seconds
    timed_out = False
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            ready, _, _ = select.select([read_fd], [], [], min(left, 1.0))
            if ready:
                chunk = os.read(read_fd, 1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
    finally:
        os.close(read_fd)
        if timed_out:
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    if timed_out:
        raise BudgetExceeded(f"the {what} took longer than {seconds:g} s and was stopped")
    if not chunks:
        how = f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"status {status}"
        raise BudgetExceeded(
            f"the {what} died ({how}), most likely out of its {memory_mb:,} MB memory budget"
        )
    # Our own forked child wrote these bytes (plain dataclasses and tensors): not a user file.
    kind, value = torch.load(io.BytesIO(b"".join(chunks)), weights_only=False)
    if kind == _MEMORY:
        raise BudgetExceeded(f"the {what} needed more than its {memory_mb:,} MB memory budget")
    if kind == _ERROR:
        raise StepFailed(str(value))
    return value  # type: ignore[return-value]


__all__ = ["BudgetExceeded", "StepFailed", "within_budget"]
