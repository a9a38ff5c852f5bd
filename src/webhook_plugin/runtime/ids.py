"""One rule for every id a client names: agents, conversations, messages, groups.

An id is NFC-normalized (two spellings of "José" are one conversation), 1 to
:data:`MAX_LENGTH` characters, with no control, line-separator or
bidirectional-override characters (which would make one id look like
another on a page or in a log), and is not ``.`` or ``..`` (a browser would
resolve such a path segment away). Every id that passes opens in the API and
the console, percent-encoded in paths and links: a conversation's id may hold
a ``/`` (chat platforms' ids do), its routes take the rest of the path. An
agent's id may not: its routes go on after it (``/webhook``, ``/deliveries``),
which a ``/`` in it would make ambiguous.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Final

__all__ = ["MAX_LENGTH", "id_problem", "normalized_id"]

MAX_LENGTH: Final = 200

_REFUSED = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029\ud800-\udfff]"
)


def normalized_id(value: str) -> str:
    """``value`` in NFC (a no-op for ASCII)."""
    return value if value.isascii() else unicodedata.normalize("NFC", value)


def id_problem(value: str, *, agent: bool = False) -> str | None:
    """What is wrong with an id (already normalized), or ``None``; ``agent``:
    an agent's id (no ``/`` either)."""
    if not 0 < len(value) <= MAX_LENGTH:
        return f"must be 1 to {MAX_LENGTH} characters"
    if value in (".", ".."):
        return "cannot be '.' or '..'"
    if agent and "/" in value:
        return "cannot contain '/'"
    bad = _REFUSED.search(value)
    if bad is not None:
        return f"cannot contain control or bidirectional characters (U+{ord(bad.group()):04X})"
    return None
