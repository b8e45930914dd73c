"""Learning that the server is shutting down, so open event streams end instead of holding it.

uvicorn waits for every open response before it finishes shutting down, and tells the app
nothing until then: an event stream would keep the server up until its client left. The
app therefore listens to the same signals uvicorn does, ahead of uvicorn's own handler.
"""

import asyncio
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class ShutdownWatch:
    """`stopping` is set when the process is asked to stop, or when the app's lifespan ends."""

    def __init__(self) -> None:
        self.stopping = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        """Chain onto the signal handlers; only the main thread may (TestClient's is not)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for number in SIGNALS:
            self._previous[number] = signal.getsignal(number)
            signal.signal(number, self._handle)

    def uninstall(self) -> None:
        for number, previous in self._previous.items():
            signal.signal(number, previous)
        self._previous.clear()
        self.stopping.set()

    def _handle(self, number: int, frame: FrameType | None) -> None:
        # A signal handler may run in the middle of the loop's own work: hand the set over.
        self._loop.call_soon_threadsafe(self.stopping.set)
        previous: Callable[[int, FrameType | None], Any] | int | None = self._previous.get(number)
        if callable(previous):
            previous(number, frame)
        elif previous == signal.SIG_DFL:
            # No server handler to pass it to (not under uvicorn): what the signal would do.
            signal.signal(number, signal.SIG_DFL)
            os.kill(os.getpid(), number)
