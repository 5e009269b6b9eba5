"""`livescope models {list,activate,load,unload,rescan}`, `livescope status` and `livescope keys
generate`: a server's model versions and health (control requests), a repository's versions
(no server), and CURVE keys."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from livescope.cli._common import DEFAULT_SERVER, ServerOpt, control, fail, read_reply

models_app = typer.Typer(no_args_is_help=True, help="Model versions: list (a repository's or a server's), "
                                                    "load, activate (hot-swap), unload, rescan.")
keys_app = typer.Typer(no_args_is_help=True, help="CURVE keys for serving beyond this machine.")


def status(server: ServerOpt = DEFAULT_SERVER) -> None:
    """Show a running server's health and counters."""
    from rich.console import Console
    from rich.table import Table

    from livescope.cli._replies import Health, Stats

    health, stats = control(server, "health", reply=Health), control(server, "stats", reply=Stats)
    table = Table(title=f"livescope server at {server}", show_header=False)
    table.add_row("status", health.status)
    table.add_row("providers", ", ".join(health.providers) or "-")
    table.add_row("models loaded", ", ".join(health.models_loaded) or "-")
    for key in ("frames", "results", "errors", "busy", "dropped", "duplicates", "out_of_domain", "undelivered_replies",
                "undelivered_publications", "queue_depth", "streams"):
        table.add_row(key.replace("_", " "), str(getattr(stats, key)))
    table.add_row("uptime", f"{stats.uptime_s:.0f} s")
    Console().print(table)


@models_app.command("list")
def models_list(
    models: Annotated[Optional[Path], typer.Option(
        "--models", help="List this repository and the shipped models, no server needed: every version, its "
                         "lineage and the version a server would serve (the newest).")] = None,
    server: Annotated[Optional[str], typer.Option(
        "--server", help=f"List what this running server has loaded and active (the default without "
                         f"--models, at {DEFAULT_SERVER}).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the listing as JSON, for scripts.")] = False,
) -> None:
    """List model versions, their held-out metrics and lineage (--models DIR: no server needed).

    Without --models: a running server's versions (--server), with what it has loaded and active."""
    from livescope.cli._listing import print_listing, repository_listing, server_listing

    if models is not None and server is not None:
        fail("give --models (list a repository) or --server (list a running server), not both")
    if models is not None:
        if not models.is_dir():
            fail(f"--models {models} is {'a file' if models.exists() else 'missing'}, not a folder")
        from livescope.repository import shipped_models_root

        listing = repository_listing([shipped_models_root(), models])
    else:
        from livescope.cli._replies import ModelList

        server = server or DEFAULT_SERVER
        data = control(server, "list_models")
        read_reply(server, "list_models", data, ModelList)  # what server_listing reads is there
        listing = server_listing(server, data)
    if as_json:
        typer.echo(listing.model_dump_json(indent=2))
    else:
        from rich.console import Console

        print_listing(listing, Console())
    for problem in listing.problems:
        typer.echo(f"warning: {problem}", err=True)


ModelRefArg = Annotated[str, typer.Argument(help="NAME@VERSION, e.g. denoise@2.")]


@models_app.command("activate")
def models_activate(
    model: ModelRefArg, server: ServerOpt = DEFAULT_SERVER,
    force: Annotated[bool, typer.Option(
        "--force", help="Serve a candidate: a version that failed the quality gate (its card says why).")] = False,
) -> None:
    """Load a version completely, then switch its stage to it atomically (hot-swap).

    Frames already on their way finish on the version they started with; if loading fails, the
    active version stays in service."""
    from livescope.cli._replies import Activated

    args = {"force": True} if force else {}  # a server from before the gate takes no force
    data = control(server, "activate", timeout_s=300.0, reply=Activated, model=model, **args)
    typer.echo(f"active: {data.active} (was {data.previous})")


@models_app.command("rollback")
def models_rollback(
    name: Annotated[str, typer.Argument(help="The model's name, e.g. denoise.")],
    server: ServerOpt = DEFAULT_SERVER,
) -> None:
    """Serve again the version that was active before the current one (after an activation or a
    live adaptation you do not want); loaded completely first, then switched atomically."""
    from livescope.cli._replies import Activated

    data = control(server, "rollback", timeout_s=300.0, reply=Activated, model=name)
    typer.echo(f"active: {data.active} (rolled back from {data.previous})")


@models_app.command("load")
def models_load(model: ModelRefArg, server: ServerOpt = DEFAULT_SERVER) -> None:
    """Load a version (warm it up) without activating it."""
    from livescope.cli._replies import Loaded

    data = control(server, "load", timeout_s=300.0, reply=Loaded, model=model)
    typer.echo(f"loaded {data.model} on {data.provider} in {data.load_s:.2f} s")


@models_app.command("unload")
def models_unload(model: ModelRefArg, server: ServerOpt = DEFAULT_SERVER) -> None:
    """Free a loaded version that is not active."""
    from livescope.cli._replies import Unloaded

    typer.echo(f"unloaded {control(server, 'unload', reply=Unloaded, model=model).unloaded}")


@models_app.command("rescan")
def models_rescan(server: ServerOpt = DEFAULT_SERVER) -> None:
    """Re-read the model repositories (new versions become loadable; nothing is activated)."""
    from livescope.cli._replies import Rescanned

    data = control(server, "rescan", reply=Rescanned)
    for name, versions in data.models.items():
        typer.echo(f"{name}: versions {', '.join(map(str, versions))}")
    for problem in data.problems:
        typer.echo(f"warning: {problem}", err=True)


@keys_app.command("generate")
def keys_generate(
    folder: Annotated[Path, typer.Argument(help="Where to write NAME.key and NAME.key_secret.")],
    name: Annotated[str, typer.Option(help="Key name, e.g. 'server' or a client's name.")] = "server",
) -> None:
    """Create a CURVE key pair. Give the server's .key to clients; put clients' .key files in
    the server's --allow folder."""
    from livescope.security import generate_keys

    if folder.exists() and not folder.is_dir():
        fail(f"{folder} is not a folder")
    try:
        public, secret = generate_keys(folder, name)
    except OSError as e:
        fail(f"cannot write keys to {folder}: {e.strerror or e}")
    typer.echo(f"public key: {public}\nsecret key: {secret} (readable by you alone; keep it private)")
