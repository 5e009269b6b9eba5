"""`livescope serve`: the inference server in the foreground (`livescope.server`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from livescope.cli._common import ModelsOpt, default_models_dir, fail, setup_logging


def serve(
    frames: Annotated[str, typer.Option(help="ROUTER address for frames and control.")] = "tcp://127.0.0.1:5760",
    results: Annotated[str, typer.Option(help="PUB address for results.")] = "tcp://127.0.0.1:5761",
    metrics_port: Annotated[int, typer.Option(help="Prometheus port on 127.0.0.1; 0 = off.")] = 9760,
    models: ModelsOpt = None,
    provider: Annotated[Optional[str], typer.Option(help="tensorrt, cuda or cpu; default: probe.")] = None,
    threads: Annotated[Optional[int], typer.Option(help="onnxruntime intra-op threads (per worker).")] = None,
    workers: Annotated[int, typer.Option(
        min=1, max=64, help="Inference workers, each with its own sessions: one per GPU (worker i on GPU i), "
        "or on the CPU each with an equal share of the cores.")] = 1,
    fp16: Annotated[bool, typer.Option(help="TensorRT: allow fp16 kernels.")] = False,
    graph_opt: Annotated[str, typer.Option(
        help="onnxruntime graph optimisation: disable, basic, extended, all.")] = "all",
    max_frame_mb: Annotated[float, typer.Option(help="Largest frame accepted, MiB.")] = 64.0,
    max_queued_mb_per_client: Annotated[float, typer.Option(
        min=1, help="Frames one client may have waiting, MiB; beyond it they are refused 'busy'.")] = 256.0,
    batch_max_frames: Annotated[int, typer.Option(min=1, help="Micro-batch size limit.")] = 8,
    batch_wait_ms: Annotated[float, typer.Option(
        min=0, help="Wait this long for more frames to batch; 0 batches what is waiting.")] = 0.0,
    render_px: Annotated[float, typer.Option(
        min=0.1, help="localise streams: the running super-resolution render's pixel, nm.")] = 20.0,
    focus_alarm_um: Annotated[float, typer.Option(
        "--focus-alarm-um", help="psf stage: a frame whose median |defocus| is beyond this says so.")] = 1.0,
    curve_secret: Annotated[Optional[Path], typer.Option(help="Server secret key (.key_secret).")] = None,
    allow: Annotated[Optional[Path], typer.Option(help="Folder of allowed client public keys.")] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning.")] = "info",
) -> None:
    """Run the inference server until Ctrl-C / SIGTERM (in-flight frames are finished first)."""
    import signal

    from pydantic import ValidationError

    from livescope.security import SecurityError
    from livescope.server.config import ServerConfig
    from livescope.server.providers import RuntimeOptions
    from livescope.server.server import InferenceServer, ServerStartError
    from livescope.validation import first_error

    setup_logging(log_level)
    try:
        config = ServerConfig(
            frames_address=frames, results_address=results, metrics_port=metrics_port or None,
            model_dirs=(models or default_models_dir(),),
            runtime=RuntimeOptions(provider=provider, intra_op_threads=threads, fp16=fp16,
                                   graph_optimisation=graph_opt),
            max_frame_bytes=int(max_frame_mb * 2**20),
            max_queued_bytes_per_client=int(max_queued_mb_per_client * 2**20),
            batch_max_frames=batch_max_frames, batch_wait_ms=batch_wait_ms, render_pixel_nm=render_px, workers=workers,
            focus_alarm_um=focus_alarm_um,
            curve_secret_key=curve_secret, curve_allowed_clients=allow)
    except ValidationError as e:
        fail(first_error(e))
    server = InferenceServer(config)
    try:
        server.start()
    except (ServerStartError, SecurityError) as e:
        fail(str(e))
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: server.request_stop())
    print("ready", flush=True)  # a line supervisors (and the demo) wait for
    server.serve_forever()
