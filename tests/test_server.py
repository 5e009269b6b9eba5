"""The server answers every message, refuses bad input by name, and keeps serving everyone."""

import json

import numpy as np
import pytest
import zmq

from livescope.client import Result, ResultSubscriber, StreamClient
from livescope.protocol import (
    PROTOCOL_VERSION,
    ErrorHeader,
    FrameHeader,
    ResultHeader,
    decode_header,
    encode_header,
)


def frame(seq=0, shape=(32, 48), dtype="uint16", pipeline=("identity",), stream="raw", **kw):
    return FrameHeader(stream=stream, seq=seq, shape=shape, dtype=dtype, pipeline=pipeline, **kw)


def reply(sock: zmq.Socket):
    parts = sock.recv_multipart()
    return decode_header(parts[0]), parts[1:]


def assert_refused(sock, code: str, *words: str, seq=None):
    header, _ = reply(sock)
    assert isinstance(header, ErrorHeader), header
    assert header.code.value == code, header.message
    for w in words:
        assert w in header.message
    if seq is not None:
        assert header.seq == seq
    return header


def test_a_frame_comes_back_restored_with_its_model_and_latency(server, dealer):
    sock = dealer(server.frames)
    img = np.arange(32 * 48, dtype=np.uint16).reshape(32, 48)
    sock.send_multipart([encode_header(frame(event_index={"t": 2}, z_um=1.5)), img])
    header, payload = reply(sock)
    assert isinstance(header, ResultHeader)
    assert header.model == "identity@1" and header.final
    assert header.event_index == {"t": 2} and header.z_um == 1.5
    assert header.latency.total_ms >= header.latency.inference_ms > 0
    assert np.array_equal(np.frombuffer(payload[0], np.uint16).reshape(32, 48), img)


@pytest.mark.parametrize(
    ("parts", "code", "words"),
    [
        ([b"{not json"], "bad_header", ["JSON"]),
        ([json.dumps({"type": "frame", "protocol": PROTOCOL_VERSION}).encode()], "bad_header",
         ["stream"]),
        ([json.dumps({"type": "warp", "protocol": PROTOCOL_VERSION}).encode()], "unknown_type",
         ["warp"]),
        ([json.dumps({"type": "frame", "protocol": 0}).encode()], "protocol_version",
         ["version 0"]),
        ([encode_header(frame().model_copy(update={"type": "result"}))], "bad_header", []),
    ],
)
def test_a_malformed_message_is_refused_and_the_server_keeps_serving(server, dealer, parts, code,
                                                                     words):
    sock = dealer(server.frames)
    sock.send_multipart(parts)
    assert_refused(sock, code, *words)
    good = np.ones((32, 48), np.uint16)
    sock.send_multipart([encode_header(frame(seq=1, stream=f"after-{code}")), good])
    assert isinstance(reply(sock)[0], ResultHeader)


def test_a_payload_that_does_not_match_shape_and_dtype_is_refused(server, dealer):
    sock = dealer(server.frames)
    sock.send_multipart([encode_header(frame(seq=5, stream="size")), b"\0" * 100])
    assert_refused(sock, "payload_size", "100 bytes", seq=5)


def test_a_frame_without_its_pixels_is_refused(server, dealer):
    sock = dealer(server.frames)
    sock.send_multipart([encode_header(frame(seq=6, stream="nopixels"))])
    assert_refused(sock, "payload_size", "2 parts", seq=6)


def test_an_unsupported_dtype_is_refused(server, dealer):
    sock = dealer(server.frames)
    h = json.loads(encode_header(frame()))
    h["dtype"] = "float64"
    sock.send_multipart([json.dumps(h).encode(), b"\0" * (32 * 48 * 8)])
    assert_refused(sock, "unsupported_dtype", "float64")


def test_a_dtype_the_model_does_not_take_is_refused(server, dealer):
    sock = dealer(server.frames)
    sock.send_multipart([encode_header(frame(dtype="float32", stream="f32")),
                         np.zeros((32, 48), np.float32)])
    assert_refused(sock, "unknown_model", "uint16")


