"""Exceptions raised by the science core.

Every error caused by the user's input is a :class:`InputError` whose message is one line that
names the problem and the fix, so that the CLI and the napari widgets can show it as it is.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input: the message is one line naming the problem and how to fix it."""


class MemoryEstimateError(InputError):
    """A mapping would not fit in the memory available; the message gives the estimate."""


class MappingCancelled(RuntimeError):
    """The mapping was stopped by its cancel flag before it finished."""


class InputWarning(UserWarning):
    """Input that maps but whose result would mislead (one line naming the problem and the fix)."""


class CommittedInterrupt(KeyboardInterrupt):
    """An interrupt that arrived while an output was renamed into place: the output is complete.

    ``signum`` is the signal (2: Ctrl-C, 15: SIGTERM); the command exits with ``128 + signum``.
    """

    def __init__(self, message: str = "", signum: int = 2) -> None:
        super().__init__(message)
        self.signum = signum


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none): what a
    one-line report shows of an error raised by a library."""
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__
