"""The one check every UID from outside passes before it is used (PS3.5 section 9.1).

A UID is components of digits separated by dots, no component with a leading zero unless it is the single
digit 0, at most 64 characters. Peers (a C-STORE dataset, a C-FIND or QIDO answer, a C-GET or C-MOVE
sub-operation) are hostile until checked: a SOP Instance UID of `/../../x` pasted into a path or a URL
writes or reads where it should not. Nothing here accepts a value it cannot show is conformant.
"""

from __future__ import annotations

import re

MAX_LENGTH = 64
_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
_SHOWN = 80


class InvalidUid(ValueError):
    """A value that is not a PS3.5 9.1 UID; `reason` says why, without echoing the value."""

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(f"{what}: {reason}")
        self.what = what
        self.reason = reason


def uid_problem(value: object) -> str | None:
    """Why `value` is not a conformant UID, or None when it is. Only an exact `str` (pydicom's UID is one)
    can be; a multi-valued element (pydicom's MultiValue, from a backslash in the value) cannot."""
    if not isinstance(value, str):
        return f"not a single value ({type(value).__name__})"
    if not value:
        return "empty"
    if len(value) > MAX_LENGTH:
        return f"{len(value)} characters (at most {MAX_LENGTH})"
    if _UID.fullmatch(value) is None:
        if any(not ("0" <= character <= "9" or character == ".") for character in value):
            return "characters other than digits and dots"
        return "an empty component or a component with a leading zero"
    return None


def check_uid(value: object, what: str = "UID") -> str:
    """`value` itself when it is a conformant UID; else InvalidUid naming `what` and the reason."""
    problem = uid_problem(value)
    if problem is not None:
        raise InvalidUid(what, problem)
    return str(value)


def shown(value: object, limit: int = _SHOWN) -> str:
    """A peer's string as it may appear in a log line or a report: its repr (control characters and
    non-ASCII escaped), cut to `limit` characters."""
    text = ascii(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."
