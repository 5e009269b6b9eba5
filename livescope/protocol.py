"""The livescope wire protocol: message headers as versioned pydantic models.

Every message is a ZeroMQ multipart message ``[header, payload...]``. The header is UTF-8 JSON
of one of the models below, told apart by its ``type`` field; the payload (frames and results
only) is the raw C-contiguous little-endian pixel buffer described by the header's ``shape``
and ``dtype``. ``docs/protocol.md`` is the reference for writing a client in any language.

This module knows nothing about sockets: it turns headers into bytes and back, and checks that
a payload matches its header. ``livescope.transport`` does the sending.
"""

from __future__ import annotations

import json
import math
import re
from enum import Enum
from typing import Annotated, Any, Literal, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

# The camera model is the core's (livescope/camera.py); a frame header carries its calibration.
from livescope.camera import CameraCalibration

PROTOCOL_VERSION = 1
"""Bumped on any change that an older peer could misread."""

PixelDtype = Literal["uint8", "uint16", "float32"]
"""Pixel types a frame or an image result may carry (little-endian)."""

DeliveryMode = Literal["lossless", "latest"]
StageName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,63}(@[0-9]+)?$")]
STREAM_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"
StreamId = Annotated[str, Field(pattern=STREAM_PATTERN)]


MAX_PIPELINE_STAGES = 8


class ErrorCode(str, Enum):
    """Why the server refused a message or could not process a frame."""

    bad_header = "bad_header"  # not JSON, or fields missing / of the wrong type
    unknown_type = "unknown_type"  # `type` is not one this server speaks
    protocol_version = "protocol_version"  # `protocol` differs from the server's
    payload_size = "payload_size"  # payload bytes != prod(shape) * itemsize, or parts missing
    unsupported_dtype = "unsupported_dtype"  # dtype not in PixelDtype
    unknown_model = "unknown_model"  # a pipeline stage names no loaded model / version
    unknown_pipeline = "unknown_pipeline"  # empty pipeline or a stage no task provides
    frame_too_large = "frame_too_large"  # payload over the server's configured limit
    inference_failed = "inference_failed"  # the model raised while processing this frame
    bad_request = "bad_request"  # a control request the server cannot carry out
    busy = "busy"  # the sender has its share of the server's queue (or the queue is full): send later
    shutting_down = "shutting_down"  # server is draining; frame not accepted
    shared_memory = "shared_memory"  # the frame's shared-memory slot cannot be read: send its pixels instead
    internal = "internal"


class ProtocolError(Exception):
    """A message that cannot be accepted; `code` says why, the text says what to fix."""

    def __init__(self, code: ErrorCode, message: str, *, stream: str | None = None, seq: int | None = None,
                 request_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.stream, self.seq = stream, seq  # the refused frame's, where they could be read
        self.request_id = request_id  # the refused control request's, where it could be read


_STREAM_RE = re.compile(STREAM_PATTERN)


def _request_id(obj: dict) -> str | None:
    """A refused control header's request_id, if valid (the refusal then carries it)."""
    rid = obj.get("request_id")
    ok = obj.get("type") == "control" and isinstance(rid, str) and 1 <= len(rid) <= 64
    return rid if ok and rid.isprintable() else None  # not printable: control characters, lone surrogates


def _frame_identity(obj: dict) -> tuple[str | None, int | None]:
    """A refused frame header's stream and seq, if both are valid: the refusal then carries them,
    so a client counting credits by (stream, seq) can account for the frame."""
    stream, seq = obj.get("stream"), obj.get("seq")
    if obj.get("type") != "frame" or not isinstance(stream, str) or not _STREAM_RE.fullmatch(stream):
        return None, None
    if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq < 2**63:
        return None, None
    return stream, seq


class _Header(BaseModel):
    """What a client sends is strict: a misspelled field is an error, not silently ignored."""

    # A number a header carries is finite: NaN or infinity is a mistake, never a value.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    protocol: int = PROTOCOL_VERSION


class _ServerHeader(_Header):
    """What the server sends is read leniently, so older clients survive added fields."""

    model_config = ConfigDict(frozen=True, extra="ignore", allow_inf_nan=False)


class SharedSlot(BaseModel):
    """Where a frame's pixels lie in its sender's shared memory, and where its result goes
    (``livescope.shared_memory``): a frame sent this way has no payload part."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    region: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="the region's name, as attached")
    offset_bytes: int = Field(ge=0, lt=2**48, description="the frame's first byte in the region")
    result_offset_bytes: int = Field(ge=0, lt=2**48, description="where a final image result may go")
    result_capacity_bytes: int = Field(ge=0, lt=2**48, description="the most bytes a result there may have")


MAX_FOCUS_ALARM_CHARS = 300


def check_na_below_index(na: float, immersion_index: float) -> None:
    """ValueError where an objective's NA reaches its immersion's index: no objective collects light
    beyond it, so it is a typo (1.4 NA in water)."""
    if na >= immersion_index:
        raise ValueError(f"NA {na:g} must be below the immersion index {immersion_index:g}")


class Objective(BaseModel):
    """The objective and emission a stream's frames are taken with: what a live ``psf`` stage needs
    besides the frame's pixel size (sent with every frame, as the camera's calibration is)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    na: float = Field(gt=0, le=1.7, description="numerical aperture")
    emission_nm: float = Field(gt=200, lt=2000, description="emission wavelength, nm")
    immersion_index: float = Field(ge=1.0, le=1.7, description="refractive index of the immersion medium")
    astigmatism_sign: Literal[-1, 1] = Field(default=1, description=(
        "the sign of the rig's astigmatism (`Optics.astigmatism_waves`' convention), which signs the defocus"))

    @model_validator(mode="after")
    def _na_below_index(self) -> Objective:
        check_na_below_index(self.na, self.immersion_index)
        return self


