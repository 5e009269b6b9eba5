"""`livescope keys generate`: a CURVE key pair whose secret only its owner can read (issue 16).

The secret key file is created readable and writable by its owner alone (0600) from the start,
also when it replaces an older, world-readable one; the public key is for giving out (0644 under
the usual umask). The pair works: a server and a client with such keys talk to each other.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import numpy as np
import zmq.auth

from livescope.client import Result, StreamClient
from livescope.security import generate_keys


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def keys_generate(folder, name: str = "server") -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "livescope.cli", "keys", "generate", str(folder), "--name", name],
                       capture_output=True, text=True, timeout=60, check=False)
    assert "Traceback" not in r.stderr, r.stderr
    return r


def test_the_secret_key_is_readable_by_its_owner_only(tmp_path):
    r = keys_generate(tmp_path / "keys")
    assert r.returncode == 0, r.stderr
    secret, public = tmp_path / "keys" / "server.key_secret", tmp_path / "keys" / "server.key"
    assert mode(secret) == 0o600
    assert mode(public) & 0o600 == 0o600 and not mode(public) & 0o022  # the owner writes, others may read
    assert str(secret) in r.stdout and str(public) in r.stdout
    pub, sec = zmq.auth.load_certificate(secret)
    assert sec is not None and zmq.auth.load_certificate(public) == (pub, None)


def test_the_secret_key_is_never_readable_by_others_even_under_a_permissive_umask(tmp_path):
    old = os.umask(0)
    try:
        _, secret = generate_keys(tmp_path, "alice")
    finally:
        os.umask(old)
    assert mode(secret) == 0o600


def test_a_regenerated_secret_key_replaces_a_world_readable_one_with_0600(tmp_path):
    stale = tmp_path / "server.key_secret"
    stale.write_text("an old key")
    stale.chmod(0o644)
    _, secret = generate_keys(tmp_path, "server")
    assert secret == stale and mode(secret) == 0o600
    assert zmq.auth.load_certificate(secret)[1] is not None
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_a_key_folder_that_is_a_file_is_a_one_line_error(tmp_path):
    (tmp_path / "keys").write_text("not a folder")
    r = keys_generate(tmp_path / "keys")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and str(tmp_path / "keys") in r.stderr, r.stderr


def test_generated_keys_secure_a_server_and_its_client(own_server, tmp_path):
    _, server_secret = generate_keys(tmp_path / "server", "server")
    _, client_secret = generate_keys(tmp_path / "allowed", "alice")
    srv = own_server("--curve-secret", str(server_secret), "--allow", str(tmp_path / "allowed"))
    with StreamClient(srv.frames, pipeline=["identity"], curve_secret_key=client_secret,
                      curve_server_key=tmp_path / "server" / "server.key") as alice:
        alice.connect()
        alice.submit(np.full((8, 8), 3, np.uint16))
        (o,) = list(alice.outcomes())
    assert isinstance(o, Result) and o.data[0, 0] == 3
