"""One line for a user from a pydantic ValidationError: where (the field's dotted path) and what."""

from __future__ import annotations

from pydantic import ValidationError


def first_error(e: ValidationError) -> str:
    """``loc.of.field: message`` of the first error (``message`` alone for the model as a whole),
    without pydantic's "Value error, " prefix on a validator's own message."""
    err = e.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    return f"{where + ': ' if where else ''}{err['msg'].removeprefix('Value error, ')}"
