"""Messages a hostile or broken client sends: each one gets one clear refusal, and the server (its
I/O thread and its control thread) goes on serving everyone. Each case once killed the server
process or its control thread (issue 16, defects 1, 2 and 10)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zmq

from livescope.client import StreamClient
from livescope.protocol import (
    PROTOCOL_VERSION,
    ControlReply,
    ErrorHeader,
    ResultHeader,
    decode_header,
)


def frame_header(**over) -> dict:
    h = {"type": "frame", "protocol": PROTOCOL_VERSION, "stream": "hostile", "seq": 0,
         "shape": [8, 8], "dtype": "uint16", "pipeline": ["identity"]}
    h.update(over)
    return h


def control(command: str, request_id: str = "r1", **args) -> dict:
    return {"type": "control", "protocol": PROTOCOL_VERSION, "request_id": request_id,
            "command": command, "args": args}


def nested(levels: int) -> str:
    return "[" * levels + "]" * levels


HOSTILE_HEADERS = {
    "type is a list": b'{"protocol":1,"type":[]}',
    "type is an object": b'{"protocol":1,"type":{}}',
    "protocol is a list": b'{"protocol":[],"type":"frame"}',
    "dtype is a list": json.dumps(frame_header(dtype=[])).encode(),
    "1000 levels of nesting": ('{"protocol":1,"type":"frame","x":' + nested(1000) + "}").encode(),
    "100000 levels of nesting": ('{"protocol":1,"type":"frame","x":' + nested(100_000) + "}").encode(),
    "a 5000-digit integer": ('{"protocol":1,"type":"frame","seq":' + "9" * 5000 + "}").encode(),
    "a lone surrogate in a control argument": (
        '{"protocol":1,"type":"control","request_id":"r","command":"ping","args":{"x":"\\ud800"}}').encode(),
    "a lone surrogate in a stream name": json.dumps(frame_header(stream="\ud800")).encode(),
    "a NaN literal": b'{"protocol":1,"type":"frame","z_um":NaN}',
    "a header of 2 MiB": json.dumps(frame_header(event_index={"k": 1}, pad="x" * 2**21)).encode(),
}


def alive(sock: zmq.Socket, seq: int) -> None:
    """The server still restores a good frame for this client."""
    img = np.arange(64, dtype=np.uint16).reshape(8, 8)
    sock.send_multipart([json.dumps(frame_header(seq=seq, stream=f"alive-{seq}")).encode(), img])
    header = decode_header(sock.recv_multipart()[0])
    assert isinstance(header, ResultHeader), header


@pytest.mark.parametrize("raw", HOSTILE_HEADERS.values(), ids=HOSTILE_HEADERS.keys())
def test_a_hostile_header_is_refused_in_one_reply_and_the_server_keeps_serving(own_server, dealer, raw):
    srv = own_server()
    sock = dealer(srv.frames)
    sock.send_multipart([raw, b"\0" * 128])
    header = decode_header(sock.recv_multipart()[0])
    assert isinstance(header, ErrorHeader), header
    assert header.code.value in ("bad_header", "unknown_type", "protocol_version", "unsupported_dtype")
    assert len(header.message) < 1000  # names the problem; does not echo the message back
    assert srv.proc.poll() is None
    alive(sock, 1)


def test_every_hostile_header_in_a_row_leaves_one_server_serving(own_server, dealer):
    srv = own_server()
    sock = dealer(srv.frames)
    for raw in HOSTILE_HEADERS.values():
        sock.send_multipart([raw])
        assert isinstance(decode_header(sock.recv_multipart()[0]), ErrorHeader)
    alive(sock, 2)
    assert srv.proc.poll() is None


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_a_focus_position_that_is_not_a_finite_number_is_refused(server, dealer, value):
    sock = dealer(server.frames)
    raw = json.dumps(frame_header(z_um=value, stream="zum")).encode()  # json writes NaN / Infinity
    sock.send_multipart([raw, np.zeros((8, 8), np.uint16)])
    header = decode_header(sock.recv_multipart()[0])
    assert isinstance(header, ErrorHeader) and header.code.value == "bad_header"
    assert "z_um" in header.message


def test_the_control_thread_survives_bad_arguments_to_slow_commands(own_server, dealer):
    srv = own_server()
    sock = dealer(srv.frames)
    bad = [
        ('{"protocol":1,"type":"control","request_id":"r1","command":"render","args":{"stream":"\\ud800"}}'),
        json.dumps(control("render", "r2", stream=["not", "a", "name"])),
        json.dumps(control("render", "r3", stream="s", pixel_nm="fine")),
        json.dumps(control("load", "r4", model={"a": 1})),
        json.dumps(control("activate", "r5", model="identity@1", extra=True)),
        json.dumps(control("rescan", "r6", everything=1)),
    ]
    for raw in bad:
        sock.send_multipart([raw.encode()])
        header = decode_header(sock.recv_multipart()[0])
        assert isinstance(header, (ErrorHeader, ControlReply)), header
        if isinstance(header, ControlReply):
            assert not header.ok and header.error
    with StreamClient(srv.frames) as client:  # slow commands are still answered
        client.connect()
        assert "identity" in client.control("rescan")["models"]
        assert client.control("load", model="identity@1")["model"] == "identity@1"
    assert srv.proc.poll() is None


def control_error(sock: zmq.Socket, raw: dict) -> str:
    sock.send_multipart([json.dumps(raw).encode()])
    header = decode_header(sock.recv_multipart()[0])
    assert isinstance(header, ControlReply) and not header.ok, header
    return header.error


def test_control_errors_name_the_problem_in_the_protocols_words(server, dealer):
    """No Python call errors, no pydantic text or links: what was wrong, in the command's terms."""
    sock = dealer(server.frames)
    unknown_arg = control_error(sock, control("stats", "a1", verbose=True))
    assert "stats" in unknown_arg and "verbose" in unknown_arg and "unexpected keyword" not in unknown_arg
    missing = control_error(sock, control("render", "a2"))
    assert "render" in missing and "stream" in missing and "positional argument" not in missing
    wrong_type = control_error(sock, control("render", "a3", stream="s", pixel_nm="fine"))
    assert "pixel_nm" in wrong_type
    for text in (unknown_arg, missing, wrong_type):
        assert "pydantic" not in text and "http" not in text and "_cmd_" not in text


