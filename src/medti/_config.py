"""What every config reader (synthetic-dataset specs, experiment configs) does alike: refuse a key it does not
know, naming the key, the closest known one and every allowed key."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def refuse_unknown(where: str, keys: Iterable, allowed: Iterable[str], error: type[Exception]) -> None:
    """Raise ``error`` for the first of ``keys`` not in ``allowed`` ("did you mean ...?" when one is close)."""
    allowed = sorted(allowed)
    for k in keys:
        if k not in allowed:
            close = difflib.get_close_matches(str(k), allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise error(f"{where}: unknown key {k!r}{hint}; allowed: {', '.join(allowed)}")
