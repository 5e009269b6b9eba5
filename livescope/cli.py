"""The `livescope` command. Each command imports its part lazily, so `serve` never loads torch
and `--help` is instant. A user's mistake ends in one line on stderr and a non-zero exit."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, NoReturn, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Deep-learning image restoration inside the microscope's acquisition loop.")
models_app = typer.Typer(no_args_is_help=True, help="Inspect the model repository of a server.")
keys_app = typer.Typer(no_args_is_help=True, help="CURVE keys for serving beyond this machine.")
train_app = typer.Typer(no_args_is_help=True, help="Train a model and add it to a repository.")
app.add_typer(models_app, name="models")
app.add_typer(keys_app, name="keys")
app.add_typer(train_app, name="train")

EXIT_USER_ERROR = 2

ServerOpt = Annotated[str, typer.Option("--server", help="The server's frames address.")]
ModelsOpt = Annotated[Optional[Path], typer.Option(
    "--models", help="Your model repository, searched after the shipped models.")]


def fail(message: str, code: int = EXIT_USER_ERROR) -> NoReturn:
    typer.echo(f"livescope: error: {message}", err=True)
    raise typer.Exit(code)


def _setup_logging(level: str) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(level=level.upper(), format="%(message)s", datefmt="[%X]",
                        handlers=[RichHandler(show_path=False, console=_stderr_console())])


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)


def _default_models_dir() -> Path:
    return Path.home() / ".livescope" / "models"


# -- serve ---------------------------------------------------------------------------------------


@app.command()
def serve(
    frames: Annotated[str, typer.Option(help="ROUTER address for frames and control.")] = "tcp://127.0.0.1:5760",
    results: Annotated[str, typer.Option(help="PUB address for results.")] = "tcp://127.0.0.1:5761",
    metrics_port: Annotated[int, typer.Option(help="Prometheus port on 127.0.0.1; 0 = off.")] = 9760,
    models: ModelsOpt = None,
    provider: Annotated[Optional[str], typer.Option(help="tensorrt, cuda or cpu; default: probe.")] = None,
    threads: Annotated[Optional[int], typer.Option(help="onnxruntime intra-op threads.")] = None,
    max_frame_mb: Annotated[float, typer.Option(help="Largest frame accepted, MiB.")] = 64.0,
    curve_secret: Annotated[Optional[Path], typer.Option(help="Server secret key (.key_secret).")] = None,
    allow: Annotated[Optional[Path], typer.Option(help="Folder of allowed client public keys.")] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning.")] = "info",
) -> None:
    """Run the inference server until Ctrl-C / SIGTERM (in-flight frames are finished first)."""
    import signal

    from pydantic import ValidationError

    from livescope.security import SecurityError
    from livescope.server.config import ServerConfig
    from livescope.server.server import InferenceServer, ServerStartError

    _setup_logging(log_level)
    try:
        config = ServerConfig(
            frames_address=frames, results_address=results, metrics_port=metrics_port or None,
            model_dirs=(models or _default_models_dir(),), provider=provider,
            intra_op_threads=threads, max_frame_bytes=int(max_frame_mb * 2**20),
            curve_secret_key=curve_secret, curve_allowed_clients=allow)
    except ValidationError as e:
        fail(e.errors()[0]["msg"].removeprefix("Value error, "))
    server = InferenceServer(config)
    try:
        server.start()
    except (ServerStartError, SecurityError) as e:
        fail(str(e))
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: server.request_stop())
    print("ready", flush=True)  # a line supervisors (and the demo) wait for
    server.serve_forever()


# -- keys ----------------------------------------------------------------------------------------


@keys_app.command("generate")
def keys_generate(
    folder: Annotated[Path, typer.Argument(help="Where to write NAME.key and NAME.key_secret.")],
    name: Annotated[str, typer.Option(help="Key name, e.g. 'server' or a client's name.")] = "server",
) -> None:
    """Create a CURVE key pair. Give the server's .key to clients; put clients' .key files in
    the server's --allow folder."""
    from livescope.security import generate_keys

    public, secret = generate_keys(folder, name)
    typer.echo(f"public key: {public}\nsecret key: {secret} (keep it private)")


# -- status and models ---------------------------------------------------------------------------


def _control(server: str, command: str, **args: object) -> dict:
    from livescope.client import ControlError, ServerUnreachableError, StreamClient

    client = StreamClient(server)
    try:
        client.connect(timeout_s=3.0)
        return client.control(command, **args)
    except ServerUnreachableError as e:
        fail(str(e))
    except ControlError as e:
        fail(f"{command}: {e}")
    finally:
        client.close(timeout_s=0)


@app.command()
def status(server: ServerOpt = "tcp://127.0.0.1:5760") -> None:
    """Show a running server's health and counters."""
    from rich.console import Console
    from rich.table import Table

    health, stats = _control(server, "health"), _control(server, "stats")
    table = Table(title=f"livescope server at {server}", show_header=False)
    table.add_row("status", health["status"])
    table.add_row("providers", ", ".join(health["providers"]) or "-")
    table.add_row("models loaded", ", ".join(health["models_loaded"]) or "-")
    for key in ("frames", "results", "errors", "dropped", "duplicates", "queue_depth", "streams"):
        table.add_row(key.replace("_", " "), str(stats[key]))
    table.add_row("uptime", f"{stats['uptime_s']:.0f} s")
    Console().print(table)


@models_app.command("list")
def models_list(server: ServerOpt = "tcp://127.0.0.1:5760") -> None:
    """List the models and versions a running server can serve."""
    from rich.console import Console
    from rich.table import Table

    data = _control(server, "list_models")
    table = Table(title="models")
    for col in ("model", "task", "active", "loaded", "provider", "held-out metrics"):
        table.add_column(col)
    for m in data["models"]:
        metrics = ", ".join(f"{k}={v:.3g}" for k, v in m["metrics"].items())
        table.add_row(f"{m['name']}@{m['version']}", m["task"], "yes" if m["active"] else "",
                      "yes" if m["loaded"] else "", m["provider"] or "", metrics)
    Console().print(table)
    for problem in data["problems"]:
        typer.echo(f"warning: {problem}", err=True)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
