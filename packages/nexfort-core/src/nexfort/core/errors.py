"""nexfort's errors and the message helpers that make them name the bad value and the valid ones."""

from __future__ import annotations

import difflib
from typing import Iterable, Optional


class NexfortConfigError(ValueError):
    """A configuration nexfort cannot honour; raised before any compilation starts."""


#: How much of a bad value an error message quotes.
SHOWN_CHARS = 200


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """``repr(value)``, cut to about ``limit`` characters (``'jit:jit:...'... (40000 characters)``), so that an error
    about a huge value stays readable."""
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a value whose repr fails is still named by its type
        text = f"<{type(value).__name__}>"
    if len(text) > limit:
        text = f"{text[:limit]}... ({len(text)} characters)"
    return text


def suggest(value: str, valid: Iterable[str], n: int = 3) -> list:
    """The valid names closest to ``value`` (case- and separator-insensitive); none for a value too long to be a
    misspelling."""
    if len(value) > SHOWN_CHARS:
        return []
    valid = list(valid)
    norm = {v.lower().replace("-", "_"): v for v in valid}
    hits = difflib.get_close_matches(value.lower().replace("-", "_"), list(norm), n=n, cutoff=0.6)
    return [norm[h] for h in hits]


def unknown_message(what: str, value: str, valid: Iterable[str], hint: Optional[str] = None,
                    list_valid: bool = True) -> str:
    """``Unknown mode flag 'max-optimise'; did you mean 'max-optimize'? Valid flags: ...``"""
    valid = sorted(set(valid))
    msg = f"Unknown {what} {shown(value)}"
    close = suggest(value, valid)
    if close:
        msg += "; did you mean " + " or ".join(repr(c) for c in close) + "?"
    else:
        msg += "."
    if hint:
        msg += " " + hint
    if list_valid:
        plural = what.split()[-1]
        plural = plural[:-1] + "ies" if plural.endswith("y") else plural + "s"
        msg += f" Valid {plural}: " + ", ".join(valid) + "."
    return msg
