"""CURVE: only clients whose public key is on the server's allow-list get anything."""

import time

import numpy as np
import pytest

from livescope.client import Result, ServerUnreachableError, StreamClient
from livescope.security import generate_keys, is_loopback
from livescope.server.config import ServerConfig


@pytest.fixture
def keys(tmp_path):
    allowed = tmp_path / "allowed"
    _, server_secret = generate_keys(tmp_path / "server", "server")
    public, client_secret = generate_keys(tmp_path / "client", "alice")
    allowed.mkdir()
    public.rename(allowed / public.name)
    _, stranger_secret = generate_keys(tmp_path / "stranger", "mallory")
    return {"server_secret": server_secret, "server_public": tmp_path / "server" / "server.key",
            "allowed": allowed, "client": client_secret, "stranger": stranger_secret}


def test_loopback_addresses_are_recognised():
    assert is_loopback("tcp://127.0.0.1:5760") and is_loopback("tcp://localhost:1")
    assert is_loopback("ipc:///tmp/x") and is_loopback("tcp://[::1]:5760")
    assert not is_loopback("tcp://0.0.0.0:5760") and not is_loopback("tcp://10.1.2.3:5760")


def test_binding_beyond_loopback_requires_curve_keys():
    with pytest.raises(ValueError, match="CURVE"):
        ServerConfig(frames_address="tcp://0.0.0.0:5760")


def test_an_allowed_client_is_served_and_others_get_nothing(own_server, keys):
    srv = own_server("--curve-secret", str(keys["server_secret"]), "--allow", str(keys["allowed"]))
    with StreamClient(srv.frames, pipeline=["identity"], curve_secret_key=keys["client"],
                      curve_server_key=keys["server_public"]) as alice:
        alice.connect()
        alice.submit(np.full((8, 8), 4, np.uint16))
        (o,) = list(alice.outcomes())
        assert isinstance(o, Result) and o.data[0, 0] == 4
    stranger = StreamClient(srv.frames, curve_secret_key=keys["stranger"],
                            curve_server_key=keys["server_public"])
    with pytest.raises(ServerUnreachableError, match="CURVE key"):
        stranger.connect(timeout_s=1.5)
    stranger.close(timeout_s=0)
    plain = StreamClient(srv.frames)
    with pytest.raises(ServerUnreachableError):
        plain.connect(timeout_s=1.0)
    plain.close(timeout_s=0)


@pytest.mark.timeout(60)
def test_a_client_the_server_cannot_handshake_with_says_so_in_time_and_closes(own_server, keys):
    """A plain client to a CURVE server has no peer to send to once the handshake has failed: its I/O
    thread must not block in a send (it held the client's lock there, so connect never returned)."""
    srv = own_server("--curve-secret", str(keys["server_secret"]), "--allow", str(keys["allowed"]))
    for _ in range(3):
        plain = StreamClient(srv.frames)
        time.sleep(1.0)  # the handshake fails and its connection goes before anything is sent
        t0 = time.monotonic()
        with pytest.raises(ServerUnreachableError):
            plain.connect(timeout_s=1.0)
        plain.close(timeout_s=0)
        assert time.monotonic() - t0 < 10
