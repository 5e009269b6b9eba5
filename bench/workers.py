"""Several inference workers (`serve --workers N`) against one, side by side: frames/s of several
streams sent at once, each client keeping frames in flight, through `livescope serve`.

Both servers run at once on the same machine with 1 onnxruntime thread per worker (so N workers use
N cores), and their runs alternate (1 worker, N workers, 1, N ...): drifting load hits both alike;
medians over --repeats. The identity model measures the serving path (it only copies); the shipped
default denoiser measures compute. Prints JSON.

    python bench/workers.py [--workers 2] [--streams 4] [--frames 24] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time

import numpy as np
from _common import livescope_server, log, median, stream_all

from livescope.camera import CameraCalibration
from livescope.client import StreamClient

MODELS = {"identity": 512, "denoise": 256}  # model -> frame side, px


def run(address: str, model: str, frames: list[np.ndarray], streams: int) -> float:
    """Frames/s of ``streams`` clients, each sending ``frames`` with 4 in flight, at once."""
    clients = [StreamClient(address, pipeline=[model], max_in_flight=4, stream=f"{model}-{i}",
                            camera=CameraCalibration(baseline_adu=100.0, e_per_adu=1.0)) for i in range(streams)]
    for client in clients:
        client.connect(timeout_s=60)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=stream_all, args=(c, frames)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    for client in clients:
        client.close()
    return streams * len(frames) / elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--frames", type=int, default=24, help="frames per stream per run")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    report: dict = {"benchmark": "workers", "workers": args.workers, "streams": args.streams,
                    "frames_per_stream": args.frames,
                    "machine": f"{platform.machine()} {os.cpu_count()} cpus", "models": {}}
    with livescope_server("--workers", "1", threads=1) as one, \
            livescope_server("--workers", str(args.workers), threads=1) as several:
        for model, side in MODELS.items():
            frames = [(100 + rng.poisson(20.0, (side, side))).astype(np.uint16) for _ in range(args.frames)]
            run(one, model, frames[:4], args.streams)  # warm-up: sessions loaded, first-frame costs paid
            run(several, model, frames[:4], args.streams)
            fps: dict[str, list[float]] = {"1": [], str(args.workers): []}
            for r in range(args.repeats):
                fps["1"].append(run(one, model, frames, args.streams))
                fps[str(args.workers)].append(run(several, model, frames, args.streams))
                log(f"{model} repeat {r + 1}: {fps['1'][-1]:.1f} vs {fps[str(args.workers)][-1]:.1f} frames/s")
            m1, mn = median(fps["1"]), median(fps[str(args.workers)])
            report["models"][model] = {
                "frame_px": side, "one_worker_fps": round(m1, 2), f"{args.workers}_workers_fps": round(mn, 2),
                "scaling": round(mn / m1, 3),
                "scaling_per_repeat": [round(b / a, 3) for a, b in zip(fps["1"], fps[str(args.workers)])],
            }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
