"""Claude's model ids on Amazon Bedrock and Google Vertex AI: the defaults, and ids read back.

The defaults are the ids each platform documents for the models tierguard knows. Bedrock's
are its *global* cross-Region inference profiles (``global.anthropic.…``): the newer models
take InvokeModel only through an inference profile, and the global profiles are billed at
Anthropic's list prices (geographic ones such as ``us.…``/``eu.…`` cost about 10 % more;
say so with the policy's ``platform_pricing``). Vertex's are the model names of its
``rawPredict`` paths (``claude-…@DATE`` for the dated models).

Reading an id back (:func:`model_name_of`) forgives what varies between callers of one model:
a Bedrock id with or without its region prefix (``us.``, ``eu.``, ``apac.``, ``global.``…)
or inside an ARN; a Vertex id with or without ``@DATE``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

PLATFORMS = ("anthropic", "bedrock", "vertex")

DEFAULT_MODEL_IDS: dict[str, dict[str, str]] = {
    "bedrock": {
        "claude-haiku-4-5": "global.anthropic.claude-haiku-4-5-20251001-v1:0",
        "claude-sonnet-4-5": "global.anthropic.claude-sonnet-4-5-20250929-v1:0",
        "claude-sonnet-4-6": "global.anthropic.claude-sonnet-4-6",
        "claude-opus-4-5": "global.anthropic.claude-opus-4-5-20251101-v1:0",
        "claude-opus-4-6": "global.anthropic.claude-opus-4-6-v1",
        "claude-opus-4-7": "global.anthropic.claude-opus-4-7",
    },
    "vertex": {
        "claude-haiku-4-5": "claude-haiku-4-5@20251001",
        "claude-sonnet-4-5": "claude-sonnet-4-5@20250929",
        "claude-sonnet-4-6": "claude-sonnet-4-6",
        "claude-opus-4-5": "claude-opus-4-5@20251101",
        "claude-opus-4-6": "claude-opus-4-6",
        "claude-opus-4-7": "claude-opus-4-7",
    },
}

_ARN = re.compile(r"^arn:[^/]*/")  # arn:aws:bedrock:REGION:ACCOUNT:inference-profile/ID
_REGION = re.compile(r"^[a-z]{2,6}(?:-[a-z]+)?\.(?=anthropic\.)")  # us. eu. apac. global. us-gov.
_VERSION = re.compile(r"-v\d+(?::\d+)?$")
_DATE = re.compile(r"-\d{8}$")


def bare(platform: str, model_id: str) -> str:
    """``model_id`` without what varies between callers of one model (see the module's docstring)."""
    if platform == "bedrock":
        return _REGION.sub("", _ARN.sub("", model_id))
    if platform == "vertex":
        return model_id.partition("@")[0]
    return model_id


def canonical(platform: str, model_id: str) -> str:
    """The Anthropic-style name an id spells (``anthropic.claude-haiku-4-5-20251001-v1:0`` ->
    ``claude-haiku-4-5``): what an id the policy does not list may still be."""
    name = bare(platform, model_id)
    if platform == "bedrock":
        name = _VERSION.sub("", name.removeprefix("anthropic."))
    return _DATE.sub("", name)


def model_name_of(platform: str, model_id: str, ids: Mapping[str, str], known: Iterable[str]) -> str | None:
    """The model ``model_id`` names on ``platform``: the one ``ids`` maps to it, else the model of
    ``known`` it spells; None when it is neither."""
    wanted = bare(platform, model_id)
    for name, mapped in ids.items():
        if bare(platform, mapped) == wanted:
            return name
    guess = canonical(platform, model_id)
    return guess if guess in set(known) else None