def test_an_unknown_model_version_and_an_unknown_stage_are_refused(server, dealer):
    sock = dealer(server.frames)
    img = np.zeros((32, 48), np.uint16)
    sock.send_multipart([encode_header(frame(pipeline=("identity@99",), stream="v99")), img])
    assert_refused(sock, "unknown_model", "identity@99", "versions of identity")
    sock.send_multipart([encode_header(frame(pipeline=("teleport",), stream="tp")), img])
    assert_refused(sock, "unknown_pipeline", "teleport", "available")


def test_a_frame_over_the_size_limit_is_refused(own_server, dealer):
    srv = own_server("--max-frame-mb", "1")
    sock = dealer(srv.frames)
    big = np.zeros((1024, 1024), np.uint16)  # 2 MiB
    sock.send_multipart([encode_header(frame(shape=big.shape, stream="big")), big])
    assert_refused(sock, "frame_too_large", "1048576 bytes")
    small = np.zeros((256, 256), np.uint16)
    sock.send_multipart([encode_header(frame(shape=small.shape, seq=1, stream="big")), small])
    assert isinstance(reply(sock)[0], ResultHeader)


def test_bad_input_from_one_client_does_not_disturb_another(server, dealer):
    bad = dealer(server.frames)
    with StreamClient(server.frames, pipeline=["identity"], stream="good-neighbour") as good:
        good.connect()
        img = np.full((64, 64), 7, np.uint16)
        for i in range(20):
            bad.send_multipart([b"garbage %d" % i])
            good.submit(img)
        outcomes = list(good.outcomes())
        assert all(isinstance(o, Result) for o in outcomes) and len(outcomes) == 20
    for _ in range(20):
        assert_refused(bad, "bad_header")


def test_a_resent_frame_is_processed_once(server, dealer):
    sock = dealer(server.frames)
    img = np.full((32, 48), 3, np.uint16)
    msg = [encode_header(frame(seq=0, stream="dedup")), img]
    before = StreamClient(server.frames)
    before.connect()
    frames_before = before.control("stats")["frames"]
    sock.send_multipart(msg)
    first, _ = reply(sock)
    sock.send_multipart(msg)  # as a client does after a reconnect
    second, _ = reply(sock)
    stats = before.control("stats")
    before.close()
    assert isinstance(first, ResultHeader) and first.seq == 0
    assert isinstance(second, ResultHeader) and second.seq == 0  # the cached result, resent
    assert stats["frames"] - frames_before == 1 and stats["duplicates"] >= 1


def test_results_are_published_on_the_stream_topic(server):
    with ResultSubscriber(server.results, streams=["pub-a"]) as sub:
        import time

        time.sleep(0.3)  # PUB/SUB: a subscription needs a moment to reach the publisher
        with StreamClient(server.frames, pipeline=["identity"], stream="pub-a") as a, \
                StreamClient(server.frames, pipeline=["identity"], stream="pub-ab") as ab:
            a.connect()
            ab.connect()
            ab.submit(np.zeros((16, 16), np.uint16))
            a.submit(np.full((16, 16), 9, np.uint16))
            a.wait_idle()
            ab.wait_idle()
        got = sub.recv(timeout_s=5)
        assert got is not None and got.header.stream == "pub-a" and got.data[0, 0] == 9
        assert sub.recv(timeout_s=0.3) is None  # 'pub-ab' shares the prefix but is not ours


def test_a_watched_stream_publishes_its_raw_frames_beside_its_results_for_the_lease_only(server):
    import time

    from livescope.client import ControlError

    with ResultSubscriber(server.results, streams=["watched"]) as sub, \
            StreamClient(server.frames, pipeline=["denoise@2"], stream="watched") as client:
        time.sleep(0.3)  # PUB/SUB: a subscription needs a moment to reach the publisher
        client.connect()
        frame = (np.random.default_rng(0).poisson(50, (32, 32)) + 100).astype(np.uint16)
        def published() -> list[tuple[int, str]]:
            client.submit(frame)
            client.wait_idle()
            got = []
            while (message := sub.recv(timeout_s=0.5)) is not None:
                got.append((message.header.seq, message.header.stage))
                if message.header.stage == "raw":
                    np.testing.assert_array_equal(message.data, frame)  # the frame itself, its own dtype
            return got

        assert published() == [(0, "denoise@2")]  # nobody watches: the results only
        assert client.control("watch", stream="watched", seconds=1.5) == {"stream": "watched", "seconds": 1.5}
        assert published() == [(1, "raw"), (1, "denoise@2")]  # the raw frame first, then its result
        time.sleep(1.6)  # the lease ran out
        assert published() == [(2, "denoise@2")]
        with pytest.raises(ControlError, match=r"seconds must be in \(0, 300\]"):
            client.control("watch", stream="watched", seconds=3600)


