"""The one exception type for errors a user can cause.

Every user-caused error (bad shapes, NaN inputs, eps <= 0, an unknown method name, a missing
or malformed file, a ReLU model given to a derivative-only method) raises
:class:`AttrboundError` with one sentence that says what was wrong and what to do. The CLI
prints that sentence and exits with status 2, without a traceback.
"""

from __future__ import annotations


class AttrboundError(ValueError):
    """A problem with what the caller passed in, explained in one sentence."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when the message is empty),
    for quoting a library's error inside one of ours."""
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def check_choice(kind: str, value: str, choices: list[str] | tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise one clear sentence."""
    if value not in choices:
        raise AttrboundError(
            f"unknown {kind} {value!r}; choose one of: {', '.join(map(str, choices))}."
        )
    return value