class FrameHeader(_Header):
    """A camera frame sent for restoration. Payload: the pixels, ``shape`` x ``dtype``."""

    type: Literal["frame"] = "frame"
    stream: StreamId
    seq: int = Field(ge=0, description="frame number within the stream, from 0")
    shape: tuple[int, int] = Field(description="(height, width) in pixels")
    dtype: PixelDtype = "uint16"
    axes: Literal["yx"] = "yx"
    pixel_size_um: float | None = Field(default=None, gt=0)
    z_um: float | None = Field(default=None, description="focus stage position in µm")
    event_index: dict[str, int] = Field(default_factory=dict, description="useq event index")
    pipeline: tuple[StageName, ...] = Field(min_length=1, max_length=MAX_PIPELINE_STAGES,
                                            description='e.g. ("denoise",)')
    mode: DeliveryMode = "lossless"
    t_acquired_ns: int | None = Field(default=None, description="camera time, Unix ns")
    t_sent_ns: int = Field(default=0, description="client wall clock at send, Unix ns")
    camera: CameraCalibration | None = Field(default=None, description="ADU -> photons; needed by "
                                             "a localise stage")
    dz_um: float | None = Field(default=None, allow_inf_nan=False, description=(
        "delta-z a refocus stage moves the focus by, µm: the wanted plane's focus position minus "
        "the frame's (positive: further from the coverslip); needed by a refocus stage"))
    shm: SharedSlot | None = Field(default=None, description=(
        "the pixels lie in the sender's attached shared memory (same host); no payload part then"))
    objective: Objective | None = Field(default=None, description="the optics; needed by a psf stage")
    focus_alarm: str | None = Field(default=None, min_length=1, max_length=MAX_FOCUS_ALARM_CHARS, description=(
        "the acquisition's own focus-loss alarm at this frame (its autofocus finds no focus): said back in "
        "the frame's results' warnings and counted in the metrics"))

    @field_validator("shape")
    @classmethod
    def _positive_shape(cls, v: tuple[int, int]) -> tuple[int, int]:
        if min(v) <= 0:
            raise ValueError(f"shape must be positive, got {v}")
        return v


