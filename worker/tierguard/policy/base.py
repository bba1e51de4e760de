"""What every policy section is built from: strict frozen models, checks shared by fields, errors by path."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, ValidationError

CATEGORY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")


def valid_category(name: object) -> bool:
    return isinstance(name, str) and CATEGORY_NAME.fullmatch(name) is not None


def unit(v: float | None) -> float | None:
    """A field validator: ``v`` (when given) lies in [0, 1]."""
    if v is not None and not 0.0 <= v <= 1.0:
        raise ValueError("must be between 0 and 1")
    return v


def error_lines(err: ValidationError) -> list[str]:
    """One ``path: reason`` line per problem pydantic found."""
    out = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-"))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        out.extend(f"{path}: {line}" if path else line for line in msg.split("\n"))
    return out


class Strict(BaseModel):
    """A policy section: unknown keys are errors, values never change after loading."""

    model_config = ConfigDict(extra="forbid", frozen=True)
