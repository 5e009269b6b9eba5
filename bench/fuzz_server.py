"""Fuzzing the server: many messages a hostile or broken client might send, against a real
`livescope serve` process, each answered before the next is sent.

Messages (seeded, reproducible): valid frames (whose result must carry back their own pixels),
frames and control requests with one or two fields replaced by arbitrary JSON (lone surrogates,
NaN, huge integers, long strings, nested arrays), raw bytes, wrong part counts, deep nesting, and
every crasher of issue 16 at fixed intervals. Reported as JSON: messages sent, crashes (server
exits), messages without exactly one answer, answers by kind, wrong results, the server's memory
(RSS) and threads at the start, after a tenth and at the end, and messages per second.

    python bench/fuzz_server.py                  # 100,000 messages, a few minutes on 2 cores
    python bench/fuzz_server.py --messages 5000  # a quick look
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import log  # noqa: E402

from livescope.launch import spawn_server  # noqa: E402
from livescope.protocol import PROTOCOL_VERSION, ErrorHeader, ResultHeader, decode_header  # noqa: E402

SHAPE = (4, 6)
FIELDS = ("protocol", "type", "stream", "seq", "shape", "dtype", "axes", "pipeline", "mode", "pixel_size_um",
          "z_um", "dz_um", "event_index", "camera", "t_acquired_ns", "t_sent_ns", "request_id", "command", "args")
COMMANDS = ("ping", "health", "stats", "list_models", "load", "activate", "unload", "rescan", "render", "warp")
SPECIAL = ["\ud800", "\udfff", "identity", "identity@1", "identity@99", "uint16", "float32", "frame", "control",
           "x" * 300, float("nan"), float("inf"), 10**40, -1, 0, True, None, [], {}]
CRASHERS = [  # issue 16, defect 1, as reported
    b'{"protocol":1,"type":[]}', b'{"protocol":1,"type":{}}',
    ('{"protocol":1,"type":"frame","x":' + "[" * 1000 + "]" * 1000 + "}").encode(),
    ('{"protocol":1,"type":"frame","seq":' + "9" * 4301 + "}").encode(),
    b'{"protocol":1,"type":"control","request_id":"r","command":"render","args":{"stream":"\\ud800"}}',
]


def any_json(rng: random.Random, depth: int = 0) -> object:
    roll = rng.random()
    if roll < 0.3:
        return rng.choice(SPECIAL)
    if roll < 0.45:
        return rng.randint(-2**70, 2**70)
    if roll < 0.55:
        return rng.uniform(-1e6, 1e6)
    if roll < 0.7:
        return "".join(chr(rng.randint(32, 0x2FFF)) for _ in range(rng.randint(0, 12)))
    if depth < 4 and roll < 0.85:
        return [any_json(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    if depth < 4:
        return {str(any_json(rng, 4))[:8]: any_json(rng, depth + 1) for _ in range(rng.randint(0, 3))}
    return None


def message(rng: random.Random, i: int) -> tuple[list[bytes], np.ndarray | None]:
    """(parts, the pixels a correct result carries back, or None when no result is due)."""
    if i % 997 == 0:
        return [CRASHERS[(i // 997) % len(CRASHERS)]], None
    kind = rng.choice(["frame", "frame", "frame", "control", "bytes", "nested"])
    pixels = np.frombuffer(rng.randbytes(2 * SHAPE[0] * SHAPE[1]), np.uint16).reshape(SHAPE)
    if kind == "bytes":
        return [rng.randbytes(rng.randint(0, 64)) for _ in range(rng.randint(1, 3))], None
    if kind == "nested":
        depth = rng.randint(10, 5000)
        return [('{"protocol":1,"type":"frame","x":' + "[" * depth + "]" * depth + "}").encode()], None
    if kind == "frame":
        header: dict = {"protocol": PROTOCOL_VERSION, "type": "frame", "stream": f"fuzz{rng.randint(0, 3)}",
                        "seq": i, "shape": list(SHAPE), "dtype": "uint16", "pipeline": ["identity"]}
    else:
        header = {"protocol": PROTOCOL_VERSION, "type": "control", "request_id": f"r{i}",
                  "command": rng.choice(COMMANDS),
                  "args": {rng.choice(["model", "stream", "pixel_nm", "method", "x"]): any_json(rng)
                           for _ in range(rng.randint(0, 2))}}
    changed = rng.random() < 0.5
    if changed:
        for _ in range(rng.randint(1, 2)):
            header[rng.choice(FIELDS)] = any_json(rng)
    raw = json.dumps(header, allow_nan=True, ensure_ascii=rng.random() < 0.5, default=str)
    payload = pixels.tobytes() if rng.random() < 0.8 else rng.randbytes(rng.randint(0, 64))
    parts = [raw.encode("utf-8", "surrogatepass"), payload] if kind == "frame" and rng.random() < 0.95 else \
        [raw.encode("utf-8", "surrogatepass")]
    valid = kind == "frame" and not changed and len(parts) == 2 and payload == pixels.tobytes()
    return parts, pixels if valid else None


def memory(pid: int) -> dict:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {"rss_mb": round(int(fields["VmRSS"].split()[0]) / 1024, 1), "threads": int(fields["Threads"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout-s", type=float, default=10.0, help="wait this long for each answer")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    answers: Counter[str] = Counter()
    crashes = unanswered = extra = wrong = internal = 0
    samples = {}
    with spawn_server("--log-level", "error", "--threads", "1") as server:
        pid = server.proc.pid
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.rcvtimeo = int(args.timeout_s * 1000)
        sock.connect(server.frames)
        samples["start"] = memory(pid)
        t0 = time.perf_counter()
        for i in range(args.messages):
            parts, pixels = message(rng, i)
            sock.send_multipart(parts)
            try:
                reply = sock.recv_multipart()
            except zmq.Again:
                unanswered += 1
                if server.proc.poll() is not None:
                    crashes += 1
                    log(f"the server exited on message {i}: {parts[0][:120]!r}")
                    break
                continue
            header = decode_header(reply[0])
            answers[header.type if not isinstance(header, ErrorHeader) else f"error:{header.code.value}"] += 1
            internal += isinstance(header, ErrorHeader) and header.code.value == "internal"
            if pixels is not None and not (isinstance(header, ResultHeader) and np.array_equal(
                    np.frombuffer(reply[1], np.uint16).reshape(SHAPE), pixels)):
                wrong += 1
            while sock.poll(0):
                sock.recv_multipart()
                extra += 1
            if i == args.messages // 10:
                samples["after_a_tenth"] = memory(pid)
            if i and i % 10_000 == 0:
                log(f"{i} messages, {crashes} crashes, {unanswered} unanswered, {wrong} wrong results")
        elapsed = time.perf_counter() - t0
        alive = server.proc.poll() is None
        counted = {}
        if alive:
            samples["end"] = memory(pid)
            # The server's own account: nothing it sent may have been lost on the way.
            sock.send_json({"protocol": 1, "type": "control", "request_id": "final", "command": "stats", "args": {}})
            stats = json.loads(sock.recv_multipart()[0])["data"]
            counted = {k: stats[k] for k in ("undelivered_replies", "undelivered_publications")}
        ctx.destroy(linger=0)
    report = {
        "command": " ".join(["python", "bench/fuzz_server.py", *sys.argv[1:]]),
        "messages": args.messages, "seed": args.seed, "crashes": crashes, "server_alive_at_end": alive,
        "unanswered": unanswered, "answered_more_than_once": extra, "valid_frames_with_a_wrong_result": wrong,
        "internal_errors": internal, "server_counted": counted, "answers": dict(sorted(answers.items())),
        "server_memory": samples,
        "rss_growth_mb_after_the_first_tenth": (round(samples["end"]["rss_mb"] - samples["after_a_tenth"]["rss_mb"], 1)
                                                 if alive and "after_a_tenth" in samples else None),
        "messages_per_s": round(args.messages / elapsed, 1),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