class Latency(BaseModel):
    """Where the time went on the server, in ms, from receipt of the frame."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    queue_ms: float = Field(ge=0, description="receipt -> inference start")
    inference_ms: float = Field(ge=0, description="all pipeline stages, batch shared")
    total_ms: float = Field(ge=0, description="receipt -> result ready to send")
    batch_size: int = Field(default=1, ge=1)


class TableField(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    dtype: Literal["float32", "float64", "int32", "int64", "uint32"]
    unit: str = ""


class ResultHeader(_ServerHeader):
    """The output of one pipeline stage for one frame.

    ``kind="image"``: payload is ``shape`` x ``dtype`` pixels. ``kind="table"``: payload is
    ``shape[0]`` packed little-endian records of ``fields`` (a numpy structured array).
    """

    type: Literal["result"] = "result"
    stream: StreamId
    seq: int = Field(ge=0)
    stage: str = Field(description="the pipeline stage this output comes from")
    model: str = Field(description="name@version that produced it")
    final: bool = Field(description="True for the last stage of the pipeline")
    kind: Literal["image", "table"] = "image"
    shape: tuple[int, ...]
    dtype: str
    axes: str = "yx"
    fields: tuple[TableField, ...] = ()
    pixel_size_um: float | None = None
    z_um: float | None = None
    dz_um: float | None = Field(default=None, description="the frame's delta-z, µm, passed through")
    event_index: dict[str, int] = Field(default_factory=dict)
    t_sent_ns: int = 0
    latency: Latency
    warnings: tuple[str, ...] = Field(default=(), description="why the frame looks unlike the model's "
                                                              "training data (empty: nothing)")
    shm_offset_bytes: int | None = Field(default=None, description=(
        "the payload lies in the receiving client's shared memory at this offset (its frame's slot), "
        "not in the message"))


class AckHeader(_ServerHeader):
    """A frame that will get no result of its own: a duplicate, or dropped as superseded."""

    type: Literal["ack"] = "ack"
    stream: StreamId
    seq: int = Field(ge=0)
    status: Literal["duplicate", "dropped"]
    detail: str = ""


class ErrorHeader(_ServerHeader):
    """A refused message. ``stream``/``seq`` are set when the refused message was a frame."""

    type: Literal["error"] = "error"
    code: ErrorCode
    message: str
    stream: str | None = None
    seq: int | None = None
    request_id: str | None = None


class ControlRequest(_Header):
    """A request to the server's control API; answered by a ``ControlReply``."""

    type: Literal["control"] = "control"
    request_id: str = Field(min_length=1, max_length=64)
    command: str = Field(min_length=1, max_length=64)
    args: dict[str, Any] = Field(default_factory=dict)


class ControlReply(_ServerHeader):
    type: Literal["reply"] = "reply"
    request_id: str
    ok: bool
    data: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None


Header = Union[FrameHeader, ResultHeader, AckHeader, ErrorHeader, ControlRequest, ControlReply]
_HEADER_TYPES: dict[str, type[BaseModel]] = {
    "frame": FrameHeader,
    "result": ResultHeader,
    "ack": AckHeader,
    "error": ErrorHeader,
    "control": ControlRequest,
    "reply": ControlReply,
}
_header_adapter: TypeAdapter[Header] = TypeAdapter(
    Annotated[Header, Field(discriminator="type")]
)


def encode_header(header: Header) -> bytes:
    return header.model_dump_json().encode()


MAX_HEADER_BYTES = 64 * 1024
"""The largest header accepted (a frame's or a control request's JSON is a few hundred bytes)."""
MAX_HEADER_DEPTH = 16
"""Deepest nesting of objects and arrays in a header (the protocol's own headers use 3)."""


def _shown(value: object, limit: int = 60) -> str:
    """A client's value as an error message may quote it: its repr, cut short (never echo a message back)."""
    return _cut(repr(value), limit)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_json_values(obj: object) -> None:
    """Nesting within MAX_HEADER_DEPTH and every string valid Unicode (JSON's \\ud800 escapes can
    spell a lone surrogate, which no reply could then encode). Iterative: no recursion to exhaust."""
    stack: list[tuple[object, int]] = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth > MAX_HEADER_DEPTH:
                raise ProtocolError(ErrorCode.bad_header, f"header nests deeper than {MAX_HEADER_DEPTH} levels")
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if isinstance(key, str):
                    stack.append((key, depth))
                stack.append((item, depth + 1))
        elif isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ProtocolError(ErrorCode.bad_header, "header holds a lone UTF-16 surrogate (an escape such "
                                    "as \\ud800 without its pair): strings must be valid Unicode") from None


def _may_hold_bad_values(raw: bytes) -> bool:
    """Whether ``raw`` JSON could nest deeper than MAX_HEADER_DEPTH or spell a lone surrogate: a scan
    of its bytes, so that the walk over the parsed values (half of a header's decoding time) runs only
    where it could find something. ASCII without NUL bytes is read as UTF-8 (json detects UTF-16 and
    -32 by their NULs), where a lone surrogate needs a \\u escape; and nesting needs as many brackets."""
    raw = bytes(raw)
    return (not raw.isascii() or b"\x00" in raw or b"\\u" in raw
            or raw.count(b"[") + raw.count(b"{") > MAX_HEADER_DEPTH)


