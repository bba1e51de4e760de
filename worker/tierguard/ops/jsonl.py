"""Reading the JSON-lines files operators hand to tierguard, with errors that name the line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any


def records(lines: list[str], error: type[Exception]) -> Iterator[tuple[int, Any]]:
    """(1-based line number, parsed value) for every non-blank line; ``error`` names a bad one."""
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield i, json.loads(line)
        except ValueError as err:
            raise error(f"line {i}: not JSON ({err})") from None
