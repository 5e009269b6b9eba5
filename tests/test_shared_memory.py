"""Same-host frames through shared memory (issue 19): a client on the server's host sends its frames'
pixels through a region of slots it made, and gets image results back in them; the socket carries
headers. Every result is still its own frame's, nothing is lost when the server cannot read a slot,
and the server reads and writes only regions their own client attached (proved by a token)."""

from __future__ import annotations

import numpy as np
import zmq

from livescope.client import Result, StreamClient
from livescope.protocol import (
    ControlRequest,
    ErrorHeader,
    FrameHeader,
    ResultHeader,
    SharedSlot,
    decode_header,
    encode_header,
)
from livescope.shared_memory import ClientRegion, SlotLayout

SHAPE = (64, 80)


def frames(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 4000, SHAPE, dtype=np.uint16) for _ in range(n)]


def test_a_client_on_the_servers_host_sends_pixels_through_shared_memory_and_gets_each_frames_own_result(server):
    sent = frames(40)
    checked: set[int] = set()

    def check(outcome: object) -> None:  # each result read and dropped, as a live consumer does
        assert isinstance(outcome, Result) and outcome.header.shm_offset_bytes is not None
        assert np.array_equal(outcome.data, sent[outcome.seq])
        checked.add(outcome.seq)

    with StreamClient(server.frames, pipeline=["identity"], max_in_flight=4) as client:
        for image in sent:
            client.submit(image)
            while (outcome := client.next_outcome(0.0)) is not None:
                check(outcome)
        for outcome in client.outcomes():
            check(outcome)
        outcome = None
        stats = client.stats
    assert checked == set(range(40))  # the four slots were used ten times each: still every frame's own
    assert stats.sent_through_shared_memory == stats.sent == 40


def test_a_result_the_caller_still_holds_keeps_its_slot_and_later_frames_travel_in_messages(server):
    sent = frames(12, seed=1)
    with StreamClient(server.frames, pipeline=["identity"], max_in_flight=2) as client:
        held = []
        for image in sent:
            client.submit(image)
            held.extend(o for o in iter(lambda: client.next_outcome(0.0), None))
        held.extend(client.outcomes())
        stats = client.stats
    assert stats.results == 12
    assert 0 < stats.sent_through_shared_memory < 12  # four slots, all held by results kept here (2 in flight + 2)
    for result in held:
        assert np.array_equal(result.data, sent[result.seq])
        if result.header.shm_offset_bytes is not None:
            assert not result.data.flags.writeable  # a view of the slot it holds


def test_frames_travel_in_messages_when_shared_memory_is_turned_off(server):
    with StreamClient(server.frames, pipeline=["identity"], shared_memory=False) as client:
        client.submit(frames(1)[0])
        (result,) = list(client.outcomes())
        assert result.header.shm_offset_bytes is None and client.stats.sent_through_shared_memory == 0


def test_a_lossless_frame_whose_slot_the_server_cannot_read_is_resent_with_its_pixels(server):
    sent = frames(6, seed=2)
    with StreamClient(server.frames, pipeline=["identity"], max_in_flight=2) as client:
        client.submit(sent[0])
        assert np.array_equal(next(client.outcomes()).data, sent[0])
        client.control("shm_detach", region=client._shared.name)  # as a restarted server would have
        for image in sent[1:]:
            client.submit(image)
        results = {o.seq: o for o in client.outcomes()}
        stats = client.stats
    assert stats.results == 6 and stats.errors == 0 and stats.accounted
    for seq in range(1, 6):
        assert isinstance(results[seq], Result) and np.array_equal(results[seq].data, sent[seq])


def _dealer(ctx: zmq.Context, address: str, routing_id: bytes) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.linger, sock.rcvtimeo, sock.routing_id = 0, 10_000, routing_id
    sock.connect(address)
    return sock


def _control(sock: zmq.Socket, command: str, **args: object) -> dict:
    sock.send(encode_header(ControlRequest(request_id="r", command=command, args=args)))
    reply = decode_header(sock.recv())
    return reply.model_dump()


def _frame(sock: zmq.Socket, seq: int, slot: SharedSlot) -> ErrorHeader | ResultHeader:
    header = FrameHeader(stream="raw", seq=seq, shape=SHAPE, pipeline=("identity",), shm=slot)
    sock.send(encode_header(header))
    return decode_header(sock.recv_multipart()[0])


def test_the_server_uses_a_region_only_for_the_client_that_attached_it_with_its_token(server):
    pixels = SHAPE[0] * SHAPE[1]
    region = ClientRegion(SlotLayout(slots=2, frame_bytes=pixels * 2, result_bytes=pixels * 4))
    ctx = zmq.Context()
    try:
        owner, stranger = _dealer(ctx, server.frames, b"owner"), _dealer(ctx, server.frames, b"stranger")
        wrong = _control(stranger, "shm_attach", region=region.name, token="00" * 16)
        assert not wrong["ok"] and "token" in wrong["error"]
        missing = _control(stranger, "shm_attach", region="livescope-nonexistent", token="00" * 16)
        assert not missing["ok"] and "no shared-memory region" in missing["error"]
        assert _control(owner, "shm_attach", region=region.name, token=region.token.hex())["ok"]

        image = frames(1, seed=3)[0]
        slot = region.write_frame(0, image)
        refused = _frame(stranger, 0, slot)  # it knows the name, but never attached the region
        assert isinstance(refused, ErrorHeader) and refused.code.value == "shared_memory"
        assert refused.seq == 0 and "not attached by this client" in refused.message
        outside = slot.model_copy(update={"offset_bytes": 10**9})
        refused = _frame(owner, 1, outside)
        assert isinstance(refused, ErrorHeader) and "outside the slots" in refused.message
        result = _frame(owner, 2, slot)  # the server goes on serving, and the owner's frame works
        assert isinstance(result, ResultHeader) and result.shm_offset_bytes == slot.result_offset_bytes
        assert np.array_equal(region.read(result.shm_offset_bytes, SHAPE, "uint16"), image)
    finally:
        ctx.destroy(linger=0)
        region.close()


def test_larger_frames_get_a_larger_region_once_the_old_one_is_idle(server):
    small, large = frames(1, seed=4)[0], np.random.default_rng(5).integers(0, 4000, (128, 160), dtype=np.uint16)
    with StreamClient(server.frames, pipeline=["identity"], max_in_flight=2) as client:
        client.submit(small)
        assert np.array_equal(next(client.outcomes()).data, small)
        client.submit(large)
        result = next(client.outcomes())
        assert np.array_equal(result.data, large) and result.header.shm_offset_bytes is not None
        assert client.stats.sent_through_shared_memory == 2
