"""The agent's event loop: uvloop where it is installed (a dependency on Linux), else
asyncio's own.

uvloop runs the agent's loop in C: at the reference node it cut the agent's CPU by about a
sixth, side by side with asyncio's loop in one run (docs/performance.md, "Cost"), most of it
in the prober's connects and the HTTP serving of OTLP requests. Its timers have millisecond
granularity and may fire up to about a millisecond early; that does not move a probe
earlier than asyncio's loop does, because the prober launches only the probes whose
intended start is within its 1 ms wake-up lookahead, and measures a probe that starts early
from its actual start (exporter/probe/prober.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory if uvloop can be imported, else None (asyncio's default)."""
    try:
        import uvloop  # noqa: PLC0415 (optional at run time: absent on some platforms)
    except ImportError:
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` on the agent's loop."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)
