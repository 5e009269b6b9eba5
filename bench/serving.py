"""Serving overhead: frames/s through `livescope serve` against bare onnxruntime `session.run`.

Both sides run the same model (`denoise@1`) on the same frames with the same onnxruntime
settings: the same execution provider, `--threads N` for the server and `intra_op_num_threads=N`
for the bare session, and the server's own session options (full graph optimisation, no
spinning idle threads). The server path is the real one: a `StreamClient` with 2 frames in
flight -> `livescope serve` subprocess (headers validated, micro-batcher, model run, results
published) -> result back in the client. The bare side calls `session.run` on one frame at a
time in this process. Runs alternate (A B A B ...) and medians are compared, so drifting
machine load hits both alike.

Added latency (at the first size): frames sent one at a time; each round trip (submit ->
result in hand) minus the median bare compute time of one frame, measured alternately.

    python bench/serving.py [--sizes 512 2048] [--repeats 3] [--seconds 2] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import onnxruntime as ort
from _common import livescope_server, median, stream_all

from livescope.client import Result, StreamClient
from livescope.repository import ModelRepository, shipped_models_root

MODEL = "denoise"
IN_FLIGHT = 2
_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
              "tensorrt": "TensorrtExecutionProvider"}


def bare_session(onnx_path: str, threads: int, provider: str) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(onnx_path, so, providers=[_PROVIDERS[provider]])


def bare_fps(sess: ort.InferenceSession, frames: list[np.ndarray]) -> float:
    name = sess.get_inputs()[0].name
    t0 = time.perf_counter()
    for f in frames:
        sess.run(None, {name: f[None, None]})
    return len(frames) / (time.perf_counter() - t0)


def served_fps(client: StreamClient, frames: list[np.ndarray]) -> float:
    t0 = time.perf_counter()
    stream_all(client, frames)
    return len(frames) / (time.perf_counter() - t0)


def latency(client: StreamClient, sess: ort.InferenceSession, frames: list[np.ndarray],
            n: int) -> dict:
    """Round trips of single frames against bare compute of the same frames, alternately."""
    name = sess.get_inputs()[0].name
    compute_ms, round_trip_ms, server_model_ms, server_total_ms = [], [], [], []
    for i in range(n):
        f = frames[i % len(frames)]
        t0 = time.perf_counter()
        sess.run(None, {name: f[None, None]})
        compute_ms.append((time.perf_counter() - t0) * 1e3)
        t0 = time.perf_counter()
        client.submit(f)
        o = client.next_outcome(60)
        round_trip_ms.append((time.perf_counter() - t0) * 1e3)
        assert isinstance(o, Result), o
        server_model_ms.append(o.header.latency.inference_ms)
        server_total_ms.append(o.header.latency.total_ms)
    bare = median(compute_ms)
    added = np.array(round_trip_ms) - bare
    outside_model = np.array(round_trip_ms) - np.array(server_model_ms)
    return {
        "frames": n,
        "bare_compute_ms_p50": round(bare, 3),
        "bare_compute_ms_p99": round(float(np.percentile(compute_ms, 99)), 3),
        "round_trip_ms_p50": round(median(round_trip_ms), 3),
        "added_ms_p50": round(float(np.percentile(added, 50)), 3),
        "added_ms_p99": round(float(np.percentile(added, 99)), 3),
        # the same, against the server's own measured model time for that very frame
        "outside_model_ms_p50": round(float(np.percentile(outside_model, 50)), 3),
        "outside_model_ms_p99": round(float(np.percentile(outside_model, 99)), 3),
        "server_inference_ms_p50": round(median(server_model_ms), 3),
        "server_total_ms_p50": round(median(server_total_ms), 3),
    }


def make_frames(size: int, n: int = 4) -> list[np.ndarray]:
    """Noisy camera frames in the model's range (offset 95 ADU, a few photons)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    clean = 95 + 200 * (1 + np.sin(xx / 9.0) * np.cos(yy / 13.0))
    return [rng.poisson(clean).astype(np.uint16) for _ in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 2048])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=2.0, help="target length of one run")
    ap.add_argument("--min-frames", type=int, default=3, help="fewest frames in one run")
    ap.add_argument("--latency-frames", type=int, default=200)
    ap.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                    help="onnxruntime intra-op threads, both sides")
    ap.add_argument("--provider", default="cpu", choices=sorted(_PROVIDERS))
    args = ap.parse_args()

    version = ModelRepository([shipped_models_root()]).resolve(MODEL)
    sess = bare_session(str(version.onnx_path), args.threads, args.provider)
    report: dict = {"benchmark": "serving", "model": version.ref, "provider": args.provider,
                    "threads": args.threads, "in_flight_frames": IN_FLIGHT,
                    "machine": f"{platform.machine()} {os.cpu_count()} cpus",
                    "onnxruntime": ort.__version__, "sizes": {}}
    with livescope_server("--provider", args.provider, threads=args.threads) as address:
        client = StreamClient(address, pipeline=[MODEL], max_in_flight=IN_FLIGHT)
        client.connect(timeout_s=60)
        for k, size in enumerate(args.sizes):
            frames = make_frames(size)
            probe = bare_fps(sess, frames[:2])  # warm-up and sizing, both sides
            served_fps(client, frames[:2])
            n = max(args.min_frames, int(probe * args.seconds))
            run_frames = [frames[i % len(frames)] for i in range(n)]
            bare, ours = [], []
            for _ in range(args.repeats):
                bare.append(bare_fps(sess, run_frames))
                ours.append(served_fps(client, run_frames))
            entry = {
                "frames_per_run": n,
                "bare_onnxruntime_fps": round(median(bare), 2),
                "livescope_fps": round(median(ours), 2),
                "ratio": round(median(ours) / median(bare), 3),
                "ratio_per_repeat": [round(o / b, 3) for o, b in zip(ours, bare)],
            }
            if k == 0:
                entry["latency"] = latency(client, sess, frames, args.latency_frames)
            report["sizes"][f"{size}x{size}"] = entry
        client.close()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
