"""Deploying a newly trained version into a running server: register it, then hot-swap it in only
if it passed the quality gate (its card's ``gate``) and is not worse than the version it would
replace.

The evidence is the card's ``comparison``: the trainer scored the version that was active when
training started on the new version's own held-out data, with the same metric (models/compare.py).
The server then re-reads its repositories (the new version must be in one of them), and the new
version is activated (loaded completely first, then switched atomically: frames in flight finish on
the old one) when it is not worse, or when forced. When it is not activated, the version it would
have replaced is pinned as the active one, so that a stage that has not served yet does not pick up
the newest version by default.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from livescope.client import ControlError, ServerUnreachableError, StreamClient
from livescope.modelcard import ModelCard

DEPLOY_TIMEOUT_S = 300.0  # loading (and, on a GPU, building a TensorRT engine) takes a while


class DeployError(Exception):
    """One-line, user-facing: the version was written but could not be registered or activated."""


class ActiveVersion(BaseModel):
    model_config = ConfigDict(frozen=True)

    ref: str
    folder: str  # on the server's machine (deploying is done on the rig, against its own server)
    candidate: bool = False  # it failed the quality gate and serves because it was activated by force


class DeployOutcome(BaseModel):
    model_config = ConfigDict(frozen=True)

    model: str
    activated: bool
    active: str | None  # the stage's active version after deploying
    previous: str | None
    reason: str


def _call(server: str, command: str, timeout_s: float = 10.0, **args: object) -> dict:
    client = StreamClient(server)
    try:
        client.connect(timeout_s=3.0)
        return client.control(command, timeout_s=timeout_s, **args)
    except ServerUnreachableError as e:
        raise DeployError(str(e)) from None
    except (ControlError, TimeoutError) as e:
        raise DeployError(f"{command}: {e}") from None
    finally:
        client.close(timeout_s=0)


def active_version(server: str, name: str) -> ActiveVersion | None:
    """The version of ``name`` the server serves (or would serve) now; None if it has none."""
    for m in _call(server, "list_models")["models"]:
        if m["name"] == name and m["active"]:
            gate = m.get("gate")  # absent from servers older than the gate
            return ActiveVersion(ref=f"{m['name']}@{m['version']}", folder=m["folder"],
                                 candidate=bool(gate) and not gate.get("passed", True))
    return None


def deploy(server: str, card: ModelCard, *, force: bool = False) -> DeployOutcome:
    """Register ``card``'s version in the server at ``server`` and activate it if the gate allows."""
    # Before the rescan: a stage that has not served yet counts its newest version as active,
    # which after the rescan would be the new version itself.
    current = active_version(server, card.name)
    listed = _call(server, "rescan")["models"]
    if card.version not in listed.get(card.name, []):
        raise DeployError(f"the server at {server} does not see {card.ref} after re-reading its model "
                          f"repositories: start it with --models pointing at the repository it was written to")
    previous = current.ref if current is not None and current.ref != card.ref else None
    comparison = card.comparison
    if not card.serves_by_default:  # the quality gate: checked first, whatever else holds
        allowed, reason = force, f"failed the quality gate: {card.gate.reason}"
    elif previous is None:
        allowed, reason = True, "no other version of this model is active"
    elif comparison is None:
        allowed, reason = force, f"no held-out comparison with {previous} was made"
    elif comparison.against != previous:
        allowed, reason = force, (f"it was compared with {comparison.against}, but {previous} is active now")
    else:
        allowed, reason = comparison.not_worse or force, comparison.summary()
    if not allowed:
        if previous is not None:  # pin: see the docstring; a candidate serving by force stays so
            pin = {"force": True} if current.candidate else {}
            _call(server, "activate", timeout_s=DEPLOY_TIMEOUT_S, model=previous, **pin)
        return DeployOutcome(model=card.ref, activated=False, active=previous, previous=previous,
                             reason=f"{reason}; not activated (--force activates it anyway)")
    args = {"force": True} if not card.serves_by_default else {}
    data = _call(server, "activate", timeout_s=DEPLOY_TIMEOUT_S, model=card.ref, **args)
    if force and (not card.serves_by_default or (comparison is not None and not comparison.not_worse)):
        reason += "; activated because forced"
    return DeployOutcome(model=card.ref, activated=True, active=data["active"], previous=previous,
                         reason=reason)
