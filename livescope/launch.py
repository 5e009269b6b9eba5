"""Start `livescope serve` as a child process and wait until it is ready.

Used by `livescope demo`, the benchmarks and the tests, so all of them run the real server
exactly as a user would.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerLaunchError(RuntimeError):
    pass


@dataclass
class ServerProcess:
    frames: str
    results: str
    proc: subprocess.Popen
    stderr_lines: list[str] = field(default_factory=list)

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM (the server finishes frames in flight), then kill if it does not exit."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                return self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def spawn_server(*extra: str, frames: str | None = None, results: str | None = None,
                 timeout_s: float = 60.0) -> ServerProcess:
    """Run `livescope serve` on free loopback ports (unless given); return once it is ready."""
    frames = frames or f"tcp://127.0.0.1:{free_port()}"
    results = results or f"tcp://127.0.0.1:{free_port()}"
    cmd = [sys.executable, "-m", "livescope.cli", "serve", "--frames", frames,
           "--results", results, *extra]
    if "--metrics-port" not in extra:
        cmd += ["--metrics-port", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    server = ServerProcess(frames, results, proc)
    # Keep reading stderr so a chatty server can never block on a full pipe.
    threading.Thread(target=lambda: server.stderr_lines.extend(proc.stderr), daemon=True).start()
    ready = threading.Event()
    threading.Thread(target=lambda: ready.set() if proc.stdout.readline().strip() == "ready"
                     else None, daemon=True).start()
    if not ready.wait(timeout_s) or proc.poll() is not None:
        proc.kill()
        proc.wait()
        detail = "".join(server.stderr_lines[-5:]).strip() or "no output"
        raise ServerLaunchError(f"the server did not start: {detail}")
    return server