def decode_header(raw: bytes) -> Header:
    """Parse and validate a header; raise ProtocolError naming exactly what is wrong.

    Checks, in order: size, UTF-8 JSON (numbers of at most 4300 digits), nesting and Unicode, a JSON
    object, protocol version, known type, dtype, then every field. The messages quote a client's
    values only cut short.
    """
    if len(raw) > MAX_HEADER_BYTES:
        raise ProtocolError(ErrorCode.bad_header, f"header is {len(raw)} bytes; the limit is {MAX_HEADER_BYTES}")
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ProtocolError(ErrorCode.bad_header, f"header is not UTF-8 JSON: {_cut(str(e), 200)}") from None
    except RecursionError:
        raise ProtocolError(ErrorCode.bad_header, f"header nests deeper than {MAX_HEADER_DEPTH} levels") from None
    except ValueError:  # Python refuses to convert integers of over 4300 digits
        raise ProtocolError(ErrorCode.bad_header, "header holds a number too long to be one") from None
    if not isinstance(obj, dict):
        _check_json_values(obj)
        raise ProtocolError(ErrorCode.bad_header, "header must be a JSON object")
    stream, seq = _frame_identity(obj)
    ids = {"stream": stream, "seq": seq, "request_id": _request_id(obj)}
    try:
        if _may_hold_bad_values(raw):
            _check_json_values(obj)
    except ProtocolError as e:
        raise ProtocolError(e.code, e.message, **ids) from None
    version = obj.get("protocol")
    if version != PROTOCOL_VERSION or isinstance(version, bool):
        raise ProtocolError(
            ErrorCode.protocol_version,
            f"protocol version {_shown(version)} is not supported; this server speaks "
            f"version {PROTOCOL_VERSION}", **ids,
        )
    kind = obj.get("type")
    if not isinstance(kind, str) or kind not in _HEADER_TYPES:
        raise ProtocolError(
            ErrorCode.unknown_type,
            f"unknown message type {_shown(kind)}; expected one of {sorted(_HEADER_TYPES)}", **ids,
        )
    if kind == "frame" and "dtype" in obj and (
            not isinstance(obj["dtype"], str) or obj["dtype"] not in PixelDtype.__args__):
        raise ProtocolError(
            ErrorCode.unsupported_dtype,
            f"dtype {_shown(obj['dtype'])} is not supported; send one of {list(PixelDtype.__args__)}",
            **ids,
        )
    try:
        return _header_adapter.validate_python(obj)
    except ValidationError as e:
        problems = "; ".join(
            f"{_cut('.'.join(str(p) for p in err['loc'][1:]), 80) or 'header'}: {err['msg']}"
            for err in e.errors()[:5]
        )
        more = f" (and {e.error_count() - 5} more)" if e.error_count() > 5 else ""
        raise ProtocolError(ErrorCode.bad_header, f"invalid {kind} header: {problems}{more}", **ids) from None


def expected_nbytes(shape: tuple[int, ...], dtype: str | np.dtype) -> int:
    return math.prod(shape) * np.dtype(dtype).itemsize


def array_from_payload(
    shape: tuple[int, ...], dtype: str | np.dtype, payload: memoryview | bytes
) -> np.ndarray:
    """View a received payload as an array without copying (read-only)."""
    view = memoryview(payload)
    want = expected_nbytes(shape, dtype)
    if view.nbytes != want:
        raise ProtocolError(
            ErrorCode.payload_size,
            f"payload is {view.nbytes} bytes but shape {tuple(shape)} x {np.dtype(dtype).name} "
            f"needs {want}",
        )
    return np.frombuffer(view, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape)


def table_dtype(fields: tuple[TableField, ...]) -> np.dtype:
    return np.dtype([(f.name, np.dtype(f.dtype).newbyteorder("<")) for f in fields])


_STAGE_RE = re.compile(r"^(?P<name>[a-z][a-z0-9_-]*)(@(?P<version>[0-9]+))?$")


def stage_name(stage: str) -> str:
    """A pipeline stage's model name without its version: 'denoise@3' -> 'denoise' (no check: see
    `split_stage`)."""
    return stage.partition("@")[0]


def split_stage(stage: str) -> tuple[str, int | None]:
    """'denoise@3' -> ('denoise', 3); 'denoise' -> ('denoise', None)."""
    m = _STAGE_RE.match(stage)
    if m is None:
        raise ValueError(f"not a stage name: {stage!r} (expected NAME or NAME@VERSION)")
    version = m.group("version")
    return m.group("name"), int(version) if version else None
