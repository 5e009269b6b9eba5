"""The GPU check, prepared to run in minutes on a CUDA machine (bench/gpu_check.sh installs what it
needs there, then runs this): which execution provider really runs the shipped models (TensorRT ->
CUDA -> CPU, each probed on the real model, as the server does), how fast the shipped models run
(IO binding as served; fp16 kernels where TensorRT allows them with --fp16), a camera-rate stream
through the real server (Kinetix-class: 2048x2048 uint16 at --stream-fps), and the GPU memory in
use. Prints one JSON object.

On a machine without a GPU it runs the same paths on the CPU (with --quick: small frames, short
runs), which is how the tests keep it working; its figures then describe that CPU.

    python bench/gpu_check.py [--provider tensorrt|cuda|cpu] [--fp16] [--seconds 10]
                              [--denoise-px 2048] [--localise-px 64 512] [--stream-fps 80] [--quick]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import time

import numpy as np
from _common import livescope_server, log

from livescope.camera import CameraCalibration
from livescope.client import Result, StreamClient
from livescope.repository import ModelRepository, shipped_models_root
from livescope.server.models import LoadedModel
from livescope.server.offline_localise import localise_frames
from livescope.server.providers import RuntimeOptions, gpu_build_problem

QUICK = dict(seconds=1.0, denoise_px=256, localise_px=[32, 64], stream_px=256, stream_fps=10.0, stream_seconds=2.0)


def gpu_memory_mib() -> dict | None:
    """Used and total memory of GPU 0 by nvidia-smi (None without one)."""
    if shutil.which("nvidia-smi") is None:
        return None
    out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.used,memory.total", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, timeout=30, check=False).stdout.strip().splitlines()
    if not out:
        return None
    name, used, total = (v.strip() for v in out[0].split(","))
    return {"name": name, "used_mib": float(used), "total_mib": float(total)}


def per_second(run, seconds: float) -> dict:
    """Calls of ``run`` (after one warm-up) for about ``seconds``: calls/s and the median call, ms."""
    run()
    times = []
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(times) < 3:
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return {"per_s": round(len(times) / sum(times), 2), "median_ms": round(float(np.median(times)) * 1e3, 2),
            "calls": len(times)}


def denoise_speed(options: RuntimeOptions, px: int, seconds: float) -> dict:
    model = LoadedModel.load(ModelRepository([shipped_models_root()]).resolve("denoise"), options)
    frame = np.random.default_rng(0).poisson(30.0, (1, px, px)).astype(np.float32)  # photons (camera-agnostic)
    return {"model": model.ref, "provider": model.provider, "frame_px": px,
            **per_second(lambda: model.run_frames(frame), seconds)}


def localise_speed(options: RuntimeOptions, px: int, seconds: float) -> dict:
    model = LoadedModel.load(ModelRepository([shipped_models_root()]).resolve("localise"), options)
    movie = np.random.default_rng(1).poisson(20.0, (8, px, px)).astype(np.float32)
    timing = per_second(lambda: localise_frames(model, movie, 100.0), seconds)
    return {"model": model.ref, "provider": model.provider, "frame_px": px,
            "frames_per_s": round(timing["per_s"] * len(movie), 1), "movie_median_ms": timing["median_ms"]}


def stream(provider: str | None, px: int, fps: float, seconds: float) -> dict:
    """uint16 frames submitted at ``fps`` (latest mode: a camera never waits) through a real server."""
    frame = (np.random.default_rng(2).poisson(30.0, (px, px)) + 100).astype(np.uint16)
    extra = ["--provider", provider] if provider else []
    with livescope_server(*extra) as address, StreamClient(address, pipeline=["denoise"], mode="latest",
                                                           camera=CameraCalibration(baseline_adu=100, e_per_adu=1.0),
                                                           max_in_flight=4) as client:
        client.connect()
        latencies, t0, sent = [], time.perf_counter(), 0
        while (now := time.perf_counter()) - t0 < seconds:
            if sent < (now - t0) * fps:
                client.submit(frame)
                sent += 1
            while (outcome := client.next_outcome(0)) is not None:
                if isinstance(outcome, Result) and outcome.round_trip_ms is not None:
                    latencies.append(outcome.round_trip_ms)
            time.sleep(0.0005)
        client.wait_idle(timeout_s=30)
        for outcome in client.outcomes():
            if isinstance(outcome, Result) and outcome.round_trip_ms is not None:
                latencies.append(outcome.round_trip_ms)
        stats = client.stats
    return {"frame_px": px, "target_fps": fps, "seconds": seconds, "submitted": sent, "results": len(latencies),
            "delivered_fps": round(len(latencies) / seconds, 1),
            "dropped": stats.dropped_by_client + stats.dropped_by_server,
            "sent_through_shared_memory": stats.sent_through_shared_memory,
            "latency_p50_ms": round(float(np.percentile(latencies, 50)), 1) if latencies else None,
            "latency_p99_ms": round(float(np.percentile(latencies, 99)), 1) if latencies else None}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--provider", choices=("tensorrt", "cuda", "cpu"), default=None, help="default: probe")
    ap.add_argument("--fp16", action="store_true", help="TensorRT: allow fp16 kernels")
    ap.add_argument("--seconds", type=float, default=10.0, help="each speed measurement")
    ap.add_argument("--denoise-px", type=int, default=2048)
    ap.add_argument("--localise-px", type=int, nargs="+", default=[64, 512])
    ap.add_argument("--stream-px", type=int, default=2048)
    ap.add_argument("--stream-fps", type=float, default=80.0, help="Kinetix-class: 2048x2048 at 80+ frames/s")
    ap.add_argument("--stream-seconds", type=float, default=20.0)
    ap.add_argument("--quick", action="store_true", help=f"a CPU smoke run: {QUICK}")
    args = ap.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    return args


def check(args: argparse.Namespace) -> dict:
    import onnxruntime as ort

    options = RuntimeOptions(provider=args.provider, fp16=args.fp16)
    log(f"providers available: {ort.get_available_providers()}")
    result: dict = {"machine": platform.node(), "onnxruntime": ort.__version__,
                    "providers_available": ort.get_available_providers(), "gpu_build_problem": gpu_build_problem(),
                    "fp16": args.fp16}
    result["denoise"] = denoise_speed(options, args.denoise_px, args.seconds)
    log(f"denoise: {result['denoise']}")
    result["localise"] = [localise_speed(options, px, args.seconds) for px in args.localise_px]
    log(f"localise: {result['localise']}")
    result["stream"] = stream(args.provider, args.stream_px, args.stream_fps, args.stream_seconds)
    log(f"stream: {result['stream']}")
    result["gpu"] = gpu_memory_mib()
    return result


def main() -> None:
    print(json.dumps(check(parse_args()), indent=1))


if __name__ == "__main__":
    main()
