"""`livescope adapt`: a running server trains a model on a stream's own frames and serves it if it
is better (server/adapt.py does the work; this command starts it and follows it)."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from livescope.cli._common import DEFAULT_SERVER, ServerOpt, control, fail

_POLL_S = 1.0


def adapt(
    task: Annotated[str, typer.Argument(help="What to adapt: denoise.")],
    stream: Annotated[str, typer.Option(help="The running stream whose frames it trains on, e.g. cam1.")],
    minutes: Annotated[float, typer.Option(min=0.1, max=120, help="Training budget, minutes.")] = 3.0,
    frames: Annotated[int, typer.Option(min=8, max=4096, help="Frames of the stream to collect.")] = 64,
    context_frames: Annotated[int, typer.Option(
        "--context-frames", min=1, max=9,
        help="Train a new model from scratch that sees K frames per frame (it and the ones before): 3 for a "
             "time series of one channel and position. 1 (default): fine-tune the active model if it is "
             "camera-agnostic (the stream's neighbouring frames are its targets), else train from scratch.")] = 1,
    wait: Annotated[bool, typer.Option(help="Follow it to the end (else start it and return).")] = True,
    server: ServerOpt = DEFAULT_SERVER,
) -> None:
    """Adapt a model to a running stream: the server collects the stream's next frames, trains a
    new version on them in a separate process while it goes on serving (fine-tuning the active
    version when it is camera-agnostic), scores it and the active version on held-out frames of the
    same stream, and activates it only if it is better.
    `livescope models rollback TASK` returns to the version served before. Exit 0 when the new
    version is active, 1 when it is not (or the adaptation failed)."""
    from livescope.cli._console import console
    from livescope.cli._replies import Adapting

    args = {"context_frames": context_frames} if context_frames > 1 else {}
    status = control(server, "adapt", reply=Adapting, task=task, stream=stream, frames=frames, minutes=minutes,
                     **args)
    how = f"fine-tuning {status.fine_tune_from}" if status.fine_tune_from else "training"
    console.print(f"adapting {status.task} to stream {status.stream!r}: collecting {status.frames_wanted} frames, "
                  f"then {how} for {status.minutes:g} min in a separate process (serving goes on)")
    if not wait:
        return
    shown = status.state
    with console.status(_line(status)) as spinner:
        while status.state in ("collecting", "training"):
            time.sleep(_POLL_S)
            status = control(server, "adapt_status", reply=Adapting)
            spinner.update(_line(status))
            if status.state != shown and status.state == "training":
                console.print(f"collected {status.frames_collected} frames -> {status.data}")
            shown = status.state
    if status.state == "activated":
        console.print(f"{status.model} is active ({status.reason}); `livescope models rollback {status.task}` "
                      "returns to the version before")
        return
    what = f"{status.model} not activated" if status.model else "adaptation failed"
    fail(f"{what}: {status.reason}", code=1)


def _line(status) -> str:
    if status.state == "collecting":
        return f"collecting frames of {status.stream!r}: {status.frames_collected}/{status.frames_wanted}"
    return f"training {status.task} on {status.frames_wanted} frames: {status.elapsed_s:.0f} s"
