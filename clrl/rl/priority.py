"""Start the emulators' C++ worker threads at a lower CPU priority than the learner.

Why: on a machine with fewer cores than envs (2 cores, 8 envs here), the 8 emulator threads and
the thread that runs inference share the cores. Linux's scheduler gives every runnable thread an
equal share, so while a group of envs steps, the inference for another group (``rollout_groups``)
runs at a fraction of a core, and after a full step the learner thread that was woken by the
last emulator waits behind the others. Lowering the emulators' priority (a higher *nice* value)
lets the learner run whenever it is runnable and the emulators fill the rest of the cores: the
same work in less wall time (``clrl bench ppo``: the README's figures). Priorities change only
who runs when, never what an env computes: each env owns its emulator and generator.

How: on Linux the nice value is a per-thread attribute and a new thread inherits its creator's.
ale-py starts an env's worker thread when the env is built, so the envs are built in a short-lived
helper thread that first lowers its own priority; the learner's threads keep theirs. Raising a
nice value needs no privilege (lowering it back would), so nothing is ever raised. Elsewhere
(macOS, Windows) ``nice`` is per process, and the envs are built as usual.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from typing import TypeVar

__all__ = ["MAX_NICE", "build_with_lower_priority", "per_thread_nice", "thread_nice"]

T = TypeVar("T")
MAX_NICE = 19  # the lowest priority Linux has


def per_thread_nice() -> bool:
    """Whether this platform keeps nice values per thread (Linux)."""
    return sys.platform.startswith("linux") and hasattr(os, "setpriority")


def thread_nice(tid: int | None = None) -> int:
    """The nice value of thread ``tid`` (default: the calling thread)."""
    tid = threading.get_native_id() if tid is None else tid
    return os.getpriority(os.PRIO_PROCESS, tid)


def build_with_lower_priority(build: Callable[[], T], levels: int) -> T:
    """``build()``, run in a helper thread ``levels`` nice levels below the caller (capped at 19),
    so that the threads it starts inherit that lower priority; ``levels <= 0`` or a platform
    without per-thread nice values runs ``build()`` here. Exceptions are re-raised here."""
    if levels <= 0 or not per_thread_nice():
        return build()
    target = min(MAX_NICE, thread_nice() + int(levels))
    result: list[T] = []
    error: list[BaseException] = []

    def helper() -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), target)
        except OSError:  # a sandbox that forbids it: build at the usual priority
            pass
        try:
            result.append(build())
        except BaseException as exc:  # noqa: BLE001 - handed to the caller below
            error.append(exc)

    thread = threading.Thread(target=helper, name="clrl-env-builder", daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]
