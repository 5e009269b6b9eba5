"""The wire protocol: headers round-trip, and every malformed header is named precisely."""

import json

import numpy as np
import pytest

from livescope.protocol import (
    PROTOCOL_VERSION,
    ControlRequest,
    ErrorCode,
    FrameHeader,
    Latency,
    ProtocolError,
    ResultHeader,
    array_from_payload,
    decode_header,
    encode_header,
    split_stage,
    stage_name,
)


def frame_header(**over) -> dict:
    h = {"type": "frame", "protocol": PROTOCOL_VERSION, "stream": "cam1", "seq": 0,
         "shape": [4, 6], "dtype": "uint16", "pipeline": ["denoise"]}
    h.update(over)
    return h


def test_a_frame_header_round_trips_through_json():
    h = FrameHeader(stream="cam1", seq=7, shape=(512, 256), pipeline=("denoise", "localise@2"),
                    pixel_size_um=0.108, z_um=-1.5, event_index={"t": 3, "z": 1}, mode="latest")
    assert decode_header(encode_header(h)) == h


def test_a_result_header_carries_model_version_and_latency():
    r = ResultHeader(stream="s", seq=1, stage="denoise", model="denoise@3", final=True,
                     shape=(4, 4), dtype="float32",
                     latency=Latency(queue_ms=0.1, inference_ms=2.0, total_ms=2.2))
    back = decode_header(encode_header(r))
    assert back.model == "denoise@3" and back.latency.inference_ms == 2.0


@pytest.mark.parametrize(
    ("raw", "code", "words"),
    [
        (b"\xff\xfe not json", ErrorCode.bad_header, "not UTF-8 JSON"),
        (b"[1, 2]", ErrorCode.bad_header, "JSON object"),
        (json.dumps(frame_header(protocol=99)).encode(), ErrorCode.protocol_version, "99"),
        (json.dumps(frame_header(type="teleport")).encode(), ErrorCode.unknown_type, "teleport"),
        (json.dumps(frame_header(dtype="complex64")).encode(), ErrorCode.unsupported_dtype,
         "complex64"),
        (json.dumps(frame_header(seq=-1)).encode(), ErrorCode.bad_header, "seq"),
        (json.dumps(frame_header(shape=[0, 5])).encode(), ErrorCode.bad_header, "shape"),
        (json.dumps(frame_header(pipeline=[])).encode(), ErrorCode.bad_header, "pipeline"),
        (json.dumps(frame_header(stream="has space")).encode(), ErrorCode.bad_header, "stream"),
        (json.dumps(frame_header(extra_field=1)).encode(), ErrorCode.bad_header, "extra_field"),
    ],
)
def test_a_malformed_header_is_refused_with_a_code_and_the_reason(raw, code, words):
    with pytest.raises(ProtocolError) as e:
        decode_header(raw)
    assert e.value.code == code
    assert words in e.value.message


def test_a_payload_is_viewed_without_a_copy():
    data = np.arange(24, dtype=np.uint16).tobytes()
    arr = array_from_payload((4, 6), "uint16", data)
    assert arr.shape == (4, 6) and arr[3, 5] == 23
    assert not arr.flags.owndata


def test_a_payload_of_the_wrong_size_is_refused():
    with pytest.raises(ProtocolError) as e:
        array_from_payload((4, 6), "uint16", b"\0" * 47)
    assert e.value.code == ErrorCode.payload_size
    assert "47 bytes" in e.value.message and "48" in e.value.message


def test_control_requests_validate_their_fields():
    req = ControlRequest(request_id="r1", command="stats")
    assert decode_header(encode_header(req)) == req


def test_stage_names_may_pin_a_version():
    assert split_stage("denoise") == ("denoise", None)
    assert split_stage("denoise@12") == ("denoise", 12)
    with pytest.raises(ValueError):
        split_stage("Denoise@x")
    assert [stage_name(s) for s in ("denoise@3", "refocus-astig", "psf")] == ["denoise", "refocus-astig", "psf"]


def test_a_client_reads_server_headers_with_fields_it_does_not_know():
    r = ResultHeader(stream="s", seq=1, stage="denoise", model="denoise@3", final=True,
                     shape=(4, 4), dtype="float32",
                     latency=Latency(queue_ms=0.1, inference_ms=2.0, total_ms=2.2))
    newer = json.loads(encode_header(r))
    newer["gpu_temperature_c"] = 61
    assert decode_header(json.dumps(newer).encode()) == r


def test_a_cameras_read_noise_is_optional_on_the_wire_and_absent_when_unknown():
    plain = decode_header(json.dumps(frame_header(camera={"baseline_adu": 100, "e_per_adu": 0.5})).encode())
    assert "read_noise_e" not in encode_header(plain).decode()
    noisy = decode_header(json.dumps(frame_header(
        camera={"baseline_adu": 100, "e_per_adu": 0.5, "read_noise_e": 1.6})).encode())
    assert noisy.camera.read_noise_e == 1.6 and decode_header(encode_header(noisy)) == noisy
    with pytest.raises(ProtocolError, match="read_noise_e"):
        decode_header(json.dumps(frame_header(
            camera={"baseline_adu": 100, "e_per_adu": 0.5, "read_noise_e": -1})).encode())


def test_an_objective_whose_na_reaches_its_immersion_index_is_refused_where_it_is_made():
    from livescope.protocol import Objective

    with pytest.raises(ValueError, match="NA 1.4 must be below the immersion index 1.33"):
        Objective(na=1.4, emission_nm=600.0, immersion_index=1.33)
    assert Objective(na=1.2, emission_nm=600.0, immersion_index=1.33).na == 1.2


@pytest.mark.parametrize("raw", [
    b'{"protocol":1,"type":"frame","stream":"\\ud800","seq":0,"shape":[4,6],"pipeline":["denoise"]}',
    '{"protocol":1,"type":"frame","stream":"\ud800","seq":0,"shape":[4,6],"pipeline":["denoise"]}'.encode(
        "utf-16", "surrogatepass"),  # no \\u escape: the surrogate is in the encoding itself
    b'{"protocol":1,"type":"control","request_id":"r","command":"ping","args":{"x":' + b"[" * 20 + b"]" * 20 + b"}}",
], ids=["escaped surrogate", "utf-16 surrogate", "deep nesting"])
def test_a_header_with_a_lone_surrogate_or_deep_nesting_is_refused_however_it_is_spelled(raw):
    with pytest.raises(ProtocolError) as e:
        decode_header(raw)
    assert e.value.code == ErrorCode.bad_header
    assert "surrogate" in e.value.message or "nests deeper" in e.value.message
