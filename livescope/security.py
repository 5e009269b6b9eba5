"""CURVE security (ZeroMQ's zmq.auth): loopback needs none, any other interface requires it.

Keys are ZeroMQ certificate files: ``NAME.key`` (public, give it out) and ``NAME.key_secret``
(keep it; written readable by its owner alone). The server allows exactly the client public keys
found in its allow-list folder.
"""

from __future__ import annotations

import os
import tempfile
from datetime import datetime
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
    """Write a new key pair, ``folder/NAME.key`` and ``folder/NAME.key_secret``, replacing any
    there. The secret key's file is readable by its owner alone (0600) from the moment it exists:
    it is written to a new 0600 file beside it, then renamed over the old one."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    public_key, secret_key = zmq.curve_keypair()
    public, secret = folder / f"{name}.key", folder / f"{name}.key_secret"
    _write_owner_only(secret, _certificate(public_key, secret_key))
    public.write_text(_certificate(public_key))
    return public, secret


def _certificate(public_key: bytes, secret_key: bytes | None = None) -> str:
    """A ZeroMQ certificate file's text (as zmq.auth writes it, and reads it back)."""
    what = "**Secret** Certificate\n#   Keep it private." if secret_key else "Public Certificate"
    lines = [f"#   ****  Generated on {datetime.now().isoformat(timespec='seconds')} by livescope  ****",
             f"#   ZeroMQ CURVE {what}", "", "metadata", "curve", f'    public-key = "{public_key.decode()}"']
    if secret_key:
        lines.append(f'    secret-key = "{secret_key.decode()}"')
    return "\n".join(lines) + "\n"


def _write_owner_only(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # created 0600
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
