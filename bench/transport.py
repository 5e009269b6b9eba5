"""Transport overhead: livescope's client -> server -> result path against bare pyzmq.

Both sides move the same bytes the same way: each uint16 frame goes to another process and
comes back whole, with the same window of frames in flight. livescope runs its real server
(`livescope serve`, identity model on onnxruntime, headers validated, results published);
the baseline is a PUSH/PULL echo process. The server's mean model run time is reported next
to the difference in ms per frame: the identity model really copies the frame, which the
echo never does. Runs alternate (A B A B ...) and medians are
compared, so drifting machine load hits both alike. Prints JSON.

    python bench/transport.py [--sizes 512 2048] [--repeats 5] [--seconds 2]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import time

import numpy as np
import zmq

from _common import free_port, livescope_server, median
from livescope.client import Result, StreamClient

WINDOW = 4  # frames in flight, both sides


def _echo(pull_addr: str, push_addr: str) -> None:
    ctx = zmq.Context()
    pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    pull.bind(pull_addr)
    push.bind(push_addr)
    while True:
        msg = pull.recv(copy=False)
        if len(msg) == 0:
            return
        push.send(msg, copy=False)


def bare_fps(frame: np.ndarray, n: int, push: zmq.Socket, pull: zmq.Socket) -> float:
    t0 = time.perf_counter()
    for _ in range(WINDOW):
        push.send(frame, copy=False)
    for i in range(n):
        out = pull.recv(copy=False)
        np.frombuffer(out.buffer, dtype=frame.dtype)  # what a client would do with it
        if i + WINDOW < n:
            push.send(frame, copy=False)
    return n / (time.perf_counter() - t0)


def livescope_fps(frame: np.ndarray, n: int, client: StreamClient) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        client.submit(frame)
        while (o := client.next_outcome(0)) is not None:
            assert isinstance(o, Result)
    for o in client.outcomes():
        assert isinstance(o, Result)
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 2048])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=2.0, help="target length of one run")
    args = ap.parse_args()

    pull_addr, push_addr = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    echo = mp.get_context("spawn").Process(target=_echo, args=(pull_addr, push_addr), daemon=True)
    echo.start()
    ctx = zmq.Context()
    push, pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    push.connect(pull_addr)
    pull.connect(push_addr)

    report: dict = {"benchmark": "transport", "window_frames": WINDOW,
                    "machine": f"{platform.machine()} {mp.cpu_count()} cpus", "sizes": {}}
    with livescope_server(threads=1) as address:
        client = StreamClient(address, pipeline=["identity"], max_in_flight=WINDOW)
        client.connect(timeout_s=30)
        for size in args.sizes:
            rng = np.random.default_rng(0)
            frame = rng.integers(0, 4096, (size, size), dtype=np.uint16)
            mb = frame.nbytes / 1e6
            probe = bare_fps(frame, 20, push, pull)  # warm-up and sizing
            livescope_fps(frame, 20, client)
            n = max(20, int(probe * args.seconds))
            bare, ours = [], []
            before = client.control("stats")["inference"].get(
                "identity@1", {"frames": 0, "mean_ms_per_frame": 0})
            for _ in range(args.repeats):
                bare.append(bare_fps(frame, n, push, pull))
                ours.append(livescope_fps(frame, n, client))
            after = client.control("stats")["inference"]["identity@1"]
            model_ms = ((after["mean_ms_per_frame"] * after["frames"]
                         - before["mean_ms_per_frame"] * before["frames"])
                        / (after["frames"] - before["frames"]))
            report["sizes"][f"{size}x{size}"] = {
                "frames_per_run": n,
                "bare_pyzmq_fps": round(median(bare), 1),
                "livescope_fps": round(median(ours), 1),
                "bare_pyzmq_MBps": round(median(bare) * mb, 1),
                "livescope_MBps": round(median(ours) * mb, 1),
                "ratio": round(median(ours) / median(bare), 3),
                # The identity model's own run inside the server (a real onnxruntime copy of the
                # frame), which the bare echo does not do; compare with the difference in ms/frame.
                "server_model_run_ms_mean": round(model_ms, 3),
                "ms_per_frame_difference": round(1e3 / median(ours) - 1e3 / median(bare), 3),
                "ratio_per_repeat": [round(o / b, 3) for o, b in zip(ours, bare)],
            }
        client.close()
    push.send(b"")
    echo.join(5)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
