"""One rule for every config section that needs a secret: it is read from a file, never written inline."""

from __future__ import annotations

from typing import Any, Iterable


def refuse_inline_secrets(data: Any, keys: Iterable[str], message: str) -> Any:
    """For a pydantic "before" validator: raise ValueError(message.format(key=...)) if `data` has one of `keys`."""
    if isinstance(data, dict):
        names = {k.lower() for k in keys}
        inline = [k for k in data if isinstance(k, str) and k.lower() in names]
        if inline:
            raise ValueError(message.format(key=inline[0]))
    return data
