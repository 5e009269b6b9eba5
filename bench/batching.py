"""Batching on and off, side by side, at 1, 2, 4 and 8 frames in flight: frames/s and each frame's
round trip (submit -> result in hand), p50 and p99, through `livescope serve` with the default model.

"on" is the server's default (`--batch-max-frames 8`: it batches waiting frames only where batches
cost clearly less per frame, learned from its own timings, server/batching.py); "off" is
`--batch-max-frames 1`. Both servers run at once on the same machine and their runs alternate
(on, off, on, off ...), so drifting load hits both alike; medians over --repeats.

    python bench/batching.py [--size 256] [--frames 48] [--repeats 3] [--in-flight 1 2 4 8]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
from _common import livescope_server, log, median

from livescope.camera import CameraCalibration
from livescope.client import Result, StreamClient


def run(address: str, frames: list[np.ndarray], in_flight: int) -> dict:
    """Stream ``frames`` keeping ``in_flight`` in flight; frames/s and round trips, ms."""
    with StreamClient(address, pipeline=["denoise"], max_in_flight=in_flight,
                      camera=CameraCalibration(baseline_adu=100.0, e_per_adu=1.0)) as client:
        client.connect(timeout_s=60)
        sent_at: dict[int, float] = {}
        trips: list[float] = []
        batches: list[int] = []
        t0 = time.perf_counter()
        for frame in frames:
            seq = client.submit(frame)
            sent_at[seq] = time.perf_counter()
            while (o := client.next_outcome(0)) is not None:
                _take(o, sent_at, trips, batches)
        for o in client.outcomes(timeout_s=300):
            _take(o, sent_at, trips, batches)
        seconds = time.perf_counter() - t0
    return {"fps": len(trips) / seconds, "p50_ms": float(np.percentile(trips, 50)),
            "p99_ms": float(np.percentile(trips, 99)), "mean_batch": float(np.mean(batches))}


def _take(outcome, sent_at: dict[int, float], trips: list[float], batches: list[int]) -> None:
    assert isinstance(outcome, Result), outcome
    trips.append((time.perf_counter() - sent_at[outcome.seq]) * 1e3)
    batches.append(outcome.header.latency.batch_size)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--frames", type=int, default=48, help="frames per run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--in-flight", type=int, nargs="+", default=[1, 2, 4, 8])
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    frames = [(rng.poisson(30.0, (args.size, args.size)) + 100).astype(np.uint16) for _ in range(8)]
    stream = [frames[i % len(frames)] for i in range(args.frames)]
    report: dict = {"benchmark": "batching", "model": "denoise (the default)", "frame_px": args.size,
                    "frames_per_run": args.frames, "repeats": args.repeats,
                    "machine": f"{platform.machine()} {os.cpu_count()} cpus", "in_flight": {}}
    with livescope_server("--batch-max-frames", "8") as on, livescope_server("--batch-max-frames", "1") as off:
        run(on, stream[:8], 4)  # warm-up: models loaded, the policy's first timings
        run(off, stream[:8], 4)
        for n in args.in_flight:
            results: dict[str, list[dict]] = {"on": [], "off": []}
            for _ in range(args.repeats):
                results["on"].append(run(on, stream, n))
                results["off"].append(run(off, stream, n))
            entry = {side: {key: round(median([r[key] for r in runs]), 2) for key in runs[0]}
                     for side, runs in results.items()}
            entry["p50_ratio_on_over_off"] = round(entry["on"]["p50_ms"] / entry["off"]["p50_ms"], 3)
            entry["fps_ratio_on_over_off"] = round(entry["on"]["fps"] / entry["off"]["fps"], 3)
            report["in_flight"][str(n)] = entry
            log(f"{n} in flight: {entry}")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
