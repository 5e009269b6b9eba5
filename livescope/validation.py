"""One line for a user from an error: a pydantic ValidationError's where (the field's dotted path) and
what, or any exception's first line."""

from __future__ import annotations

from pydantic import ValidationError


def first_error(e: ValidationError) -> str:
    """``loc.of.field: message`` of the first error (``message`` alone for the model as a whole),
    without pydantic's "Value error, " prefix on a validator's own message."""
    err = e.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    return f"{where + ': ' if where else ''}{err['msg'].removeprefix('Value error, ')}"


def first_line(e: BaseException) -> str:
    """The first line of ``e``'s message, or its type's name when it has none."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
