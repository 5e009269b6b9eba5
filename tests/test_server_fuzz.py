"""Property: whatever a client sends, the server answers each message exactly once with a
well-formed reply, restores every valid frame correctly, and keeps serving (issue 16). Hypothesis
draws headers (valid frames with any field replaced by any JSON value, including lone
surrogates, NaN, huge integers and deep nesting), raw bytes, wrong part counts and control
requests with any arguments, against one real server process. `bench/fuzz_server.py` sends far
more (100,000 by default) and reports memory as well."""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from livescope.launch import ServerProcess
from livescope.protocol import (
    PROTOCOL_VERSION,
    AckHeader,
    ControlReply,
    ErrorHeader,
    ResultHeader,
    decode_header,
)
from tests.conftest import start_server

SHAPE = (4, 6)
FIELDS = ("protocol", "type", "stream", "seq", "shape", "dtype", "axes", "pipeline", "mode", "pixel_size_um",
          "z_um", "dz_um", "event_index", "camera", "t_acquired_ns", "t_sent_ns", "request_id", "command", "args")
COMMANDS = ("ping", "health", "stats", "list_models", "load", "activate", "unload", "rescan", "render", "warp")

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=10**20, max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
    st.sampled_from(["\ud800", "\udfff", "identity", "identity@1", "identity@99", "uint16", "float32",
                     "frame", "control", "result", "lossless", "latest", "x" * 300]),
)
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=12)


def good_frame(seq: int) -> dict:
    return {"protocol": PROTOCOL_VERSION, "type": "frame", "stream": "fuzz", "seq": seq, "shape": list(SHAPE),
            "dtype": "uint16", "pipeline": ["identity"]}


@st.composite
def messages(draw) -> tuple[list[bytes], np.ndarray | None]:
    """(the message's parts, the pixels a correct result must carry back, or None)."""
    kind = draw(st.sampled_from(["frame", "frame", "control", "bytes", "nested"]))
    seq = draw(st.integers(min_value=0, max_value=2**31))
    pixels = np.random.default_rng(seq).integers(0, 65535, SHAPE, dtype=np.uint16)
    if kind == "bytes":
        return draw(st.lists(st.binary(max_size=64), min_size=1, max_size=3)), None
    if kind == "nested":
        depth = draw(st.integers(min_value=10, max_value=5000))
        return [('{"protocol":1,"type":"frame","x":' + "[" * depth + "]" * depth + "}").encode()], None
    header = good_frame(seq) if kind == "frame" else {
        "protocol": PROTOCOL_VERSION, "type": "control", "request_id": "fz",
        "command": draw(st.sampled_from(COMMANDS)), "args": draw(st.dictionaries(
            st.sampled_from(["model", "stream", "pixel_nm", "method", "x"]), json_values, max_size=3))}
    changes = draw(st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=2))
    header.update(changes)
    raw = json.dumps(header, allow_nan=True, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")
    payload = pixels.tobytes() if draw(st.booleans()) else draw(st.binary(max_size=64))
    parts = [raw, payload] if kind == "frame" and draw(st.integers(0, 9)) else [raw]
    valid = kind == "frame" and not changes and len(parts) == 2 and payload == pixels.tobytes()
    return parts, pixels if valid else None


@pytest.fixture(scope="module")
def fuzzed_server() -> Iterator[ServerProcess]:
    srv = start_server()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def sock(fuzzed_server) -> Iterator[zmq.Socket]:
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.linger = 0
    s.rcvtimeo = 10_000
    s.connect(fuzzed_server.frames)
    yield s
    ctx.destroy(linger=0)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(message=messages())
def test_every_message_gets_one_well_formed_answer_and_valid_frames_their_own_result(
        fuzzed_server, sock, message):
    parts, pixels = message
    sock.send_multipart(parts)
    reply = sock.recv_multipart()  # exactly one: the next message's answer must not be waiting
    header = decode_header(reply[0])
    assert isinstance(header, (ErrorHeader, ResultHeader, AckHeader, ControlReply)), header
    if isinstance(header, ErrorHeader):
        assert header.code.value != "internal", header.message
        assert len(header.message) < 1000
    if pixels is not None:
        assert isinstance(header, ResultHeader), header
        assert np.array_equal(np.frombuffer(reply[1], np.uint16).reshape(SHAPE), pixels)
    assert sock.poll(20) == 0  # and nothing more
    assert fuzzed_server.proc.poll() is None
