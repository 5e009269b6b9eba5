"""Transport overhead: livescope's client -> server -> result path against bare pyzmq and memcpy.

Each uint16 frame goes to another process and comes back whole, with the same window of frames
in flight. livescope runs its real server (`livescope serve`, identity model on onnxruntime,
headers validated, results published), once with the pixels in the messages (the network path,
shared memory off) and once through the client's shared memory (same host); the baselines are a
PUSH/PULL echo process (bare pyzmq) and one memcpy of the frame's bytes per frame, the least any
same-host transport must do. The server's mean model run time is reported beside: the identity
model really copies the frame, which the echo never does. Runs alternate (A B C D A B C D ...)
and medians are compared, so drifting machine load hits all alike. Prints JSON.

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

from _common import free_port, livescope_server, median, stream_all
from livescope.client import StreamClient

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


def memcpy_fps(frame: np.ndarray, n: int) -> float:
    """One copy of the frame per frame, into as many buffers as the client has slots, in turn (one
    buffer would stay in the CPU's cache, which slots of frames in flight do not)."""
    into = [np.empty_like(frame) for _ in range(WINDOW + 2)]
    for buffer in into:
        np.copyto(buffer, frame)  # pages touched before timing
    t0 = time.perf_counter()
    for i in range(n):
        np.copyto(into[i % len(into)], frame)
    return n / (time.perf_counter() - t0)


def livescope_fps(frame: np.ndarray, n: int, client: StreamClient) -> float:
    t0 = time.perf_counter()
    stream_all(client, [frame] * n)
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
        network = StreamClient(address, pipeline=["identity"], max_in_flight=WINDOW, shared_memory=False)
        shared = StreamClient(address, pipeline=["identity"], max_in_flight=WINDOW, shared_memory=True)
        for client in (network, shared):
            client.connect(timeout_s=30)
        for size in args.sizes:
            rng = np.random.default_rng(0)
            frame = rng.integers(0, 4096, (size, size), dtype=np.uint16)
            mb = frame.nbytes / 1e6
            probe = bare_fps(frame, 20, push, pull)  # warm-up and sizing
            livescope_fps(frame, 20, network)
            livescope_fps(frame, 20, shared)
            n = max(20, int(probe * args.seconds))
            runs: dict[str, list[float]] = {"bare": [], "memcpy": [], "network": [], "shared": []}
            before = network.control("stats")["inference"].get(
                "identity@1", {"frames": 0, "mean_ms_per_frame": 0})
            for _ in range(args.repeats):
                runs["bare"].append(bare_fps(frame, n, push, pull))
                runs["memcpy"].append(memcpy_fps(frame, n))
                runs["network"].append(livescope_fps(frame, n, network))
                shared_before = shared.stats.sent_through_shared_memory
                runs["shared"].append(livescope_fps(frame, n, shared))
                through = shared.stats.sent_through_shared_memory - shared_before
            after = network.control("stats")["inference"]["identity@1"]
            model_ms = ((after["mean_ms_per_frame"] * after["frames"]
                         - before["mean_ms_per_frame"] * before["frames"])
                        / (after["frames"] - before["frames"]))
            fps = {k: median(v) for k, v in runs.items()}
            report["sizes"][f"{size}x{size}"] = {
                "frames_per_run": n,
                **{f"{k}_fps": round(v, 1) for k, v in fps.items()},
                **{f"{k}_MBps": round(v * mb, 1) for k, v in fps.items()},
                "network_vs_bare_pyzmq": round(fps["network"] / fps["bare"], 3),
                "shared_memory_vs_memcpy": round(fps["shared"] / fps["memcpy"], 3),
                "shared_memory_vs_network": round(fps["shared"] / fps["network"], 3),
                "frames_through_shared_memory_last_run": f"{through}/{n}",
                # The identity model's own run inside the server (a real onnxruntime copy of the
                # frame), which neither baseline does.
                "server_model_run_ms_mean": round(model_ms, 3),
                "network_ms_per_frame_over_bare": round(1e3 / fps["network"] - 1e3 / fps["bare"], 3),
                "network_vs_bare_per_repeat": [round(o / b, 3) for o, b in zip(runs["network"], runs["bare"])],
                "shared_vs_memcpy_per_repeat": [round(o / b, 3) for o, b in zip(runs["shared"], runs["memcpy"])],
            }
        network.close()
        shared.close()
    push.send(b"")
    echo.join(5)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
