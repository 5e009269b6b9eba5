"""Sending and receiving livescope messages on ZeroMQ sockets.

Payloads of at least ``ZERO_COPY_MIN_BYTES`` go zero-copy: ZeroMQ keeps a reference to the
numpy buffer until the bytes are on the wire, so the sender must not modify the array after
handing it over. Smaller payloads are copied, which is cheaper than the bookkeeping.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import zmq

from livescope.protocol import Header, encode_header

ZERO_COPY_MIN_BYTES = 64 * 1024


def send_message(
    sock: zmq.Socket,
    header: Header,
    payload: np.ndarray | None = None,
    *,
    envelope: Sequence[bytes] = (),
    flags: int = 0,
) -> None:
    """Send ``[*envelope, header, payload?]`` as one multipart message. ``flags=zmq.NOBLOCK``: raise
    zmq.Again, sending nothing, when no peer can take it now (ZeroMQ takes a multipart message whole
    or not at all, so only the first part can be refused)."""
    for part in envelope:
        sock.send(part, zmq.SNDMORE | flags)
    if payload is None:
        sock.send(encode_header(header), flags)
        return
    if not payload.flags.c_contiguous:
        payload = np.ascontiguousarray(payload)
    sock.send(encode_header(header), zmq.SNDMORE | flags)
    sock.send(payload, flags, copy=payload.nbytes < ZERO_COPY_MIN_BYTES)


def recv_parts(sock: zmq.Socket, flags: int = 0) -> list[zmq.Frame]:
    """Receive one multipart message as zmq.Frames (payload buffers are not copied)."""
    return sock.recv_multipart(flags, copy=False)
