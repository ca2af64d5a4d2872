"""SocratesError: the one base of every error a user can act on (bad config, input, settings).

Each module keeps its own subclass (ConfigError, PrepareError, ScoreError, ...) with a message that
says what was expected, what was received and how to fix it; the CLI catches SocratesError alone
and prints that message as one line. Anything else is a bug and keeps its traceback.

Errors raised inside Ray tasks and actors come back wrapped (RayTaskError, with the remote
traceback as text); `unwrap` recovers the typed error so the user reads one line, not a trace, and
`innermost_cause` names the innermost error of any other kind in one line.
"""

from __future__ import annotations

import re


class SocratesError(Exception):
    """An error the user can fix; the message names the setting or input and the fix."""


def _subclasses(cls: type) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found.append(sub)
        found.extend(_subclasses(sub))
    return found


def unwrap(exc: BaseException) -> BaseException:
    """The SocratesError inside `exc` (a Ray task or actor failure), re-created as its own type;
    `exc` itself when there is none.

    The original object survives as a cause when the error was raised in this process; from a
    remote worker only its "module.Type: message" line in the traceback text does."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, SocratesError):
            return cause
        cause = cause.__cause__
    text = str(exc)
    best: tuple[int, type, str] | None = None
    for kind in _subclasses(SocratesError):
        for match in re.finditer(rf"{re.escape(kind.__module__)}\.{kind.__name__}: (.*)", text):
            if best is None or match.start() > best[0]:  # the innermost (last) one raised
                best = (match.start(), kind, match.group(1).strip())
    if best is None:
        return exc
    try:
        return best[1](best[2])
    except TypeError:  # a subclass with another constructor: keep the message, lose the type
        return SocratesError(best[2])


# "module.Type: message" lines of a traceback's text, for errors that are not SocratesErrors
_RAISED = re.compile(r"^\s*((?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception|Exit|Timeout)): (.+)$", re.MULTILINE)


def innermost_cause(exc: BaseException) -> str:
    """'Type: message' of what went wrong, in one line: for an error Ray wraps (a task's, or Ray Data's
    "UDF failed to process a data block"), the innermost error its traceback text names, not the wrapper."""
    text = str(exc).strip()
    if type(exc).__module__.startswith("ray") and (raised := _RAISED.findall(text)):
        kind, message = raised[-1]
        return f"{kind.rsplit('.', 1)[-1]}: {message.strip()[:300]}"
    return f"{type(exc).__name__}: {text.splitlines()[0][:300] if text else '(no message)'}"
