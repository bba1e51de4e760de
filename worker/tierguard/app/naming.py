"""How a call names its category when it sends no category header.

Two ways, for clients that cannot set a header per request: a ``/c/CATEGORY/`` path
prefix (so a base URL alone carries it: the gateway) and a ``metadata.user_id`` of
``tg:CATEGORY:rest`` (any client that can set the Messages API's user id: the wrapper and
the gateway). Both are stripped before the request goes upstream (``rest`` stays the user
id; none is left when it is empty). The header, or the wrapper's ``category=``, wins when
both are given; the prefix is stripped all the same.
"""

from __future__ import annotations

import json
from typing import Any

USER_PREFIX = "tg:"
_MARK = b'"' + USER_PREFIX.encode()


def path_category(path: str) -> tuple[str, str | None]:
    """``/c/CATEGORY/rest`` -> (``/rest``, CATEGORY): a base URL alone can name the category (the
    prefix never goes upstream); any other path -> (path, None)."""
    if path.startswith("/c/"):
        name, sep, rest = path[3:].partition("/")
        if sep and name:
            return "/" + rest, name
    return path, None


def from_user_id(request: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """The category a ``metadata.user_id`` of ``tg:CATEGORY:rest`` names, and the request with the
    prefix stripped; (None, the request unchanged) when it names none."""
    metadata = request.get("metadata")
    user = metadata.get("user_id") if isinstance(metadata, dict) else None
    if not isinstance(user, str) or not user.startswith(USER_PREFIX):
        return None, request
    name, _, rest = user[len(USER_PREFIX):].partition(":")
    metadata = {k: v for k, v in metadata.items() if k != "user_id"} | ({"user_id": rest} if rest else {})
    return (name or None), {**request, "metadata": metadata}


def names_by_user(body: bytes) -> bool:
    """Whether a body may carry the user-id prefix (one byte search: only then is it parsed)."""
    return _MARK in body


def body_category(body: bytes) -> tuple[str | None, bytes]:
    """:func:`from_user_id` on a JSON request body: (the category, the body without the prefix),
    or (None, the body untouched) — also for a body that is not a readable JSON object. Only a
    body carrying the prefix is parsed, and only such a body is re-serialised."""
    if _MARK not in body:
        return None, body
    try:
        request = json.loads(body)
    except (ValueError, RecursionError):
        return None, body
    if not isinstance(request, dict):
        return None, body
    name, stripped = from_user_id(request)
    if stripped is request:
        return None, body
    return name, json.dumps(stripped, ensure_ascii=False).encode()
