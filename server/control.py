"""Carrying out one control request: the command's arguments checked against its signature and
annotations, and every failure answered in the command's terms (never a Python call error, never
pydantic's text, never the control thread's death)."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable

from pydantic import ValidationError, validate_call

from livescope.protocol import ControlReply, ControlRequest
from livescope.server.models import ModelLoadError
from livescope.validation import first_error

log = logging.getLogger("livescope.server")

Command = Callable[..., dict]


def execute(req: ControlRequest, command: Command | None, commands: list[str]) -> ControlReply:
    """Run ``command`` (None: the server has none by that name) with the request's arguments."""
    def refuse(error: str) -> ControlReply:
        return ControlReply(request_id=req.request_id, ok=False, error=error)

    if command is None:
        return refuse(f"unknown command {req.command!r}; commands: {', '.join(commands)}")
    problem = argument_problem(req.command, command, req.args)
    if problem is not None:
        return refuse(problem)
    try:
        return ControlReply(request_id=req.request_id, ok=True, data=_validated(command)(**req.args))
    except ValidationError as e:  # an argument of the wrong type, or a setting out of range
        return refuse(f"{req.command}: {first_error(e)}")
    except (TypeError, ValueError, LookupError, ModelLoadError) as e:
        return refuse(str(e))
    except Exception:  # a bug costs this request its answer's detail, never the (control) thread
        log.exception("internal error in control command %s", req.command)
        return refuse(f"internal error in {req.command}; the server logged it")


def argument_problem(name: str, command: Command, args: dict) -> str | None:
    """What is wrong with a request's argument names, in the command's terms; None if nothing."""
    params = inspect.signature(command).parameters
    unknown = sorted(set(args) - set(params))
    if unknown:
        takes = ", ".join(params) or "no arguments"
        return f"{name} takes {takes}; unknown: {', '.join(repr(a)[:40] for a in unknown[:5])}"
    missing = [p for p, spec in params.items() if spec.default is inspect.Parameter.empty and p not in args]
    if missing:
        return f"{name} needs {', '.join(missing)}"
    return None


@functools.cache
def _validated(command: Command) -> Command:
    """The command with its arguments checked against its annotations (a ValidationError names the field)."""
    return validate_call(command)
