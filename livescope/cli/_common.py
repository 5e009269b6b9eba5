"""What every command module shares: the error exit, the options several commands take, logging,
the user's model repository, a control request to a running server, and training's closing report.

Imported by every command module when `livescope` starts, so it imports only typer and the
standard library at module level; parts are imported inside the functions that need them.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, Optional, TypeVar

import typer

if TYPE_CHECKING:
    from pydantic import BaseModel
    from rich.console import Console

    from livescope.repository import ModelVersion

R = TypeVar("R", bound="BaseModel")

EXIT_USER_ERROR = 2
DEFAULT_SERVER = "tcp://127.0.0.1:5760"

ServerOpt = Annotated[str, typer.Option("--server", help="The server's frames address.")]
ModelsOpt = Annotated[Optional[Path], typer.Option(
    "--models", help="Your model repository, searched after the shipped models.")]
DeployOpt = Annotated[bool, typer.Option(
    "--deploy", help="Register the new version in the running server (--server; it must read --models) "
                     "and hot-swap it in if its held-out metric is not worse than the active version's "
                     "on the same held-out data.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="With --deploy: activate the new version even if worse.")]
DeployServerOpt = Annotated[str, typer.Option("--server", help="With --deploy: the server's frames address.")]


def needs_acquisition() -> None:
    """Acquisition's extra (pymmcore-plus, useq-schema) is left out of the plain install: import it
    first, so a missing one is what the command names (`main` says how to install it)."""
    import pymmcore_plus  # noqa: F401
    import useq  # noqa: F401


def fail(message: str, code: int = EXIT_USER_ERROR) -> NoReturn:
    """A user's mistake (or a job that cannot go on): one line on stderr, a non-zero exit."""
    typer.echo(f"livescope: error: {message}", err=True)
    raise typer.Exit(code)


def setup_logging(level: str) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(level=level.upper(), format="%(message)s", datefmt="[%X]",
                        handlers=[RichHandler(show_path=False, console=stderr_console())])


def stderr_console() -> Console:
    from rich.console import Console

    return Console(stderr=True)


def default_models_dir() -> Path:
    return Path.home() / ".livescope" / "models"


def user_repository(models: Path | None) -> Path:
    """The repository a command writes to: --models, or the default; a file there is refused."""
    repository = models or default_models_dir()
    if repository.exists() and not repository.is_dir():
        fail(f"--models {repository} is a file, not a folder")
    return repository


def command_line() -> str:
    """This invocation as `livescope ...`, for a new version's card (its command repeats it)."""
    import shlex

    return shlex.join(["livescope", *sys.argv[1:]])


def control(server: str, command: str, *, timeout_s: float = 5.0, reply: type[R] | None = None,
            **args: object) -> Any:
    """One control request to a running server (Lazy Pirate: the client retries, then gives up);
    its data as a ``reply`` (a pydantic model of the fields the command reads), or as sent.

    An unreachable server or a bad address, a refused request, no reply, and a reply without the
    fields ``reply`` names are each a one-line error."""
    from livescope.client import ControlError, ServerUnreachableError, StreamClient

    client = StreamClient(server)
    try:
        client.connect(timeout_s=3.0)
        data = client.control(command, timeout_s=timeout_s, **args)
    except ServerUnreachableError as e:
        fail(str(e))
    except ControlError as e:
        fail(f"{command}: {e}")
    except TimeoutError:
        fail(f"{command}: no reply from {server} within {timeout_s:g} s")
    finally:
        client.close(timeout_s=0)
    return data if reply is None else read_reply(server, command, data, reply)


def read_reply(server: str, command: str, data: object, reply: type[R]) -> R:
    """``data`` of a server's reply to ``command`` as ``reply``; one that does not fit is a
    one-line error (a different livescope version, or a server's bug), never a traceback."""
    from pydantic import ValidationError

    from livescope.validation import first_error

    try:
        return reply.model_validate(data)
    except ValidationError as e:
        fail(f"{command}: the reply from {server} is not one this livescope can read ({first_error(e)}); "
             "are the server and this command the same livescope version?")


def expand_sessions(paths: list[Path]) -> tuple[list[Path], tuple[str, ...]]:
    """`livescope.session.expand_sessions`, an unreadable or empty session a one-line error."""
    from livescope import session

    try:
        return session.expand_sessions(paths)
    except session.SessionError as e:
        fail(str(e))


# -- training ------------------------------------------------------------------------------------


def version_to_compare(deploy: bool, server: str, name: str, force: bool,
                       repository: Path) -> ModelVersion | None:
    """Before training (a mistake costs no training time), the version the new one must not be
    worse than, which the trainer scores on the new version's held-out data: with --deploy the
    server's active version of ``name``, else the default a server or an offline command on
    ``repository`` (and the shipped models) would pick. None if there is none."""
    from livescope.repository import ModelRepository, ModelVersion, shipped_models_root

    if not deploy:
        if force:
            fail("--force only applies with --deploy")
        return ModelRepository([shipped_models_root(), repository]).default(name)
    from livescope.deploy import DeployError, active_version
    from livescope.modelcard import CARD_FILE, ModelCard

    try:
        active = active_version(server, name)
    except DeployError as e:
        fail(f"--deploy: {e}")
    if active is None:
        return None
    folder = Path(active.folder)
    try:
        return ModelVersion(ModelCard.load(folder / CARD_FILE), folder)
    except (OSError, ValueError) as e:
        fail(f"--deploy: cannot read the active version {active.ref} at {folder}: {e}")


def train_and_report(name: str, repository: Path, train: Callable[[Callable], tuple[Path, Any]], *,
                     deploy_to: str | None = None, force: bool = False) -> None:
    """Run ``train(progress)`` (it writes a new version into ``repository``) under a progress bar;
    print the held-out metrics, the folder, with ``deploy_to`` register it in that server and
    activate it if the gate allows, and last on stdout print the new version's NAME@VERSION."""
    from livescope.cli._console import console, training_progress
    from livescope.models import export

    repository.mkdir(parents=True, exist_ok=True)
    with training_progress(f"training {name}") as report:
        try:
            folder, card = train(report)
        except export.ExportError as e:
            fail(str(e), code=1)
    for key, value in card.metrics.items():
        console.print(f"  {key}: {value:.4g}")
    console.print(f"wrote {folder}")
    if card.comparison is not None:
        console.print(f"compared: {card.comparison.summary()}")
    if deploy_to is not None:
        from livescope.deploy import DeployError, deploy

        try:
            outcome = deploy(deploy_to, card, force=force)
        except DeployError as e:
            fail(f"{card.ref} was written but not deployed: {e}", code=1)
        verb = "activated" if outcome.activated else "registered, NOT activated"
        console.print(f"deploy: {card.ref} {verb} in {deploy_to} ({outcome.reason}); active: {outcome.active}")
    typer.echo(card.ref)
    if not card.serves_by_default:
        fail(f"{card.ref} failed the quality gate: {card.gate.reason}; it is kept as a candidate, not served "
             f"by default (`livescope models activate {card.ref} --force` serves it)", code=1)
