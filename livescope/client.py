"""The livescope client: stream frames to a server, get results back, subscribe to results.

``StreamClient`` implements credit-based flow control (the ZeroMQ guide's pattern) on a DEALER
socket owned by one background I/O thread, so ``submit`` can be called from a camera callback
thread while results are read on another. At most ``max_in_flight`` frames are on the way.

- ``lossless``: ``submit`` blocks while the window is full; frames not yet answered are resent
  after a reconnect (the server de-duplicates by stream + seq). For calibration and recording.
- ``latest``: ``submit`` never blocks; when the window is full the oldest unsent frame is dropped,
  counted in ``stats.dropped_by_client`` and reported as a ``Refusal``. For live view.

Every submitted frame ends as exactly one ``Result`` or ``Refusal``; ``stats`` accounts for all.
Liveness is the Paranoid Pirate pattern: when the server is silent while frames are in flight
the client pings; after ``liveness_s`` of silence it reconnects (Lazy Pirate) and resends.

On one host (a loopback or ipc address) frames and their image results travel through a shared-memory
region of ``max_in_flight`` slots (``livescope.shared_memory``), negotiated at the first frame; the
socket carries the headers. Where the server cannot map the region (another host or container, an
older server) the client uses the socket alone, with the same semantics.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zmq
import zmq.utils.monitor
from pydantic import BaseModel

from livescope.camera import CameraCalibration
from livescope.protocol import (
    AckHeader,
    ControlReply,
    ControlRequest,
    DeliveryMode,
    ErrorCode,
    ErrorHeader,
    FrameHeader,
    Objective,
    ProtocolError,
    ResultHeader,
    array_from_payload,
    decode_header,
    table_dtype,
)
from livescope.security import apply_client_curve, is_loopback
from livescope.shared_memory import ClientRegion, SharedMemoryError, SlotLayout
from livescope.transport import recv_parts, send_message

DEFAULT_SERVER = "tcp://127.0.0.1:5760"
DEFAULT_RESULTS = "tcp://127.0.0.1:5761"
BUSY_BACKOFF_S = 0.05  # lossless: wait this long before resending a frame the server refused as busy
_HEARTBEAT, _REATTACH = "heartbeat", "shm-reattach"  # the client's own control requests: replies not kept


class ServerUnreachableError(ConnectionError):
    pass


class ServerAddressError(ServerUnreachableError):
    """The address is not one ZeroMQ can connect to (e.g. ``127.0.0.1:5760``, without ``tcp://``)."""


class ControlError(RuntimeError):
    pass


@dataclass(frozen=True)
class Result:
    """A restored frame (or a table) for one submitted frame."""

    header: ResultHeader
    # read-only view on the received buffer, or on the client's shared-memory slot (held until dropped)
    data: np.ndarray

    @property
    def seq(self) -> int:
        return self.header.seq

    @property
    def round_trip_ms(self) -> float | None:
        """Client send -> result received, on this machine's clock."""
        if not self.header.t_sent_ns:
            return None
        return (time.time_ns() - self.header.t_sent_ns) / 1e6


@dataclass(frozen=True)
class Refusal:
    """A submitted frame that got no result: an error, or dropped (latest mode)."""

    seq: int
    reason: str  # an ErrorCode value, "dropped_by_client" or "dropped_by_server"
    message: str


FrameOutcome = Result | Refusal


class ClientStats(BaseModel):
    submitted: int = 0
    sent: int = 0
    resent: int = 0
    results: int = 0
    errors: int = 0
    dropped_by_client: int = 0
    dropped_by_server: int = 0
    in_flight: int = 0
    queued: int = 0
    reconnects: int = 0
    sent_through_shared_memory: int = 0  # of ``sent``: pixels in a slot of the client's shared memory

    @property
    def dropped(self) -> int:
        return self.dropped_by_client + self.dropped_by_server

    @property
    def accounted(self) -> bool:
        """True when every submitted frame is answered, dropped, or still on its way."""
        return self.submitted == (self.results + self.errors + self.dropped
                                  + self.in_flight + self.queued)


def _connect(sock: zmq.Socket, address: str, *also_close: zmq.Socket) -> None:
    """Connect ``sock``, or close it (and ``also_close``) and raise ServerAddressError: a socket
    left open would block its context's termination forever."""
    try:
        sock.connect(address)
    except zmq.ZMQError as e:
        for s in (*also_close, sock):
            s.close(0)
        raise ServerAddressError(
            f"cannot connect to {address!r} ({zmq.strerror(e.errno).lower()}): a server address "
            f"must look like tcp://HOST:PORT, e.g. {DEFAULT_SERVER}") from None


def decode_result(parts: Sequence[zmq.Frame], lend: Callable[[ResultHeader], np.ndarray] | None = None
                  ) -> Result | ErrorHeader | AckHeader | ControlReply:
    """Turn a received ``[header, payload?]`` into a Result or the header it carries; the pixels of a
    result the server wrote into the receiving client's shared memory are ``lend(header)``."""
    header = decode_header(parts[0].bytes)
    if not isinstance(header, ResultHeader):
        return header  # type: ignore[return-value]
    if header.shm_offset_bytes is not None and len(parts) == 1 and header.kind == "image":
        if lend is None:
            raise ProtocolError(ErrorCode.payload_size, "result in shared memory this client has not attached")
        return Result(header, lend(header))
    if len(parts) != 2:
        raise ProtocolError(ErrorCode.payload_size, "result message without its payload")
    if header.kind == "table":
        dtype = table_dtype(header.fields)
        data = array_from_payload((header.shape[0],), dtype, parts[1].buffer)
    else:
        data = array_from_payload(header.shape, header.dtype, parts[1].buffer)
    return Result(header, data)


class StreamClient:
    def __init__(
        self,
        server: str = DEFAULT_SERVER,
        *,
        stream: str | None = None,
        pipeline: Sequence[str] = ("denoise",),
        mode: DeliveryMode = "lossless",
        max_in_flight: int = 4,
        curve_secret_key: Path | None = None,
        curve_server_key: Path | None = None,
        heartbeat_s: float = 1.0,
        liveness_s: float = 5.0,
        camera: CameraCalibration | None = None,
        dz_um: float | None = None,
        shared_memory: bool = True,
        objective: Objective | None = None,
    ) -> None:
        """``camera``: the ADU -> photons calibration sent with every frame (a localise stage
        needs it). ``dz_um``: the delta-z sent with every frame, µm (the wanted plane's focus
        position minus the frame's; a refocus stage needs it); ``submit`` may override it.
        ``shared_memory``: send frames through shared memory when the server is on this host.
        ``objective``: the optics sent with every frame (a psf stage needs it)."""
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.server = server
        self.stream = stream or f"stream-{uuid.uuid4().hex[:8]}"
        self.pipeline = tuple(pipeline)
        self.mode = mode
        self.camera = camera
        self.objective = objective
        self.dz_um = dz_um
        self.max_in_flight = max_in_flight
        self._curve = (curve_secret_key, curve_server_key)
        self._heartbeat_s, self._liveness_s = heartbeat_s, liveness_s
        self._identity = f"livescope-{uuid.uuid4().hex}".encode()
        self._ctx = zmq.Context()
        self._ctx.linger = 0  # closing never waits for unsent messages (close() waits for answers)
        self._cond = threading.Condition()
        # a frame's header and pixels (None: they are in its shared-memory slot)
        self._unsent: deque[tuple[FrameHeader, np.ndarray | None]] = deque()
        self._in_flight: OrderedDict[int, tuple[FrameHeader, np.ndarray | None]] = OrderedDict()
        # shared memory: None until the first frame tries it, False when not used
        self._shared: ClientRegion | None | bool = None if shared_memory and is_loopback(server) else False
        self._slots: dict[int, int] = {}  # seq -> its slot, while the slot holds the frame or its result
        self._slots_usable = True  # False once the server could not read a slot: messages only
        self._attach_lock = threading.Lock()
        self._cannot_grow_past = 0  # frame bytes a larger region could not be made for
        self._outcomes: deque[FrameOutcome] = deque()
        self._controls: deque[ControlRequest] = deque()
        self._replies: dict[str, ControlReply | ErrorHeader] = {}
        self._stats = ClientStats()
        self._seq = 0
        self._busy_until = 0.0  # lossless: after a 'busy' refusal, nothing is sent before this
        self._closing = False
        self._thread_error: BaseException | None = None
        self._auth_failed = False
        self._unusable: str | None = None  # what the server last sent that answers nothing, and why
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._thread = threading.Thread(target=self._io_loop, name="livescope-client", daemon=True)
        self._thread.start()

    # -- public API ----------------------------------------------------------------------------

    def connect(self, timeout_s: float = 5.0) -> None:
        """Check that the server answers; raise ServerUnreachableError if it does not."""
        try:
            self.control("ping", timeout_s=timeout_s)
        except TimeoutError:
            if self._auth_failed:
                why = "the server refused this client's CURVE key"
            elif self._unusable is not None:
                why = f"the server at {self.server} {self._unusable}"
            else:
                why = f"no livescope server answered at {self.server} within {timeout_s:g} s"
            raise ServerUnreachableError(why) from None

    def submit(
        self,
        image: np.ndarray,
        *,
        event_index: dict[str, int] | None = None,
        z_um: float | None = None,
        pixel_size_um: float | None = None,
        t_acquired_ns: int | None = None,
        dz_um: float | None = None,
        focus_alarm: str | None = None,
        timeout_s: float = 30.0,
    ) -> int:
        """Queue one frame for the server; return its seq. The array must not change after.

        ``dz_um``: this frame's delta-z for a refocus stage, µm; None: the stream's (the
        constructor's). ``focus_alarm``: why the acquisition has lost focus at this frame, if it
        has (its results say it back; the server counts it)."""
        if image.ndim != 2:
            raise ValueError(f"a frame is a 2-D image, got shape {image.shape}")
        header = FrameHeader(
            stream=self.stream, seq=self._seq, shape=image.shape, dtype=image.dtype.name,
            pixel_size_um=pixel_size_um, z_um=z_um, event_index=event_index or {},
            pipeline=self.pipeline, mode=self.mode, t_acquired_ns=t_acquired_ns, camera=self.camera,
            dz_um=self.dz_um if dz_um is None else dz_um, objective=self.objective, focus_alarm=focus_alarm)
        with self._attach_lock:
            if self._shared is None:
                self._shared = self._attach_shared_memory(image)
            elif isinstance(self._shared, ClientRegion) and image.nbytes > self._shared.layout.frame_bytes:
                self._grow_shared_memory(image)
        with self._cond:
            self._raise_if_broken()
            if self.mode == "lossless":
                ok = self._cond.wait_for(
                    lambda: len(self._unsent) + len(self._in_flight) < self.max_in_flight
                    or self._thread_error is not None, timeout_s)
                self._raise_if_broken()
                if not ok:
                    raise ServerUnreachableError(
                        f"no answer from {self.server} for {timeout_s:g} s with "
                        f"{len(self._in_flight)} frames in flight")
            else:
                room = max(1, self.max_in_flight - len(self._in_flight))
                while len(self._unsent) >= room:
                    old, _ = self._unsent.popleft()
                    self._free_slot(old.seq)
                    self._stats.dropped_by_client += 1
                    self._outcomes.append(Refusal(old.seq, "dropped_by_client",
                                                  "superseded by a newer frame before sending"))
            slot = self._shared.take() if isinstance(self._shared, ClientRegion) and self._slots_usable \
                and image.nbytes <= self._shared.layout.frame_bytes else None
        if slot is not None:  # the slot is this frame's alone now: copy outside the lock
            header = header.model_copy(update={"shm": self._shared.write_frame(slot, image)})
        with self._cond:
            if slot is not None:
                self._slots[header.seq] = slot
            self._unsent.append((header, None if slot is not None else image))
            self._seq += 1
            self._stats.submitted += 1
        self._wake()
        return header.seq

    def next_outcome(self, timeout_s: float | None = None) -> FrameOutcome | None:
        """The next result or refusal, in arrival order; None after ``timeout_s``."""
        with self._cond:
            self._cond.wait_for(lambda: self._outcomes or self._thread_error is not None,
                                timeout_s)
            if self._outcomes:
                return self._outcomes.popleft()
            self._raise_if_broken()
            return None

    def outcomes(self, timeout_s: float = 30.0) -> Iterator[FrameOutcome]:
        """Yield outcomes until every submitted frame is answered (or ``timeout_s`` of silence)."""
        while True:
            with self._cond:
                idle = not (self._unsent or self._in_flight or self._outcomes)
            if idle:
                return
            outcome = self.next_outcome(timeout_s)
            if outcome is None:
                raise TimeoutError(f"no outcome for {timeout_s:g} s with frames outstanding")
            yield outcome

    def wait_idle(self, timeout_s: float = 30.0) -> bool:
        """Wait until no frame is queued or in flight."""
        with self._cond:
            return self._cond.wait_for(
                lambda: not (self._unsent or self._in_flight) or self._thread_error is not None,
                timeout_s)

    def control(self, command: str, *, timeout_s: float = 5.0, **args: object) -> dict:
        """Call the server's control API; return the reply's data or raise ControlError."""
        req = ControlRequest(request_id=uuid.uuid4().hex[:16], command=command, args=args)
        with self._cond:
            self._raise_if_broken()
            self._controls.append(req)
        self._wake()
        with self._cond:
            if not self._cond.wait_for(lambda: req.request_id in self._replies
                                       or self._thread_error is not None, timeout_s):
                raise TimeoutError(f"control {command!r}: no reply from {self.server}")
            self._raise_if_broken()
            reply = self._replies.pop(req.request_id)
        if isinstance(reply, ErrorHeader):
            raise ControlError(f"{reply.code.value}: {reply.message}")
        if not reply.ok:
            raise ControlError(reply.error or "the server refused the request without saying why")
        return reply.data

    @property
    def stats(self) -> ClientStats:
        with self._cond:
            return self._stats.model_copy(update={"in_flight": len(self._in_flight),
                                                  "queued": len(self._unsent)})

    def close(self, timeout_s: float = 10.0) -> None:
        """Wait (up to ``timeout_s``) for frames in flight, then stop. Idempotent."""
        if self._thread.is_alive():
            self.wait_idle(timeout_s)
            if isinstance(self._shared, ClientRegion) and self._thread_error is None:
                try:  # the server unmaps it now rather than when it forgets old attachments
                    self.control("shm_detach", region=self._shared.name, timeout_s=1.0)
                except (TimeoutError, ControlError):
                    pass
            with self._cond:
                self._closing = True
            self._wake()
            self._thread.join()
        self._wake_r.close()
        self._wake_w.close()
        self._ctx.destroy(linger=0)  # the I/O thread has closed its sockets; this closes any left
        if isinstance(self._shared, ClientRegion):
            self._shared.close()
            self._shared = False

    def __enter__(self) -> StreamClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- shared memory -------------------------------------------------------------------------

    def _attach_shared_memory(self, first: np.ndarray) -> ClientRegion | bool:
        """A region sized for frames like ``first`` (results up to float32), attached to the server;
        False where it cannot be made or the server cannot map it (frames then go in messages). A slot
        per frame in flight and two more: a slot stays taken while its result waits to be read, or is
        held (when none is free, a frame goes in its message)."""
        layout = SlotLayout(slots=self.max_in_flight + 2, frame_bytes=first.nbytes,
                            result_bytes=max(first.nbytes, first.size * 4))
        try:
            region = ClientRegion(layout)
        except SharedMemoryError:
            return False
        try:
            self.control("shm_attach", region=region.name, token=region.token.hex(), timeout_s=10.0)
        except (ControlError, TimeoutError):
            region.close()
            return False
        return region

    def _grow_shared_memory(self, image: np.ndarray) -> None:
        """Frames got larger (a new ROI or camera mode): a region for them replaces the old one once
        nothing is in the old one's slots; until then, and if no larger one can be made, they go in
        their messages."""
        old = self._shared
        assert isinstance(old, ClientRegion)
        if not old.idle or not self._slots_usable or self._cannot_grow_past >= image.nbytes:
            return
        new = self._attach_shared_memory(image)
        if not isinstance(new, ClientRegion):
            self._cannot_grow_past = image.nbytes
            return
        self._shared = new
        try:
            self.control("shm_detach", region=old.name, timeout_s=1.0)
        except (TimeoutError, ControlError):
            pass  # the server forgets it anyway; it is unlinked now
        old.close()

    def _free_slot(self, seq: int) -> None:
        """The frame ``seq`` is answered (or dropped): its slot takes another. Under ``_cond``."""
        slot = self._slots.pop(seq, None)
        if slot is not None and isinstance(self._shared, ClientRegion):
            self._shared.give_back(slot)

    def _answered(self, seq: int) -> bool:
        """Take ``seq`` out of the frames in flight; False if it was not in flight. Under ``_cond``."""
        if self._in_flight.pop(seq, None) is None:
            return False
        self._free_slot(seq)
        return True

    def _without_shared_memory(self, seq: int) -> None:
        """The server cannot read frame ``seq``'s slot (it restarted, or unmapped the region): send its
        pixels in the message from now on, this frame first. Under ``_cond``."""
        header, _ = self._in_flight.pop(seq)
        region = self._shared
        assert isinstance(region, ClientRegion) and header.shm is not None
        pixels = region.read(header.shm.offset_bytes, header.shape, header.dtype)
        self._free_slot(seq)
        self._unsent.appendleft((header.model_copy(update={"shm": None}), pixels))
        self._stats.resent += 1
        for k, (queued, image) in enumerate(self._unsent):  # frames waiting in slots follow by message too
            if queued.shm is not None:
                self._unsent[k] = (queued.model_copy(update={"shm": None}),
                                   region.read(queued.shm.offset_bytes, queued.shape, queued.dtype))
                self._free_slot(queued.seq)
        self._slots_usable = False

    # -- the I/O thread ------------------------------------------------------------------------

    def _raise_if_broken(self) -> None:
        error = self._thread_error
        if isinstance(error, ServerAddressError):
            raise ServerAddressError(str(error)) from None
        if error is not None:
            raise RuntimeError(f"client I/O thread failed: {error}")

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # a wake-up is already pending

    def _open_socket(self) -> tuple[zmq.Socket, zmq.Socket]:
        sock = self._ctx.socket(zmq.DEALER)
        sock.routing_id = self._identity  # stable across reconnects: results find us again
        sock.linger = 0
        if self._curve[0] is not None:
            apply_client_curve(sock, self._curve[0], self._curve[1])
        monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
                                          | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
        _connect(sock, self.server, monitor)
        return sock, monitor

    @staticmethod
    def _close_socket(sock: zmq.Socket, monitor: zmq.Socket) -> None:
        if not sock.closed:
            sock.disable_monitor()
            sock.close(0)
        monitor.close(0)

    def _io_loop(self) -> None:
        try:
            self._run_io()
        except BaseException as e:  # surfaced to the API threads, never silent
            with self._cond:
                self._thread_error = e
                self._cond.notify_all()

    def _run_io(self) -> None:
        sock, monitor = self._open_socket()
        try:
            poller = zmq.Poller()
            poller.register(sock, zmq.POLLIN)
            poller.register(monitor, zmq.POLLIN)
            poller.register(self._wake_r.fileno(), zmq.POLLIN)
            connected_once = False
            resend_due = False  # frames in flight must go again (a reconnect), not all sent yet
            last_rx = last_ping = time.monotonic()
            while True:
                events = dict(poller.poll(int(self._heartbeat_s * 1000 / 4)))
                if self._wake_r.fileno() in events:
                    try:
                        while self._wake_r.recv(4096):
                            pass
                    except (BlockingIOError, OSError):
                        pass
                if monitor in events:
                    while monitor.poll(0):
                        event = zmq.utils.monitor.recv_monitor_message(monitor)["event"]
                        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                            resend_due = resend_due or connected_once
                            connected_once = True
                        elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                            self._auth_failed = True
                if sock in events:
                    while True:
                        try:
                            parts = recv_parts(sock, zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        last_rx = time.monotonic()
                        self._receive(parts)
                if resend_due:
                    resend_due = not self._resend_in_flight(sock)
                self._send_pending(sock)
                now = time.monotonic()
                with self._cond:
                    waiting = bool(self._in_flight)
                    if self._closing:
                        break
                if waiting and now - last_rx > self._liveness_s:
                    # Lazy Pirate: the connection is presumed dead; start over and resend.
                    poller.unregister(sock)
                    poller.unregister(monitor)
                    self._close_socket(sock, monitor)
                    sock, monitor = self._open_socket()
                    poller.register(sock, zmq.POLLIN)
                    poller.register(monitor, zmq.POLLIN)
                    with self._cond:
                        self._stats.reconnects += 1
                    resend_due = not self._resend_in_flight(sock)
                    last_rx = now
                elif waiting and now - last_rx > self._heartbeat_s and now - last_ping > self._heartbeat_s:
                    try:
                        send_message(sock, ControlRequest(request_id=_HEARTBEAT, command="ping"), flags=zmq.NOBLOCK)
                    except zmq.Again:
                        pass  # no peer to ping: liveness will reconnect
                    last_ping = now
        finally:  # also when the loop fails: an open socket would block the context's end
            self._close_socket(sock, monitor)

    def _send_pending(self, sock: zmq.Socket) -> None:
        """Send the queued control requests, then frames within the window. Never blocks, and never
        while holding the client's lock: a message no peer can take now (not connected yet, or the
        handshake failed) waits for the next turn of the loop (a blocked send here once held the lock,
        so that connect could not even time out)."""
        while True:
            with self._cond:
                control = self._controls[0] if self._controls else None  # only this thread takes them
                if control is None:
                    if (not self._unsent or len(self._in_flight) >= self.max_in_flight
                            or time.monotonic() < self._busy_until):
                        return
                    header, image = self._unsent.popleft()
                    header = header.model_copy(update={"t_sent_ns": time.time_ns()})
                    self._in_flight[header.seq] = (header, image)  # in flight: not dropped while it is sent
            try:
                if control is not None:
                    send_message(sock, control, flags=zmq.NOBLOCK)
                else:
                    send_message(sock, header, image, flags=zmq.NOBLOCK)
            except zmq.Again:
                if control is None:
                    with self._cond:  # not sent: waiting again, first in line
                        self._in_flight.pop(header.seq)
                        self._unsent.appendleft((header, image))
                return
            with self._cond:
                if control is not None:
                    self._controls.popleft()
                else:
                    self._stats.sent += 1
                    self._stats.sent_through_shared_memory += header.shm is not None

    def _resend_in_flight(self, sock: zmq.Socket) -> bool:
        """Send every frame in flight again (after a reconnect); False when no peer could take them all
        yet: the caller tries again on its next turn (the server answers a frame resent twice once)."""
        try:
            if isinstance(self._shared, ClientRegion):  # a restarted server maps the region again first
                send_message(sock, ControlRequest(request_id=_REATTACH, command="shm_attach", args={
                    "region": self._shared.name, "token": self._shared.token.hex()}), flags=zmq.NOBLOCK)
            with self._cond:
                frames = list(self._in_flight.values())
            for header, image in frames:
                send_message(sock, header, image, flags=zmq.NOBLOCK)
                with self._cond:
                    self._stats.resent += 1
        except zmq.Again:
            return False
        return True

    def _receive(self, parts: list[zmq.Frame]) -> None:
        try:
            msg = decode_result(parts, self._lend_result)
        except ProtocolError as e:  # not something this client can attribute to a frame
            self._unusable = f"answered with a message this client cannot read ({e.message})"
            return
        with self._cond:
            if isinstance(msg, Result):
                if msg.header.final and self._answered(msg.seq):
                    self._stats.results += 1
                    self._outcomes.append(msg)
            elif isinstance(msg, ControlReply):
                if msg.request_id not in (_HEARTBEAT, _REATTACH):
                    self._replies[msg.request_id] = msg
            elif isinstance(msg, ErrorHeader):
                if msg.request_id is not None:
                    self._replies[msg.request_id] = msg
                elif msg.code is ErrorCode.shared_memory and msg.seq in self._slots and msg.seq in self._in_flight:
                    self._without_shared_memory(msg.seq)
                elif (msg.code is ErrorCode.busy and self.mode == "lossless"
                      and msg.seq is not None and msg.seq in self._in_flight):
                    # The server holds this client's share already: send the frame again shortly.
                    self._unsent.appendleft(self._in_flight.pop(msg.seq))
                    self._stats.resent += 1
                    self._busy_until = time.monotonic() + BUSY_BACKOFF_S
                elif msg.seq is not None and self._answered(msg.seq):
                    self._stats.errors += 1
                    self._outcomes.append(Refusal(msg.seq, msg.code.value, msg.message))
                elif msg.seq is None:  # a message the server could not read, so cannot name
                    self._unusable = f"refused this client's request: {msg.code.value}: {msg.message}"
            elif isinstance(msg, AckHeader) and msg.status == "dropped":
                if self._answered(msg.seq):
                    self._stats.dropped_by_server += 1
                    self._outcomes.append(Refusal(msg.seq, "dropped_by_server", msg.detail))
            elif (isinstance(msg, AckHeader) and msg.status == "duplicate"
                  and "no longer cached" in msg.detail):
                if self._answered(msg.seq):
                    self._stats.errors += 1
                    self._outcomes.append(Refusal(msg.seq, "result_lost", msg.detail))
            self._cond.notify_all()

    def _lend_result(self, header: ResultHeader) -> np.ndarray:
        """A result's pixels in its frame's slot, as a view that holds the slot until it is dropped."""
        with self._cond:
            frame = self._in_flight.get(header.seq)
            if (not header.final or frame is None or frame[0].shm is None or header.seq not in self._slots
                    or frame[0].shm.result_offset_bytes != header.shm_offset_bytes):
                raise ProtocolError(ErrorCode.payload_size, "a result in shared memory outside its frame's slot")
            slot = self._slots.pop(header.seq)  # the view gives it back, not the answer
        region = self._shared
        assert isinstance(region, ClientRegion)
        return region.lend(header.shm_offset_bytes, header.shape, header.dtype, slot)


class ResultSubscriber:
    """SUB socket on the server's results: every stage's output of the chosen streams."""

    def __init__(self, address: str = DEFAULT_RESULTS, streams: Sequence[str] = (),
                 *, curve_secret_key: Path | None = None, curve_server_key: Path | None = None):
        self._ctx = zmq.Context()
        self._ctx.linger = 0
        self._sock = self._ctx.socket(zmq.SUB)
        self._streams = {s.encode() for s in streams}
        try:
            if curve_secret_key is not None:
                apply_client_curve(self._sock, curve_secret_key, curve_server_key)
            # PUB filters by prefix: subscribe to each stream, then match exactly below.
            for s in self._streams or {b""}:
                self._sock.setsockopt(zmq.SUBSCRIBE, s)
            _connect(self._sock, address)
        except BaseException:
            self.close()  # nothing is left open for the caller, who gets no object to close
            raise

    def recv(self, timeout_s: float | None = None) -> Result | None:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not self._sock.poll(None if left is None else int(left * 1000)):
                return None
            topic, *parts = recv_parts(self._sock)
            if self._streams and topic.bytes not in self._streams:
                continue
            msg = decode_result(parts)
            if isinstance(msg, Result):
                return msg

    def close(self) -> None:
        self._sock.close(0)
        self._ctx.term()

    def __enter__(self) -> ResultSubscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