def test_watch_leases_are_bounded_so_a_client_cannot_grow_the_server_with_names(own_server):
    from livescope.client import ControlError
    from livescope.server.server import MAX_WATCHED_STREAMS

    srv = own_server()
    with StreamClient(srv.frames) as client:
        client.connect()
        for i in range(MAX_WATCHED_STREAMS):
            client.control("watch", stream=f"s{i}", seconds=1.0)
        with pytest.raises(ControlError, match="streams are watched already"):
            client.control("watch", stream="one-more", seconds=1.0)
        client.control("watch", stream="s0", seconds=1.0)  # renewing a held lease is fine
        import time

        time.sleep(1.1)  # the leases run out, and make room
        assert client.control("watch", stream="one-more", seconds=1.0)["stream"] == "one-more"


def test_the_control_api_reports_health_stats_and_models(server):
    with StreamClient(server.frames) as c:
        c.connect()
        assert c.control("health")["status"] == "serving"
        assert "cpu" in c.control("health")["providers"]
        assert {"frames", "results", "errors", "dropped"} <= set(c.control("stats"))
        names = {m["name"] for m in c.control("list_models")["models"]}
        assert "identity" in names
        from livescope.client import ControlError

        with pytest.raises(ControlError, match="unknown command 'warp'"):
            c.control("warp")


def test_the_server_also_speaks_ipc(own_server, tmp_path):
    srv = own_server(frames=f"ipc://{tmp_path}/frames", results=f"ipc://{tmp_path}/results")
    with StreamClient(srv.frames, pipeline=["identity"]) as c:
        c.connect()
        c.submit(np.full((8, 8), 5, np.uint16))
        (o,) = list(c.outcomes())
        assert isinstance(o, Result) and o.data[0, 0] == 5


def _rss_mb_and_threads(pid: int) -> tuple[float, int]:
    status = open(f"/proc/{pid}/status").read().split("\n")
    fields = dict(line.split(":", 1) for line in status if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["Threads"])


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/status"), reason="needs /proc")
def test_refused_messages_leak_neither_memory_nor_threads(own_server, dealer):
    srv = own_server()
    sock = dealer(srv.frames)
    junk = np.zeros((512, 512), np.uint16)  # 512 kB each, sent with a header claiming more

    def burst(n: int, stream: str) -> None:
        for i in range(n):
            sock.send_multipart([encode_header(frame(seq=i, shape=(600, 600), stream=stream)), junk])
        for _ in range(n):
            assert_refused(sock, "payload_size")

    burst(50, "warm-up")
    rss0, threads0 = _rss_mb_and_threads(srv.proc.pid)
    burst(500, "leak")  # 250 MB of refused payload
    rss1, threads1 = _rss_mb_and_threads(srv.proc.pid)
    assert threads1 == threads0
    assert rss1 - rss0 < 40, f"server grew by {rss1 - rss0:.0f} MB"


def test_results_kept_for_resends_stay_within_their_memory_budget(server):
    frame_mb = 1024 * 1024 * 2 / 2**20  # a 1024x1024 uint16 result: 2 MiB
    # pixels in the messages: results of frames sent through shared memory are not kept (not resent)
    clients = [StreamClient(server.frames, pipeline=["identity"], stream=f"budget-{i}", shared_memory=False)
               for i in range(40)]
    for c in clients:
        c.connect()
        for _ in range(8):
            c.submit(np.zeros((1024, 1024), np.uint16))
    for c in clients:
        list(c.outcomes())
    stats = clients[0].control("stats")
    for c in clients:
        c.close()
    # 40 streams x 8 results x 2 MiB = 640 MiB if unbounded; the budget is 256 MiB
    assert stats["result_cache_bytes"] <= 256 * 2**20
    assert stats["result_cache_bytes"] >= 64 * frame_mb * 2**20  # and the cache still works
