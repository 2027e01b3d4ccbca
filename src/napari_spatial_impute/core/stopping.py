"""Ctrl-C and SIGTERM as a run's cancel flag: recorded by the handler, raised once in plain code.

A Python signal handler runs in the main thread between two bytecodes, wherever that thread is:
inside h5py's ``Dataset.__setitem__``, a weakref callback of Dask's client, the asyncio loop.
An exception raised there is often swallowed ("Exception ignored in ...") and the run goes on
for minutes. :class:`SignalStop` only records the signal and sets an event; the run reads it as
its ``cancel`` flag (:func:`~napari_spatial_impute.core.engine.mapper.is_cancelled`) where it
already checks one (the map choice, each batch's epochs and neighbour chunks, the loop that
waits for a cluster's results, the writer between chunks) and stops with ``MappingCancelled``;
:func:`stops_on_signals` then raises the signal once, in the main thread, from plain code:
``KeyboardInterrupt`` for SIGINT, ``SystemExit(128 + n)`` for SIGTERM (the command line exits
130 or 143 with one line).

:class:`~napari_spatial_impute.io.files._SignalGuard` (an output being written, a cluster
starting) nested inside keeps that behaviour: it sees the recording handler and only records
too, passing the signal on.
"""

from __future__ import annotations

import functools
import signal
import threading
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar, cast

from napari_spatial_impute._errors import CommittedInterrupt
from napari_spatial_impute.core.engine.mapper import CancelFlag, is_cancelled

P = ParamSpec("P")
R = TypeVar("R")

SIGNALS = ("SIGINT", "SIGTERM")


class SignalStop:
    """A cancel flag (callable) set by SIGINT/SIGTERM while the block runs, or by ``outer``.

    In the main thread :meth:`__enter__` installs a handler that records the first signal and
    sets :attr:`event`, nothing more; :meth:`__exit__` puts the earlier handlers back. Elsewhere
    (a worker thread of the Map widget) it installs nothing and is ``outer`` alone.
    """

    def __init__(self, outer: CancelFlag = None) -> None:
        self.outer = outer
        self.event = threading.Event()
        self.received: int | None = None
        self._old: dict[int, Any] = {}

    def __call__(self) -> bool:
        return self.event.is_set() or is_cancelled(self.outer)

    def _record(self, signum: int, frame: object) -> None:
        if self.received is None:
            self.received = signum
        self.event.set()

    #: Read by ``_SignalGuard``: a handler that only records (a guard inside defers to it).
    _record.records_signals = True  # type: ignore[attr-defined]

    def __enter__(self) -> SignalStop:
        if threading.current_thread() is threading.main_thread():
            for name in SIGNALS:
                num = getattr(signal, name, None)
                if num is not None:
                    self._old[num] = signal.signal(num, self._record)
        return self

    def __exit__(self, *exc: object) -> None:
        for num, old in self._old.items():
            signal.signal(num, old)
        self._old.clear()

    def interrupt(self) -> BaseException:
        """The exception of the signal received: ``KeyboardInterrupt`` or ``SystemExit(128+n)``."""
        signum = self.received or signal.SIGINT
        if signum == signal.SIGINT:
            return KeyboardInterrupt()
        return SystemExit(128 + signum)


def stops_on_signals(func: Callable[P, R]) -> Callable[P, R]:
    """Run ``func`` (which takes a ``cancel`` keyword) with Ctrl-C/SIGTERM as its cancel flag.

    In the main thread the signal sets the flag given to ``func`` (with the caller's own
    ``cancel``); once ``func`` has stopped (whatever it raised on the way: ``MappingCancelled``,
    a cancelled future), the signal is raised here, once: ``KeyboardInterrupt`` or
    ``SystemExit(128 + n)``. A signal that came after ``func`` finished (its output complete) is
    a :class:`~napari_spatial_impute._errors.CommittedInterrupt`. Outside the main thread,
    ``func`` runs as it is.
    """

    @functools.wraps(func)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        if threading.current_thread() is not threading.main_thread():
            return func(*args, **kwargs)
        stop = SignalStop(cast(CancelFlag, kwargs.get("cancel")))
        failed = False
        with stop:
            try:
                result = func(*args, **{**kwargs, "cancel": stop})  # type: ignore[arg-type]
            except CommittedInterrupt:
                raise  # the output is in place: said as such
            except BaseException:
                if stop.received is None:
                    raise
                failed = True  # raised below, outside this handler (no chained report)
        if stop.received is None:
            return result
        if failed:
            raise stop.interrupt()
        raise CommittedInterrupt(
            "interrupted after the run's output was written", signum=stop.received
        )

    return run
