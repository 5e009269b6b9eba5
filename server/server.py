"""The inference server: a ROUTER for frames and control, a PUB for results.

Threads and who owns what (ZeroMQ sockets are used by one thread each):
- the I/O thread (``serve_forever``) owns the ROUTER, the PUB and the receiving end of an inproc
  pipe; it validates every message, answers control requests, de-duplicates resent frames and
  queues the rest;
- the worker threads (``--workers``, 1 by default) take frames from the queue, run the pipeline on
  onnxruntime (each worker its own sessions: its GPU, or its share of the cores; onnxruntime
  releases the GIL while it runs) and hand the results back through the inproc pipe, so the I/O
  thread stays responsive while a model runs. A stream's frames go to one worker at a time
  (``WorkQueue.done``) and the workers share the pipe, one batch's messages at a time, so each
  stream's results leave in order whichever worker ran them.

Every frame that enters gets exactly one answer: a result, an error, or an ack that says it
was a duplicate or dropped (latest mode). Nothing is lost uncounted.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from pathlib import Path
from queue import SimpleQueue

import numpy as np
import zmq

from livescope.emitters import EmitterTable
from livescope.frc import FRC_FIELDS, frc_table
from livescope.localise_maps import maps_to_emitters, range_warnings
from livescope.protocol import (
    AckHeader,
    ControlReply,
    ControlRequest,
    ErrorCode,
    ErrorHeader,
    FrameHeader,
    Header,
    Latency,
    ProtocolError,
    ResultHeader,
    array_from_payload,
    decode_header,
    encode_header,
    expected_nbytes,
    split_stage,
)
from livescope.psf_estimate import PsfOptics, PsfTiles, focus_alarm, tile_px_of, tile_table
from livescope.repository import (
    ModelRepository,
    ModelVersion,
    UnknownModelError,
    shipped_models_root,
)
from livescope.security import CurveServer
from livescope.server.adapt import ADAPTABLE_TASKS, Adaptation, connectable
from livescope.server.config import ServerConfig
from livescope.server.context import StreamContext
from livescope.server.control import execute
from livescope.server.domain import DomainWatch, domain_warnings
from livescope.server.ledger import StreamLedger
from livescope.server.localise_stage import LocaliseStreams, RenderSettings
from livescope.server.metrics import ServerMetrics
from livescope.server.models import LoadedModel, ModelRegistry
from livescope.server.offline_psf import estimate_tiles, psf_domain_warnings
from livescope.server.photons import StreamScales
from livescope.server.pipeline import check_pipeline
from livescope.server.providers import visible_gpus
from livescope.server.batching import BatchPolicy
from livescope.server.queue import Job, QueueFullError, SenderBusyError, WorkQueue
from livescope.server.recent import RecentlyUsed
from livescope.server.shared_regions import SharedRegions, result_area
from livescope.server.tiling import is_out_of_memory
from livescope.shared_memory import SharedMemoryError
from livescope.transport import ZERO_COPY_MIN_BYTES, recv_parts, send_message

log = logging.getLogger("livescope.server")

_PIPE = "inproc://livescope-results"
# Pipe message kinds: a final result (sender + PUB), an intermediate one (PUB), an error
# (sender), a control reply (sender), a final result written into the sender's shared memory
# (its header to the sender, header and payload to PUB).
_REPLY, _PUBLISH, _ERROR, _CONTROL, _SHARED = b"R", b"P", b"E", b"C", b"S"
MAX_WATCH_S = 300.0  # the longest lease `watch` grants at once
MAX_WATCHED_STREAMS = 256  # leases held at once: a client cannot grow the server's memory with names
# Control commands that may take seconds (loading a model) run on the control thread.
_SLOW_COMMANDS = frozenset({"load", "activate", "rollback", "unload", "rescan", "render"})
_MAX_STREAMS = 256  # per-stream de-duplication state kept for the most recent streams
# Messages ZeroMQ may hold for one peer before the server counts further ones undelivered: twice
# a client's share of the queue for answers, fewer for subscribers (viewers want the newest);
# a bound in bytes too, as results are at most max_frame_bytes (float32) each.
REPLY_QUEUE_MESSAGES = 128
PUB_QUEUE_MESSAGES = 64


class ServerStartError(Exception):
    """The server could not start (address in use, bad keys): a one-line message."""


class InferenceServer:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.metrics = ServerMetrics()
        self.repository = ModelRepository([shipped_models_root(), *config.model_dirs])
        self.registry = ModelRegistry(self.repository, config.runtime, workers=config.workers,
                                      gpus=visible_gpus() if config.workers > 1 else 1)
        self.batching = BatchPolicy(config.batch_max_frames)  # batches only where they pay
        self.queue = WorkQueue(config.max_queued_frames, max_jobs_per_sender=config.max_queued_frames_per_client,
                               max_bytes_per_sender=config.max_queued_bytes_per_client)
        self.localise_streams = LocaliseStreams(default_render=RenderSettings(pixel_nm=config.render_pixel_nm))
        self.ctx = zmq.Context()
        self._stop = threading.Event()
        self._ledgers: RecentlyUsed[tuple[bytes, str], StreamLedger] = RecentlyUsed(  # (sender, stream)
            _MAX_STREAMS, on_evict=self._forget_ledger)
        self._cached_bytes = 0  # results kept for resends, across all streams
        # busy: refusals, counted in errors too; undelivered_*: messages ZeroMQ could not take
        # (a client not reading or gone, a subscriber too slow), counted rather than dropped silently
        self._counts: dict[str, int] = {"frames": 0, "results": 0, "errors": 0, "dropped": 0,
                                        "duplicates": 0, "busy": 0, "undelivered_replies": 0,
                                        "undelivered_publications": 0}
        self._started = time.monotonic()
        # model ref -> [frames, seconds]: written by the worker, read by the stats command
        self._inference: dict[str, list[float]] = {}
        self._inference_lock = threading.Lock()
        self._domain = DomainWatch()  # the worker's
        self._context = StreamContext()  # the worker's: frames before, for models with context frames
        self._scales = StreamScales()  # the worker's: each stream's photon scale, for camera-agnostic models
        self._out_of_domain = 0  # frames whose results carry a warning; under _inference_lock
        self._frames_per_worker = [0] * config.workers  # frames each worker ran; under _inference_lock
        self._curve: CurveServer | None = None
        self._workers: list[threading.Thread] = []
        self._pipe_out: zmq.Socket | None = None  # the workers' end of the pipe, used under _pipe_lock
        self._pipe_lock = threading.Lock()
        self._control_requests: SimpleQueue = SimpleQueue()
        self._control_pipe: zmq.Socket | None = None  # the control thread's (renders are published on it)
        self._load_problems: list[str] = []
        self._adaptation: Adaptation | None = None  # the running (or last) live adaptation
        # stream -> until when (time.monotonic) its raw frames are published too: a viewer's lease,
        # renewed while it runs, so that one that crashed stops costing bandwidth on its own
        self._watched: dict[str, float] = {}
        self._control_thread = threading.Thread(target=self._control_loop,
                                                name="livescope-control", daemon=True)
        self.router: zmq.Socket | None = None
        self._shared = SharedRegions()  # the I/O thread's: clients' shared memory on this host
        self._caller = b""  # the I/O thread's: who sent the control request being carried out
        # topics subscribed on PUB (written by the I/O thread, read by the worker: a result in
        # shared memory is published only when someone may read it)
        self._subscribed_topics = 0

    # -- start and stop ------------------------------------------------------------------------

    def start(self) -> None:
        """Bind sockets, then load models; raise ServerStartError with a one-line reason."""
        if self.config.curve_secret_key is not None:
            self._curve = CurveServer(self.ctx, self.config.curve_secret_key,
                                      self.config.curve_allowed_clients)
        self.router = self._bind(zmq.ROUTER, self.config.frames_address)
        self.router.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a reconnecting client keeps its id
        # A send that cannot be delivered raises (rather than vanishing) so that it is counted.
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # An XPUB rather than a PUB: subscribers see the same socket, but with NODROP a send
        # says when a subscriber's queue is full, so that the miss is counted (_publish).
        self.pub = self._bind(zmq.XPUB, self.config.results_address, sndhwm=PUB_QUEUE_MESSAGES)
        self.pub.setsockopt(zmq.XPUB_NODROP, 1)
        self.pipe_in = self.ctx.socket(zmq.PULL)
        self.pipe_in.bind(_PIPE)
        if self.config.metrics_port:
            try:
                self.metrics.serve(self.config.metrics_port)
            except OSError as e:
                self.close()
                raise ServerStartError(
                    f"metrics port {self.config.metrics_port} is unavailable ({e.strerror}); "
                    "choose another with --metrics-port") from None
        if self.config.preload:  # after binding, so a taken address fails fast
            self._load_problems = self.registry.preload()
            for problem in self._load_problems:
                log.warning("%s", problem)
            for model in self.registry.loaded():
                self.metrics.provider.labels(model.ref, model.provider).set(1)
        self._pipe_out = self.ctx.socket(zmq.PUSH)
        self._pipe_out.connect(_PIPE)
        self._workers = [threading.Thread(target=self._work, args=(i,), name=f"livescope-worker-{i}", daemon=True)
                         for i in range(self.config.workers)]
        for worker in self._workers:
            worker.start()
        self._control_thread.start()
        log.info("serving frames on %s, results on %s", self.config.frames_address,
                 self.config.results_address)

    def _bind(self, kind: int, address: str, sndhwm: int = REPLY_QUEUE_MESSAGES) -> zmq.Socket:
        sock = self.ctx.socket(kind)
        sock.linger = 2000
        sock.sndhwm = sndhwm
        if self._curve is not None:
            self._curve.apply(sock)
        try:
            sock.bind(address)
        except zmq.ZMQError as e:
            sock.close(0)
            self.close()
            if e.errno == errno.EADDRINUSE:
                raise ServerStartError(f"address {address} is already in use (is another "
                                       "livescope server running?)") from None
            raise ServerStartError(f"cannot bind {address}: {e}") from None
        return sock

    def request_stop(self) -> None:
        """Stop taking frames, finish the ones in flight, then return from serve_forever."""
        self._stop.set()

    def close(self) -> None:
        if self._adaptation is not None:
            self._adaptation.cancel()
        if self._curve is not None:
            self._curve.stop()
            self._curve = None
        self.ctx.destroy(linger=2000)
        self._shared.close()

    # -- the I/O loop --------------------------------------------------------------------------

    def serve_forever(self) -> None:
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.pipe_in, zmq.POLLIN)
        poller.register(self.pub, zmq.POLLIN)
        draining = False
        while True:
            events = dict(poller.poll(50))
            if self.pipe_in in events:
                for _ in range(64):
                    try:
                        self._forward(recv_parts(self.pipe_in, zmq.NOBLOCK))
                    except zmq.Again:
                        break
            if self.router in events:
                for _ in range(64):
                    try:
                        parts = recv_parts(self.router, zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self._handle(parts)
            if self.pub in events:  # (un)subscriptions: ZeroMQ has applied them; count the topics
                for _ in range(64):
                    try:
                        change = self.pub.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    if change[:1] in (b"\x00", b"\x01"):
                        self._subscribed_topics += 1 if change[:1] == b"\x01" else -1
            self.metrics.queue_depth.set(len(self.queue))
            if self._stop.is_set() and not draining:
                draining = True
                self.queue.close()
                log.info("stopping: finishing %d queued frames", len(self.queue))
            if draining and not any(w.is_alive() for w in self._workers) and not events:
                break
        self._control_requests.put(None)
        self._control_thread.join(timeout=10)
        self.close()
        log.info("stopped")

    def _handle(self, parts: list[zmq.Frame]) -> None:
        identity, body = parts[0].bytes, parts[1:]
        if not body:
            return  # an empty message carries nothing to answer
        try:
            self._handle_message(identity, body)
        except Exception:  # a bug must cost one message its answer's detail, never the server
            log.exception("internal error while handling a message")
            self._error(identity, ErrorCode.internal, "internal error while handling this message; "
                        "the server logged it and goes on serving", stream=None, seq=None)

    def _handle_message(self, identity: bytes, body: list[zmq.Frame]) -> None:
        try:
            header = decode_header(body[0].bytes)
        except ProtocolError as e:
            self._error(identity, e.code, e.message, stream=e.stream, seq=e.seq, request_id=e.request_id)
            return
        if isinstance(header, FrameHeader):
            self._accept_frame(identity, header, body[1:])
        elif isinstance(header, ControlRequest):
            self._control(identity, header)
        else:
            self._error(identity, ErrorCode.unknown_type,
                        f"a client may send 'frame' or 'control' messages, not {header.type!r}",
                        stream=None, seq=None)

    def _accept_frame(self, identity: bytes, header: FrameHeader, payload: list[zmq.Frame]) -> None:
        stream, seq = header.stream, header.seq
        if len(payload) != (0 if header.shm else 1):
            self._error(identity, ErrorCode.payload_size,
                        f"a frame message has 2 parts (header, pixels), or 1 when its pixels are in shared "
                        f"memory (shm); got {1 + len(payload)}", stream=stream, seq=seq)
            return
        if self._stop.is_set():
            self._error(identity, ErrorCode.shutting_down, "the server is shutting down",
                        stream=stream, seq=seq)
            return
        if expected_nbytes(header.shape, header.dtype) > self.config.max_frame_bytes:
            self._error(identity, ErrorCode.frame_too_large,
                        f"frame of {header.shape[0]}x{header.shape[1]} {header.dtype} exceeds the "
                        f"server's limit of {self.config.max_frame_bytes} bytes",
                        stream=stream, seq=seq)
            return
        shared = None
        try:
            if header.shm is None:
                image = array_from_payload(header.shape, header.dtype, payload[0].buffer)
                pixels: zmq.Frame | memoryview = payload[0]
            else:
                image, shared = self._shared.frame(identity, header)
                pixels = image.data
        except ProtocolError as e:
            self._error(identity, e.code, e.message, stream=stream, seq=seq)
            return
        except SharedMemoryError as e:
            self._error(identity, ErrorCode.shared_memory, str(e), stream=stream, seq=seq)
            return
        ledger = self._ledger(identity, stream)
        if self._answered_as_resend(identity, header, ledger, pixels):
            return
        try:
            stages = [self.registry.resolve(stage) for stage in header.pipeline]
            check_pipeline(header, stages)
        except ProtocolError as e:
            self._error(identity, e.code, e.message, stream=stream, seq=seq)
            return
        except UnknownModelError as e:
            code = ErrorCode.unknown_model if "@" in str(e) else ErrorCode.unknown_pipeline
            self._error(identity, code, str(e), stream=stream, seq=seq)
            return
        except ValueError as e:
            self._error(identity, ErrorCode.unknown_model, str(e), stream=stream, seq=seq)
            return
        job = Job(identity, header, image, stages, payload=payload[0] if payload else None, shared=shared)
        try:
            superseded = self.queue.put(job)
        except (SenderBusyError, QueueFullError) as e:
            self._counts["busy"] += 1
            self._error(identity, ErrorCode.busy, f"{e}; send it again later", stream=stream, seq=seq)
            return
        ledger.pending[seq] = pixels
        if self._adaptation is not None:
            self._adaptation.offer(stream, seq, image, header.pixel_size_um)
        self._counts["frames"] += 1
        self.metrics.frames.labels(header.mode).inc()
        for old in superseded:
            self._cached_bytes += self._ledger(old.identity, old.header.stream).finish(old.header.seq, None, 0)
            self._counts["dropped"] += 1
            self.metrics.dropped.labels("superseded").inc()
            self._to_client(old.identity, AckHeader(stream=old.header.stream, seq=old.header.seq,
                                                    status="dropped",
                                                    detail="superseded by a newer frame (latest mode)"))

    def _answered_as_resend(self, identity: bytes, header: FrameHeader, ledger: StreamLedger,
                            pixels: zmq.Frame | memoryview) -> bool:
        """Answer a frame this sender sent before (the same stream, seq and pixels) without running
        it again where possible: it is in flight (its result will follow) or its result is kept.
        False: process it (a new frame, or a resend whose result is no longer kept)."""
        same = ledger.same_as_pending(header.seq, pixels)
        if same is False:
            self._error(identity, ErrorCode.bad_header,
                        f"seq {header.seq} of stream {header.stream!r} is being processed with other "
                        "pixels: a seq names one frame of its stream", stream=header.stream, seq=header.seq)
            return True
        cached = None if same else ledger.cached_result(header.seq, pixels)
        if not same and cached is None:
            return False
        self._counts["duplicates"] += 1
        self.metrics.duplicates.inc()
        if cached is not None:  # the sender lost our result: send it again
            self._to_client(identity, cached)
        else:
            self._to_client(identity, AckHeader(stream=header.stream, seq=header.seq, status="duplicate",
                                                detail="already queued; its result will follow"))
        return True

    def _trim_result_cache(self) -> None:
        """Keep cached results within budget, evicting from the least recently active streams."""
        for ledger in self._ledgers.values():
            while ledger.results and self._cached_bytes > self.config.result_cache_bytes:
                self._cached_bytes -= ledger.evict_oldest()
            if self._cached_bytes <= self.config.result_cache_bytes:
                return

    def _ledger(self, identity: bytes, stream: str) -> StreamLedger:
        """The ledger of one sender's stream (never shared between senders: see server/ledger.py)."""
        return self._ledgers.use((identity, stream), StreamLedger)

    def _forget_ledger(self, ledger: StreamLedger) -> None:
        self._cached_bytes -= ledger.cached_bytes()

    def _error(self, identity: bytes, code: ErrorCode, message: str, *, stream: str | None,
               seq: int | None, request_id: str | None = None) -> None:
        self._counts["errors"] += 1
        self.metrics.errors.labels(code.value).inc()
        log.debug("error to client: %s: %s", code.value, message)
        self._to_client(identity, ErrorHeader(code=code, message=message, stream=stream, seq=seq,
                                              request_id=request_id))

    def _forward(self, parts: list[zmq.Frame]) -> None:
        """A message from the worker: [kind, identity, stream, seq, header, payload?].

        The envelope says what the header holds, so results need not be parsed again here.
        """
        kind, identity, stream = parts[0].bytes, parts[1].bytes, parts[2].bytes
        seq, body = int(parts[3].bytes), parts[4:]
        if kind == _PUBLISH:
            self._publish([stream, *body])
            return
        if kind == _CONTROL:
            self._to_client(identity, body)
            return
        if kind == _SHARED:  # the pixels are in the sender's shared memory: the header tells it so
            self._to_client(identity, body[:1])
            self._counts["results"] += 1
            self._cached_bytes += self._ledger(identity, stream.decode()).finish(seq, None, 0)
            if len(body) > 1:
                self._publish([stream, *body[1:]])
            return
        self._to_client(identity, body)
        ledger = self._ledger(identity, stream.decode())
        if kind == _ERROR:
            self._counts["errors"] += 1
            self._cached_bytes += ledger.finish(seq, None, 0)
            return
        self._counts["results"] += 1
        self._cached_bytes += ledger.finish(seq, body, self.config.result_cache_per_stream)
        self._trim_result_cache()
        self._publish([stream, *body])

    def _to_client(self, identity: bytes, message: Header | list[zmq.Frame]) -> None:
        """Send one message to one client, never blocking the I/O thread: if the client does not
        read (its queue is full) or has gone, the message is counted undelivered. A lossless
        client's resend still gets a kept result."""
        parts = message if isinstance(message, list) else [encode_header(message)]
        try:
            self.router.send_multipart([identity, *parts], flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self._undelivered("undelivered_replies", "client_not_reading")
        except zmq.ZMQError as e:
            if e.errno != errno.EHOSTUNREACH:
                raise
            self._undelivered("undelivered_replies", "client_gone")

    def _publish(self, parts: list) -> None:
        """Publish to every subscriber with room; a message some subscriber had no room for is
        counted once (XPUB_NODROP refuses the whole send, so it is sent again without it)."""
        try:
            self.pub.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
            return
        except zmq.Again:
            self._undelivered("undelivered_publications", "slow_subscriber")
        self.pub.setsockopt(zmq.XPUB_NODROP, 0)
        try:
            self.pub.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
        finally:
            self.pub.setsockopt(zmq.XPUB_NODROP, 1)

    def _undelivered(self, count: str, reason: str) -> None:
        self._counts[count] += 1
        self.metrics.undelivered.labels(reason).inc()

    # -- control -------------------------------------------------------------------------------

    def _control(self, identity: bytes, req: ControlRequest) -> None:
        if req.command in _SLOW_COMMANDS:
            self._control_requests.put((identity, req))
            return
        self._caller = identity  # the client a command on the I/O thread acts for (its shared memory)
        self._to_client(identity, self._execute(req))

    def _execute(self, req: ControlRequest) -> ControlReply:
        return execute(req, getattr(self, f"_cmd_{req.command}", None), self.commands())

    def _control_loop(self) -> None:
        """The control thread: slow commands, answered through the pipe."""
        pipe = self._control_pipe = self.ctx.socket(zmq.PUSH)
        pipe.connect(_PIPE)
        try:
            while (item := self._control_requests.get()) is not None:
                identity, req = item
                send_message(pipe, self._execute(req), envelope=[_CONTROL, identity, b"", b"0"])
        finally:
            pipe.close(linger=-1)

    def commands(self) -> list[str]:
        return sorted(n[5:] for n in dir(self) if n.startswith("_cmd_"))

    def _cmd_ping(self) -> dict:
        return {"time_ns": time.time_ns()}

    def _cmd_health(self) -> dict:
        loaded = self.registry.loaded()
        return {"status": "stopping" if self._stop.is_set() else "serving",
                "providers": sorted({m.provider for m in loaded}),
                "models_loaded": [m.ref for m in loaded],
                "queue_depth": len(self.queue),
                "uptime_s": round(time.monotonic() - self._started, 3)}

    def _cmd_stats(self) -> dict:
        with self._inference_lock:
            inference = {ref: {"frames": int(n), "mean_ms_per_frame": round(1e3 * t / n, 3)}
                         for ref, (n, t) in self._inference.items()}
            out_of_domain = self._out_of_domain
            per_worker = list(self._frames_per_worker)
        return {**self._counts, "out_of_domain": out_of_domain, "queue_depth": len(self.queue),
                "frames_per_worker": per_worker,
                "streams": len({stream for _, stream in self._ledgers}),
                "result_cache_bytes": self._cached_bytes,
                "uptime_s": round(time.monotonic() - self._started, 3), "inference": inference}

    def _cmd_list_models(self) -> dict:
        loaded = {m.ref: m for m in self.registry.loaded()}
        models = []
        for name in self.repository.names():
            active = self.registry.active(name)
            if active is None:  # none served yet: the default would be (None: only candidates)
                has_default = self.repository.default(name) is not None
                active = self.registry.resolve(name).card.version if has_default else None
            for v in self.repository.versions(name):
                models.append({"name": name, "version": v.card.version, "task": v.card.task,
                               "active": v.card.version == active, "loaded": v.ref in loaded,
                               "provider": loaded[v.ref].provider if v.ref in loaded else None,
                               "metrics": v.card.metrics,
                               "trained_by": v.card.provenance.command,
                               "data": v.card.provenance.data,
                               "session_ids": list(v.card.provenance.session_ids),
                               "comparison": (v.card.comparison.model_dump(mode="json")
                                              if v.card.comparison else None),
                               "gate": v.card.gate.model_dump(mode="json") if v.card.gate else None,
                               "folder": str(v.folder)})
        return {"models": models, "problems": self.repository.problems + self._load_problems}

    def _cmd_load(self, model: str) -> dict:
        name, version = split_stage(model)
        loaded = self.registry.load_everywhere(self.repository.resolve(name, version))
        self.metrics.provider.labels(loaded.ref, loaded.provider).set(1)
        return {"model": loaded.ref, "provider": loaded.provider,
                "load_s": round(loaded.load_seconds, 3)}

    def _cmd_activate(self, model: str, force: bool = False) -> dict:
        name, _ = split_stage(model)
        previous = self.registry.active(name)
        loaded = self.registry.activate(model, force=force)
        self.metrics.provider.labels(loaded.ref, loaded.provider).set(1)
        log.info("activated %s (was %s@%s)", loaded.ref, name, previous)
        return {"active": loaded.ref, "previous": f"{name}@{previous}" if previous else None}

    def _cmd_rollback(self, model: str) -> dict:
        """Serve again the version of ``model`` (a name) that was active before the current one."""
        name, version = split_stage(model)
        if version is not None:
            raise ValueError(f"rollback takes a model name, e.g. {name!r}, not a version ({model!r})")
        loaded, replaced = self.registry.rollback(name)
        self.metrics.provider.labels(loaded.ref, loaded.provider).set(1)
        log.info("rolled %s back to %s (was %s@%s)", name, loaded.ref, name, replaced)
        return {"active": loaded.ref, "previous": f"{name}@{replaced}"}

    def _cmd_adapt(self, task: str, stream: str, frames: int = 64, minutes: float = 3.0,
                   context_frames: int = 1) -> dict:
        """Start a live adaptation (server/adapt.py): the stream's next ``frames`` frames, a
        ``task`` model trained on them for ``minutes`` in a separate process (seeing
        ``context_frames`` frames at a time: the stream is a time series), activated if better."""
        if task not in ADAPTABLE_TASKS:
            raise ValueError(f"adapt trains {', '.join(ADAPTABLE_TASKS)} models, not {task!r}")
        if not 8 <= frames <= 4096 or not 0.1 <= minutes <= 120 or not 1 <= context_frames <= 9:
            raise ValueError(f"adapt takes 8-4096 frames, 0.1-120 minutes and 1-9 context frames, not {frames}, "
                             f"{minutes:g} and {context_frames}")
        running = self._adaptation
        if running is not None and not running.finished:
            status = running.status()
            raise ValueError(f"an adaptation is running ({status.task} on stream {status.stream!r}: "
                             f"{status.state}); adapt_status follows it")
        if not self.config.model_dirs:
            raise ValueError("the server has no model repository of its own to write to; start it with --models DIR")
        if self._curve is not None:
            raise ValueError("live adaptation is not available on a CURVE-secured server yet (its trainer "
                             "process would need a client key); train with --deploy instead")
        self._adaptation = Adaptation(task=task, stream=stream, frames=frames, minutes=minutes,
                                      repository=Path(self.config.model_dirs[0]),
                                      server_address=connectable(self.config.frames_address),
                                      outcome=self._adaptation_outcome, context_frames=context_frames,
                                      fine_tune_from=self._fine_tune_start(task, context_frames))
        return self._adaptation.status().model_dump()

    def _fine_tune_start(self, task: str, context_frames: int) -> str | None:
        """The active version, when adapting fine-tunes it: a camera-agnostic one (it takes photons),
        and no context frames asked for (those need a network of their own)."""
        if context_frames > 1:
            return None
        try:
            active = self.registry.resolve(task)  # what the stage runs (the default, if it has not served yet)
        except UnknownModelError:
            return None
        return active.ref if active.card.normalisation.kind == "photons" else None

    def _cmd_adapt_status(self) -> dict:
        """The running or last adaptation's status."""
        if self._adaptation is None:
            raise LookupError("no adaptation has been started in this server; adapt starts one")
        return self._adaptation.status().model_dump()

    def _adaptation_outcome(self, ref: str) -> tuple[bool, str]:
        """Whether the version an adaptation trained is active now, and why (not), in its card's words."""
        name, version = split_stage(ref)
        try:
            card = self.repository.resolve(name, version).card
        except UnknownModelError as e:
            return False, f"the server does not see it: {e}"
        compared = card.comparison.summary() if card.comparison is not None else "no other version was active"
        if self.registry.active(name) == version:
            return True, compared
        if not card.serves_by_default:
            return False, f"failed the quality gate: {card.gate.reason}; kept as a candidate"
        return False, f"{compared}; the active version stays"

    def _cmd_unload(self, model: str) -> dict:
        self.registry.unload(model)
        return {"unloaded": model}

    def _cmd_render(self, stream: str, pixel_nm: float | None = None, method: str | None = None) -> dict:
        """Publish a localise stream's super-resolution render now (on PUB, topic the stream, stage
        "render", float32 image); with ``pixel_nm`` / ``method``, redrawn at those settings."""
        current = None
        if pixel_nm is not None or method is not None:
            current = RenderSettings(**{k: v for k, v in (("pixel_nm", pixel_nm), ("method", method))
                                        if v is not None})
        info, image, curve = self.localise_streams.render(stream, current)
        seq = max(info.last_seq, 0)
        idle = Latency(queue_ms=0, inference_ms=0, total_ms=0)
        header = ResultHeader(stream=stream, seq=seq, stage="render", model=info.model,
                              final=False, shape=image.shape, dtype="float32",
                              pixel_size_um=info.pixel_nm / 1000.0, latency=idle)
        send_message(self._control_pipe, header, image,
                     envelope=[_PUBLISH, b"", stream.encode(), b"%d" % seq])
        if curve is not None:  # the FRC curve the resolution was read on, one row per ring
            rows = frc_table(curve)
            frc = ResultHeader(stream=stream, seq=seq, stage="frc", model=info.model, final=False, kind="table",
                               shape=rows.shape, dtype="record", fields=FRC_FIELDS, latency=idle)
            send_message(self._control_pipe, frc, rows, envelope=[_PUBLISH, b"", stream.encode(), b"%d" % seq])
        return info.model_dump()

    def _cmd_watch(self, stream: str, seconds: float = 10.0) -> dict:
        """Publish ``stream``'s raw frames on PUB too (stage "raw", beside its results) for the next
        ``seconds``; a viewer renews this while it shows the stream."""
        if not 0 < seconds <= MAX_WATCH_S:
            raise ValueError(f"watch: seconds must be in (0, {MAX_WATCH_S:g}], not {seconds:g}")
        now = time.monotonic()
        for name in [s for s, until in self._watched.items() if until <= now]:
            del self._watched[name]  # leases that ran out
        if stream not in self._watched and len(self._watched) >= MAX_WATCHED_STREAMS:
            raise ValueError(f"watch: {MAX_WATCHED_STREAMS} streams are watched already; let a lease run out first")
        self._watched = {**self._watched, stream: now + seconds}  # a new dict: the worker reads it unlocked
        return {"stream": stream, "seconds": seconds}

    def _cmd_shm_attach(self, region: str, token: str) -> dict:
        """Read this client's frames from (and write their results into) its shared-memory region on
        this host (``livescope.shared_memory``); ``token``: the hex of the region's first 16 bytes."""
        try:
            return self._shared.attach(self._caller, region, token)
        except SharedMemoryError as e:
            raise ValueError(str(e)) from None

    def _cmd_shm_detach(self, region: str) -> dict:
        """Stop using this client's region (it is unmapped once no frame in flight views it)."""
        return self._shared.detach(self._caller, region)

    def _cmd_rescan(self) -> dict:
        self.repository.rescan()
        return {"models": {n: [v.card.version for v in self.repository.versions(n)]
                           for n in self.repository.names()},
                "problems": self.repository.problems}

    # -- the worker ----------------------------------------------------------------------------

    def _work(self, worker: int) -> None:
        while True:
            jobs = self.queue.take_batch(self.batching.limit, timeout_s=0.2,
                                         wait_s=self.config.batch_wait_ms / 1e3)
            if not jobs:
                if self._stop.is_set() and len(self.queue) == 0:
                    return
                continue
            try:
                self._run_batch(jobs, worker)
            except Exception:  # a bug must cost these frames their results, never the worker
                log.exception("internal error in worker %d on %d frame(s)", worker, len(jobs))
                self._refuse_jobs(jobs, ErrorCode.internal,
                                  "internal error while processing this frame; the server logged it")
            finally:  # answered: their streams may go to any worker
                self.queue.done(jobs)

    def _refuse_jobs(self, jobs: list[Job], code: ErrorCode, message: str) -> None:
        """Each of these frames' answer: an error (through the pipe, so the I/O thread counts it)."""
        self.metrics.errors.labels(code.value).inc(len(jobs))
        with self._pipe_lock:
            for job in jobs:
                h = job.header
                err = ErrorHeader(code=code, stream=h.stream, seq=h.seq, message=message)
                send_message(self._pipe_out, err, envelope=[_ERROR, job.identity, h.stream.encode(), b"%d" % h.seq])

    def _run_batch(self, jobs: list[Job], worker: int = 0) -> None:
        """Run one micro-batch through its pipeline; send each frame's results in order."""
        t_start = time.perf_counter()
        x = jobs[0].image[None] if len(jobs) == 1 else np.stack([j.image for j in jobs])
        # per stage: images (N, H, W), or one emitter table per frame (a localise stage, last)
        outputs: list[tuple[LoadedModel, np.ndarray | list[EmitterTable] | list[PsfTiles]]] = []
        stage = jobs[0].stages[0]
        warnings = [list(self._input_warnings(job)) for job in jobs]  # per frame; a localise stage adds
        for k, job in enumerate(jobs):
            if job.header.focus_alarm is not None:  # the acquisition's own (its autofocus lost focus)
                warnings[k].append(f"focus alarm (acquisition): {job.header.focus_alarm}")
                self.metrics.focus_alarms.labels("acquisition").inc()
        try:
            for stage in jobs[0].stages:
                t0 = time.perf_counter()
                if stage.card.task == "psf":
                    model, tiles = self._psf(stage, jobs, x, warnings, worker)
                    outputs.append((model, tiles))
                elif stage.card.task == "localise":
                    model, tables = self._localise(stage, jobs, x, warnings, worker)
                    outputs.append((model, tables))
                elif stage.card.task == "refocus":
                    model, x = self._refocus(stage, jobs, x, worker)
                    outputs.append((model, x))
                elif stage.card.normalisation.kind == "photons":  # a camera-agnostic model
                    model, x = self._run_in_photons(stage, jobs, x, warnings, worker)
                    outputs.append((model, x))
                elif stage.card.context_frames > 1:  # a denoiser that sees the stream's frames before
                    windows = self._context.windows([(j.identity, j.header.stream, stage.ref) for j in jobs],
                                                    [j.header.seq for j in jobs], x, stage.card.context_frames)
                    model, out = self._run_stage(stage, windows, worker=worker)
                    x = out[:, 0]
                    outputs.append((model, x))
                else:
                    model, x = self._run_stage(stage, x, out=self._result_slot(jobs, stage), worker=worker)
                    outputs.append((model, x))
                self._record_inference(model.ref, time.perf_counter() - t0, len(jobs))
        except Exception as e:  # any failure inside a model is these frames' error, not ours
            log.warning("inference failed in %s on %d frame(s): %s", stage.ref, len(jobs), e)
            self._refuse_jobs(jobs, ErrorCode.inference_failed,
                              f"{stage.ref} failed on this frame; the server's log says why")
            return
        t_done = time.perf_counter()
        with self._inference_lock:
            self._frames_per_worker[worker] += len(jobs)
        self.batching.record(jobs[0].batch_key, len(jobs), t_done - t_start)
        self.metrics.batch_size.observe(len(jobs))
        self._count_out_of_domain(jobs, warnings)
        with self._pipe_lock:  # one batch's messages at a time: a stream's results stay in order
            self._send_results(jobs, outputs, warnings, t_start, t_done, self._pipe_out)

    def _send_results(self, jobs: list[Job], outputs: list, warnings: list[list[str]], t_start: float,
                      t_done: float, pipe: zmq.Socket) -> None:
        """Each frame's raw publication (if watched) and results into the pipe, in order (under _pipe_lock)."""
        for k, job in enumerate(jobs):
            h = job.header
            # this frame's share of its batch's compute; total_ms is its real wait, the whole batch's included
            latency = Latency(queue_ms=(t_start - job.t_received) * 1e3,
                              inference_ms=(t_done - t_start) * 1e3 / len(jobs),
                              total_ms=(t_done - job.t_received) * 1e3, batch_size=len(jobs))
            self.metrics.total.observe(t_done - job.t_received)
            envelope_tail = [job.identity, h.stream.encode(), b"%d" % h.seq]
            if self._watched.get(h.stream, 0.0) > time.monotonic():  # a viewer shows this stream: its raw frame too
                raw = ResultHeader(stream=h.stream, seq=h.seq, stage="raw", model="raw", final=False,
                                   shape=job.image.shape, dtype=job.image.dtype.name, pixel_size_um=h.pixel_size_um,
                                   z_um=h.z_um, event_index=h.event_index, t_sent_ns=h.t_sent_ns, latency=latency)
                send_message(pipe, raw, np.ascontiguousarray(job.image), envelope=[_PUBLISH, *envelope_tail])
            for i, (model, out) in enumerate(outputs):
                final = i == len(outputs) - 1
                if isinstance(out, list):  # a table per frame: packed records of emitters or of PSF tiles
                    payload, told = out[k].rows, out[k].warnings
                    shape: dict = dict(kind="table", shape=payload.shape, dtype="record", fields=out[k].wire_fields)
                else:
                    payload, told = np.ascontiguousarray(out[k]), ()
                    shape = dict(shape=payload.shape, dtype=payload.dtype.name)
                result = ResultHeader(stream=h.stream, seq=h.seq, stage=h.pipeline[i],
                                      model=model.ref, final=final, **shape,
                                      pixel_size_um=h.pixel_size_um,
                                      z_um=h.z_um, dz_um=h.dz_um, event_index=h.event_index,
                                      t_sent_ns=h.t_sent_ns, latency=latency, warnings=tuple(warnings[k]) + told)
                self.metrics.results.labels(model.ref).inc()
                if final and job.shared is not None and self._into_shared_memory(job, result, payload, pipe,
                                                                                  envelope_tail):
                    continue
                send_message(pipe, result, payload,
                             envelope=[_REPLY if final else _PUBLISH, *envelope_tail])

    def _into_shared_memory(self, job: Job, result: ResultHeader, payload: np.ndarray, pipe: zmq.Socket,
                            envelope_tail: list[bytes]) -> bool:
        """Put a final image result in its frame's slot (unless the model wrote it there) and tell the
        sender where; False when it does not fit (a table, or more bytes than the slot holds): it then
        goes in the message. Subscribers get a copy: the sender reuses the slot once it is done."""
        area = None if result.kind != "image" else result_area(job.shared, job.header.shm, payload.shape, payload.dtype)
        if area is None:
            return False
        if area.ctypes.data != payload.ctypes.data:
            np.copyto(area, payload)
        told = result.model_copy(update={"shm_offset_bytes": job.header.shm.result_offset_bytes})
        if self._subscribed_topics <= 0:  # nobody would read a publication
            pipe.send_multipart([_SHARED, *envelope_tail, encode_header(told)])
            return True
        pipe.send_multipart([_SHARED, *envelope_tail, encode_header(told), encode_header(result)], zmq.SNDMORE)
        pipe.send(np.array(payload), copy=payload.nbytes < ZERO_COPY_MIN_BYTES)
        return True

    @staticmethod
    def _result_slot(jobs: list[Job], stage: ModelVersion) -> np.ndarray | None:
        """(1, H, W) where the final stage of a lone frame from shared memory may write its result
        directly: the frame's slot (else None: the result is copied there, or sent, after)."""
        job = jobs[0]
        if len(jobs) != 1 or job.shared is None or stage is not job.stages[-1]:
            return None
        spec = stage.card.outputs[0]
        area = result_area(job.shared, job.header.shm, job.header.shape, spec.dtype)
        return None if area is None else area[None]

    def _run_stage(self, stage: ModelVersion, x: np.ndarray, out: np.ndarray | None = None,
                   worker: int = 0) -> tuple[LoadedModel, np.ndarray]:
        """One stage on a batch, on ``worker``'s session; a device out of memory even in small tiles
        hands it to the CPU. ``out``: where the result may go directly (``LoadedModel.run_frames``)."""
        model = self.registry.load(stage, worker)
        try:
            return model, model.run_frames(x, out)
        except Exception as e:
            if not is_out_of_memory(e) or model.provider == "cpu":
                raise
        log.warning("%s: out of memory on %s even in small tiles; moving it to the CPU", model.ref,
                    model.provider)
        model = self.registry.fall_back_to_cpu(stage, worker)
        self.metrics.provider.labels(model.ref, model.provider).set(1)
        return model, model.run_frames(x)

    def _input_warnings(self, job: Job) -> tuple[str, ...]:
        """Where the frame is unlike the training data of its pipeline's first model (server/domain.py)."""
        card, stream = job.stages[0].card, job.header.stream
        # a camera-agnostic model's photons are counted with the scale its frames are converted with
        return self._domain.warnings((job.identity, stream, card.ref), lambda: self._logged(stream, domain_warnings(
            card, job.image, f"stream {stream!r}",
            advice="save a run (acquire --output RUN) and train a model on it: livescope train denoise --data RUN",
            scale=(self._scales.scale((job.identity, stream), job.header, job.image)
                   if card.normalisation.kind == "photons" else None))))

    @staticmethod
    def _logged(stream: str, warnings: tuple[str, ...]) -> tuple[str, ...]:
        for warning in warnings:
            log.warning("stream %s: %s", stream, warning)
        return warnings

    def _count_out_of_domain(self, jobs: list[Job], warnings: list[list[str]]) -> None:
        flagged = [job for job, found in zip(jobs, warnings) if found]
        for job in flagged:
            self.metrics.out_of_domain.labels(job.stages[0].ref).inc()
        if flagged:
            with self._inference_lock:
                self._out_of_domain += len(flagged)

    def _psf(self, stage: ModelVersion, jobs: list[Job], x: np.ndarray, warnings: list[list[str]],
             worker: int = 0) -> tuple[LoadedModel, list[PsfTiles]]:
        """Each frame cut into the model's tiles, each read with the frame's optics -> one record per
        tile (`livescope.psf_estimate.TILE_DTYPE`). Optics outside the trained range add warnings."""
        used = [self.registry.load(stage, worker)]  # the session that ran (a device out of memory: the CPU's)

        def run(windows: np.ndarray) -> np.ndarray:
            used[0], out = self._run_stage(stage, windows, worker=worker)
            return out

        tile = tile_px_of(stage.card)
        tables = []
        for k, job in enumerate(jobs):
            h = job.header
            optics = PsfOptics.of(h.objective, h.pixel_size_um * 1000.0)
            origins, est = estimate_tiles(run, x[k : k + 1], optics, tile,
                                          astigmatism_sign=h.objective.astigmatism_sign)
            rows = tile_table(origins, tile, est)
            alarm = focus_alarm(rows, self.config.focus_alarm_um)
            if alarm is not None:  # said in the result's warnings (not counted as out of domain: it is not)
                self.metrics.focus_alarms.labels(stage.ref).inc()
            tables.append(PsfTiles(rows, alarm))
            warnings[k] += self._domain.warnings(  # the stream's optics, once (a key of their own)
                (job.identity, h.stream, stage.ref, "optics"),
                lambda h=h, o=optics: self._logged(h.stream, psf_domain_warnings(stage.card, o, tile)))
        return used[0], tables

    def _localise(self, stage: ModelVersion, jobs: list[Job], x: np.ndarray, warnings: list[list[str]],
                  worker: int = 0) -> tuple[LoadedModel, list[EmitterTable]]:
        """Each frame (ADU) in photons, with its stream's frames before as context -> its emitters;
        the tables also grow the streams' renders. Data outside the model's trained range adds to
        the frames' ``warnings``."""
        spec = stage.card.localise
        headers = [job.header for job in jobs]
        photons = np.stack([h.camera.photons(x[k]) for k, h in enumerate(headers)])
        windows = self.localise_streams.windows(headers, photons, spec.context_frames)
        model, maps = self._run_stage(stage, windows, worker=worker)
        tables = []
        for k, h in enumerate(headers):
            pixel_size_nm = h.pixel_size_um * 1000.0
            table = maps_to_emitters(maps[k], pixel_size_nm, h.seq + 1, spec)
            tables.append(table)
            self.localise_streams.add(h, table, pixel_size_nm, model.ref)
            warnings[k] += self._domain.warnings(
                (jobs[k].identity, h.stream, model.ref),
                lambda k=k, h=h, px=pixel_size_nm: self._logged(h.stream, tuple(
                    range_warnings(stage.card, px, photons[k : k + 1]))))
        return model, tables

    def _run_in_photons(self, stage: ModelVersion, jobs: list[Job], x: np.ndarray, warnings: list[list[str]],
                        worker: int = 0) -> tuple[LoadedModel, np.ndarray]:
        """Each frame (ADU, any dtype) in noise-equivalent photons with its stream's scale (its header's
        camera, else estimated from the stream's first frame: server/photons.py), and the result back in
        float32 ADU."""
        scales = [self._scales.scale((job.identity, job.header.stream), job.header, x[k]) for k, job in enumerate(jobs)]
        photons = np.stack([scale.to_photons(x[k]) for k, scale in enumerate(scales)])
        model, out = self._run_stage(stage, photons, worker=worker)
        for k, scale in enumerate(scales):
            warnings[k] += self._scales.warnings(scale)
        return model, np.stack([scale.to_adu(out[k]) for k, scale in enumerate(scales)])

    def _refocus(self, stage: ModelVersion, jobs: list[Job], x: np.ndarray, worker: int = 0
                 ) -> tuple[LoadedModel, np.ndarray]:
        """Each frame (ADU, any pixel dtype) with a uniform map of its own delta-z -> the frame at
        that plane, float32 ADU (N, H, W). Frames of one batch may ask for different delta-z."""
        n, h, w = x.shape
        frame_dz = np.empty((n, 2, h, w), np.float32)
        frame_dz[:, 0] = x
        frame_dz[:, 1] = np.array([job.header.dz_um for job in jobs], np.float32)[:, None, None]
        model, out = self._run_stage(stage, frame_dz, worker=worker)
        return model, out[:, 0]

    def _record_inference(self, ref: str, seconds: float, frames: int) -> None:
        self.metrics.inference.labels(ref).observe(seconds)
        with self._inference_lock:
            acc = self._inference.setdefault(ref, [0, 0.0])
            acc[0] += frames
            acc[1] += seconds
