"""CURVE security (ZeroMQ's zmq.auth): loopback needs none, any other interface requires it.

Keys are ZeroMQ certificate files: ``NAME.key`` (public, give it out) and ``NAME.key_secret``
(keep it). The server allows exactly the client public keys found in its allow-list folder.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

_LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}


class SecurityError(Exception):
    pass


def is_loopback(address: str) -> bool:
    """tcp://127.x / localhost / [::1], ipc:// and inproc:// stay on this machine."""
    url = urlparse(address)
    if url.scheme in ("ipc", "inproc"):
        return True
    host = (url.netloc.rsplit(":", 1)[0] if url.netloc else "").strip()
    return host in _LOOPBACK_HOSTS or host.startswith("127.")


def generate_keys(folder: Path, name: str) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(str(folder), name)
    return Path(public), Path(secret)


def _load_secret(path: Path) -> tuple[bytes, bytes]:
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as e:
        raise SecurityError(f"cannot read CURVE key {path}: {e}") from None
    if secret is None:
        raise SecurityError(f"{path} holds no secret key (use the .key_secret file)")
    return public, secret


def _load_public(path: Path) -> bytes:
    try:
        return zmq.auth.load_certificate(str(path))[0]
    except (OSError, ValueError) as e:
        raise SecurityError(f"cannot read CURVE public key {path}: {e}") from None


class CurveServer:
    """Makes server sockets CURVE servers and runs the ZAP authenticator for the allow-list."""

    def __init__(self, ctx: zmq.Context, secret_key: Path, allowed_clients: Path) -> None:
        if not zmq.has("curve"):
            raise SecurityError("this libzmq was built without CURVE support")
        if not Path(allowed_clients).is_dir():
            raise SecurityError(f"allow-list folder not found: {allowed_clients}")
        self.public, self.secret = _load_secret(secret_key)
        self.auth = ThreadAuthenticator(ctx)
        self.auth.start()
        self.auth.configure_curve(domain="*", location=str(allowed_clients))

    def apply(self, sock: zmq.Socket) -> None:
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_server = True

    def stop(self) -> None:
        self.auth.stop()


def apply_client_curve(sock: zmq.Socket, client_secret_key: Path, server_public_key: Path) -> None:
    public, secret = _load_secret(client_secret_key)
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_serverkey = _load_public(server_public_key)
