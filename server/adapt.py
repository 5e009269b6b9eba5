"""Live self-adaptation: a denoiser trained on a running stream's own frames while serving goes on.

The server copies the next ``frames`` frames of the stream as they arrive (the I/O thread calls
`Adaptation.offer`, which only copies), saves them as an OME-TIFF in the user's model repository
(``<repository>/.adapt/``, a hidden folder the repository scanner skips) with a JSON sidecar of
the frames' sequence numbers and SHA-256 hashes, and runs ``livescope train denoise --data STACK
--deploy`` against this very server in a separate, lower-priority process. That command is the
one way a new version is made and deployed: it holds out frames of the same stream, scores the
new version and the server's active one on them, writes the version (the card's provenance names
the saved stack and its hash; its comparison holds both scores) and activates it only if it passed
the quality gate and is not worse than the active one. ``livescope models rollback denoise``
returns to the version served before.

When the active version is camera-agnostic (it takes photons) and no context frames are asked for,
the trainer fine-tunes that version on the stream (``--from NAME@V``: each frame's registered
neighbours are its target) rather than training one from scratch; a fine-tune that cannot beat it
writes nothing, and the active version stays.

The server and the models never import each other: the trainer is reached through the command
line, in its own process, so a crash or an out-of-memory there costs the adaptation, never the
server.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

log = logging.getLogger("livescope.server")

ADAPTABLE_TASKS = ("denoise",)
COLLECT_TIMEOUT_S = 600.0  # a stream that stops sending ends the adaptation rather than holding it
# The trainer's own budget is ``minutes``; export, scoring and deploying take a few minutes more.
TRAINER_MARGIN_S = 600.0
State = Literal["collecting", "training", "activated", "not_activated", "failed"]
FINISHED: tuple[State, ...] = ("activated", "not_activated", "failed")
_REF = re.compile(r"^[A-Za-z0-9_.-]+@\d+$")

# Given the new version's NAME@VERSION: whether it is now active and, if not, why (the card's words).
Outcome = Callable[[str], tuple[bool, str]]


def connectable(bound: str) -> str:
    """The address a process on this machine connects to, for one the server bound (a wildcard
    host, ``*`` or ``0.0.0.0``, becomes the loopback)."""
    return re.sub(r"^tcp://(\*|0\.0\.0\.0):", "tcp://127.0.0.1:", bound)


class AdaptationStatus(BaseModel):
    """The reply of the ``adapt`` and ``adapt_status`` control commands."""

    model_config = ConfigDict(frozen=True)

    id: str
    task: str
    stream: str
    state: State
    frames_wanted: int
    frames_collected: int
    minutes: float
    context_frames: int = 1
    fine_tune_from: str | None = None  # the active camera-agnostic version fine-tuned, if so
    elapsed_s: float
    data: str | None = None  # the saved stack the version was trained on
    model: str | None = None  # the version trained
    reason: str = ""  # why it was (not) activated, or why it failed


class Adaptation:
    """One adaptation, from collecting frames to the trained version's outcome (its own thread)."""

    def __init__(self, *, task: str, stream: str, frames: int, minutes: float, repository: Path,
                 server_address: str, outcome: Outcome, context_frames: int = 1,
                 fine_tune_from: str | None = None, python: str = sys.executable) -> None:
        self.id = uuid.uuid4().hex[:12]
        self.task, self.stream, self.frames_wanted, self.minutes = task, stream, frames, minutes
        self.context_frames, self.fine_tune_from = context_frames, fine_tune_from
        self.repository, self.server_address, self.python = repository, server_address, python
        self._outcome = outcome
        self._frames: list[np.ndarray] = []
        self._seqs: list[int] = []
        self._collected = 0
        self._pixel_size_um: float | None = None
        self._full = threading.Event()
        self._cancelled = threading.Event()
        self._lock = threading.Lock()
        self._state: State = "collecting"
        self._data: str | None = None
        self._model: str | None = None
        self._reason = ""
        self._started = time.monotonic()
        self._process: subprocess.Popen | None = None
        self._thread = threading.Thread(target=self._run, name="livescope-adapt", daemon=True)
        self._thread.start()

    # -- the I/O thread's side ------------------------------------------------------------------

    def offer(self, stream: str, seq: int, image: np.ndarray, pixel_size_um: float | None) -> None:
        """A frame the server accepted: kept (copied) if it is of the stream and more are wanted."""
        if stream != self.stream or self._full.is_set():
            return
        if self._frames and image.shape != self._frames[0].shape:
            return  # a stack has one frame shape; frames of another (a changed ROI) are not used
        self._frames.append(np.array(image, copy=True))
        self._seqs.append(seq)
        self._collected = len(self._frames)
        self._pixel_size_um = self._pixel_size_um or pixel_size_um
        if len(self._frames) >= self.frames_wanted:
            self._full.set()

    # -- status and stopping --------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self._state in FINISHED

    def status(self) -> AdaptationStatus:
        with self._lock:
            return AdaptationStatus(id=self.id, task=self.task, stream=self.stream, state=self._state,
                                    frames_wanted=self.frames_wanted, frames_collected=self._collected,
                                    minutes=self.minutes, context_frames=self.context_frames,
                                    fine_tune_from=self.fine_tune_from,
                                    elapsed_s=round(time.monotonic() - self._started, 1),
                                    data=self._data, model=self._model, reason=self._reason)

    def cancel(self) -> None:
        """Stop collecting or training (the server is stopping); the adaptation fails."""
        self._cancelled.set()
        self._full.set()
        process = self._process
        if process is not None and process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def _set(self, state: State, reason: str = "", **fields: str | None) -> None:
        with self._lock:
            self._state, self._reason = state, reason
            for key, value in fields.items():
                setattr(self, f"_{key}", value)
        log.info("adaptation %s (%s on stream %s): %s%s", self.id, self.task, self.stream, state,
                 f": {reason}" if reason else "")

    # -- the adaptation's thread ----------------------------------------------------------------

    def _run(self) -> None:
        try:
            if not self._full.wait(COLLECT_TIMEOUT_S) or self._cancelled.is_set():
                why = "the server stopped" if self._cancelled.is_set() else (
                    f"stream {self.stream!r} sent {len(self._frames)} of the {self.frames_wanted} frames wanted "
                    f"in {COLLECT_TIMEOUT_S:g} s")
                self._set("failed", why)
                return
            stack = self._save()
            self._set("training", data=str(stack))
            self._train(stack)
        except Exception as e:  # the adaptation fails; the server goes on serving
            log.exception("adaptation %s failed", self.id)
            self._set("failed", f"internal error: {e}")

    def _save(self) -> Path:
        """The frames as an OME-TIFF (written to a temporary name, then renamed) and their sidecar."""
        import tifffile

        folder = self.repository / ".adapt"
        folder.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        safe_stream = re.sub(r"[^A-Za-z0-9_.-]", "_", self.stream)[:64]
        stack = folder / f"{safe_stream}-{stamp}-{self.id}.ome.tif"
        frames = np.stack(self._frames[:self.frames_wanted])
        metadata: dict = {"axes": "TYX"}
        if self._pixel_size_um:
            metadata |= {"PhysicalSizeX": self._pixel_size_um, "PhysicalSizeXUnit": "µm",
                         "PhysicalSizeY": self._pixel_size_um, "PhysicalSizeYUnit": "µm"}
        partial = stack.with_name(f".{stack.name}.tmp")
        tifffile.imwrite(partial, frames, ome=True, metadata=metadata)
        os.replace(partial, stack)
        sidecar = {"stream": self.stream, "server": self.server_address, "collected_at": stamp,
                   "frames": len(frames), "seq": self._seqs[:len(frames)],
                   "sha256": [hashlib.sha256(np.ascontiguousarray(f).tobytes()).hexdigest() for f in frames]}
        stack.with_suffix("").with_suffix(".json").write_text(json.dumps(sidecar, indent=1))
        self._frames = []  # the stack holds them now
        return stack

    def _train(self, stack: Path) -> None:
        start = (["--from", self.fine_tune_from] if self.fine_tune_from else
                 ["--context-frames", str(self.context_frames)])
        command = [self.python, "-m", "livescope.cli", "train", self.task, "--data", str(stack),
                   "--budget-minutes", f"{self.minutes:g}", "--models", str(self.repository), *start,
                   "--deploy", "--server", self.server_address]
        output: deque[str] = deque(maxlen=40)
        self._process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
            env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"})
        try:
            os.setpriority(os.PRIO_PROCESS, self._process.pid, 10)  # serving keeps the priority
        except OSError:
            pass
        timer = threading.Timer(self.minutes * 60 + TRAINER_MARGIN_S, self.cancel)
        timer.start()
        try:
            for line in self._process.stdout:
                if line.strip():
                    output.append(line.rstrip())
            code = self._process.wait()
        finally:
            timer.cancel()
        refs = [line.strip() for line in output if _REF.match(line.strip())]
        if self._cancelled.is_set():
            self._set("failed", "stopped (the server is stopping, or training overran its budget by "
                                f"{TRAINER_MARGIN_S:g} s)", model=refs[-1] if refs else None)
            return
        if not refs:
            said = output[-1] if output else ""
            if self.fine_tune_from and "did not improve" in said:  # nothing to activate: not a failure
                self._set("not_activated", said.removeprefix("livescope: error: "))
                return
            self._set("failed", f"the trainer wrote no version (exit {code}): {said}")
            return
        activated, reason = self._outcome(refs[-1])
        self._set("activated" if activated else "not_activated", reason, model=refs[-1])