def test_a_model_failure_is_reported_without_the_servers_exception_text(own_server, tmp_path):
    from tests.test_server_models import write_tiling_only_model  # a model that raises on small frames

    write_tiling_only_model(tmp_path)
    srv = own_server("--models", str(tmp_path))
    with StreamClient(srv.frames, pipeline=["tiles"]) as c:
        c.connect()
        c.submit(np.zeros((8, 8), np.uint16))
        (refusal,) = list(c.outcomes())
    assert refusal.reason == "inference_failed" and "tiles@1" in refusal.message
    assert "Error" not in refusal.message and "onnxruntime" not in refusal.message.lower()


@pytest.mark.parametrize("change", [{"dtype": "float64"}, {"shape": [-1, 4]}, {"pipeline": []},
                                    {"mode": "eventually"}, {"colour": "red"}])
def test_a_refused_frame_whose_stream_and_seq_are_readable_is_refused_by_them(server, dealer, change):
    """So a client that counts credits by (stream, seq) can account for it (docs/protocol.md)."""
    sock = dealer(server.frames)
    sock.send_multipart([json.dumps(frame_header(stream="counted", seq=41, **change)).encode(), b"\0" * 128])
    header = decode_header(sock.recv_multipart()[0])
    assert isinstance(header, ErrorHeader), header
    assert (header.stream, header.seq) == ("counted", 41)
