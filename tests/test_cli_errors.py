"""A user's mistake, or a server that answers badly, ends every `livescope` command in one line on
stderr and a non-zero exit, within seconds: never a traceback, never a hang (issue 16).

- An address without its transport (`127.0.0.1:6199`) is refused in one line that says what an
  address looks like; the client closes the socket whose connect failed, so nothing hangs.
- A server's error replies, replies the CLI cannot read, refusals and silence are one line each.
  The "server" here is a real ROUTER socket on a real port that answers as scripted, so every
  reply a broken or different server could send can be tried on the real CLI process.
- `serve --models FILE` and `serve --frames HOST:PORT` are refused before anything is bound.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import zmq

from livescope.client import ResultSubscriber, ServerAddressError, StreamClient
from livescope.protocol import ControlReply, ErrorCode, ErrorHeader, encode_header
from tests.conftest import free_port

BAD_ADDRESS = "127.0.0.1:6199"  # no tcp://


def cli(*args: str, timeout_s: float = 60) -> tuple[subprocess.CompletedProcess, float]:
    """Run `livescope ARGS`; return the finished process and its wall time, s."""
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "livescope.cli", *args], capture_output=True, text=True, check=False,
                       timeout=timeout_s)
    return r, time.monotonic() - t0


def assert_one_line_error(r: subprocess.CompletedProcess, *phrases: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and "Error:" not in r.stderr, r.stderr
    assert r.stderr.startswith("livescope: error: ") and r.stderr.count("\n") == 1, r.stderr
    for phrase in phrases:
        assert phrase in r.stderr, r.stderr


# -- an address without tcp:// -------------------------------------------------------------------

ADDRESS_COMMANDS = {
    "status": ("status", "--server", BAD_ADDRESS),
    "models list": ("models", "list", "--server", BAD_ADDRESS),
    "models activate": ("models", "activate", "denoise@1", "--server", BAD_ADDRESS),
}


@pytest.mark.parametrize("args", ADDRESS_COMMANDS.values(), ids=ADDRESS_COMMANDS.keys())
def test_an_address_without_tcp_is_a_one_line_error_within_seconds(args):
    r, wall_s = cli(*args, timeout_s=30)
    assert_one_line_error(r, BAD_ADDRESS, "tcp://HOST:PORT")
    assert wall_s < 10


def test_train_deploy_to_an_address_without_tcp_fails_before_training(tmp_path):
    r, _ = cli("train", "denoise", "--steps", "1", "--models", str(tmp_path / "models"),
               "--deploy", "--server", BAD_ADDRESS, timeout_s=120)
    assert_one_line_error(r, "--deploy", "tcp://HOST:PORT")
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())


def test_the_client_refuses_an_address_without_tcp_and_closes_without_blocking():
    t0 = time.monotonic()
    client = StreamClient(BAD_ADDRESS)
    with pytest.raises(ServerAddressError, match="tcp://HOST:PORT"):
        client.connect(timeout_s=5)
    with pytest.raises(ServerAddressError):
        client.control("ping")
    closing = threading.Thread(target=client.close, daemon=True)  # no socket is left open, so the
    closing.start()                                                  # context terminates at once
    closing.join(5)
    assert not closing.is_alive()
    with pytest.raises(ServerAddressError, match="tcp://HOST:PORT"):
        ResultSubscriber("127.0.0.1:5761")
    assert time.monotonic() - t0 < 3


# -- a server's error replies --------------------------------------------------------------------

Reply = Callable[[dict], "list[bytes] | None"]


@pytest.fixture
def scripted_server() -> Iterator[Callable[[Reply], str]]:
    """A ROUTER on a free port that answers `ping` and hands every other message to ``reply``
    (its header, decoded), which returns the frames to send back, or None for no answer."""
    stop = threading.Event()
    threads = []

    def start(reply: Reply, answer_ping: bool = True) -> str:
        address = f"tcp://127.0.0.1:{free_port()}"
        ctx = zmq.Context()
        sock = ctx.socket(zmq.ROUTER)
        sock.linger = 0
        sock.bind(address)

        def serve() -> None:
            try:
                while not stop.is_set():
                    if not sock.poll(50):
                        continue
                    identity, raw, *_ = sock.recv_multipart()
                    header = json.loads(raw)
                    if answer_ping and header.get("command") == "ping":
                        out = [encode_header(ControlReply(request_id=header["request_id"], ok=True))]
                    else:
                        out = reply(header)
                    if out is not None:
                        sock.send_multipart([identity, *out])
            finally:
                sock.close(0)
                ctx.term()

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        threads.append(t)
        return address

    yield start
    stop.set()
    for t in threads:
        t.join(5)


def error_reply(header: dict) -> list[bytes]:
    return [encode_header(ErrorHeader(code=ErrorCode.bad_request, request_id=header["request_id"],
                                      message="this version cannot be loaded"))]


def failed_reply(header: dict) -> list[bytes]:
    return [encode_header(ControlReply(request_id=header["request_id"], ok=False))]


def empty_reply(header: dict) -> list[bytes]:
    """ok, but none of the fields the command reads (a different server version, or a bug)."""
    return [encode_header(ControlReply(request_id=header["request_id"], ok=True))]


def mistyped_reply(header: dict) -> list[bytes]:
    """ok, every field the command reads present, each of the wrong type."""
    junk = {"status": 1, "providers": 2, "models_loaded": 3, "models": 4, "problems": 5, "active": [],
            "previous": [], "model": [], "provider": [], "load_s": "fast", "unloaded": [],
            **{k: "many" for k in ("frames", "results", "errors", "dropped", "duplicates",
                                   "queue_depth", "streams", "uptime_s")}}
    return [encode_header(ControlReply(request_id=header["request_id"], ok=True, data=junk))]


def list_with_a_broken_entry(header: dict) -> list[bytes]:
    data = {"models": [{"name": "denoise", "version": "two"}], "problems": []}
    return [encode_header(ControlReply(request_id=header["request_id"], ok=True, data=data))]


SERVER_COMMANDS = {
    "status": ("status",),
    "models list": ("models", "list"),
    "models activate": ("models", "activate", "denoise@2"),
    "models load": ("models", "load", "denoise@2"),
    "models unload": ("models", "unload", "denoise@2"),
    "models rescan": ("models", "rescan"),
}
REPLIES = {"an error reply": error_reply, "a failed reply without its error": failed_reply,
           "an ok reply without data": empty_reply, "an ok reply of mistyped data": mistyped_reply}


@pytest.mark.parametrize("reply", REPLIES.values(), ids=REPLIES.keys())
@pytest.mark.parametrize("args", SERVER_COMMANDS.values(), ids=SERVER_COMMANDS.keys())
def test_a_server_reply_the_command_cannot_use_is_one_line(scripted_server, args, reply):
    address = scripted_server(reply)
    r, _ = cli(*args, "--server", address)
    assert_one_line_error(r)
    assert r.stdout == ""


def test_a_broken_entry_in_a_server_listing_is_one_line(scripted_server):
    r, _ = cli("models", "list", "--server", scripted_server(list_with_a_broken_entry))
    assert_one_line_error(r, "list_models")


def test_a_server_that_goes_silent_after_connecting_is_one_line(scripted_server):
    address = scripted_server(lambda header: None)
    r, wall_s = cli("status", "--server", address)
    assert_one_line_error(r, "no reply", address)
    assert wall_s < 30


def test_a_server_that_refuses_every_request_says_why(scripted_server):
    """A server speaking another protocol version refuses the request without naming it."""
    def refuse(header: dict) -> list[bytes]:
        return [encode_header(ErrorHeader(code=ErrorCode.protocol_version,
                                          message="protocol version 1 is not supported"))]

    address = scripted_server(refuse, answer_ping=False)
    r, _ = cli("status", "--server", address)
    assert_one_line_error(r, "refused", "protocol version 1 is not supported")


def test_a_server_that_answers_in_another_protocol_version_says_so(scripted_server):
    def newer(header: dict) -> list[bytes]:
        return [json.dumps({"type": "reply", "protocol": 2, "request_id": header["request_id"], "ok": True,
                            "data": {}}).encode()]

    address = scripted_server(newer, answer_ping=False)
    r, _ = cli("models", "list", "--server", address)
    assert_one_line_error(r, "cannot read", "protocol version 2")


# -- serve --models FILE -------------------------------------------------------------------------


def test_serve_refuses_a_models_path_that_is_not_a_folder_before_binding(tmp_path):
    frames_port, results_port = free_port(), free_port()
    not_a_folder = tmp_path / "models.txt"
    not_a_folder.write_text("not a repository")
    for models in (not_a_folder, "/dev/null"):
        r, _ = cli("serve", "--models", str(models), "--metrics-port", "0", "--threads", "1",
                   "--frames", f"tcp://127.0.0.1:{frames_port}", "--results", f"tcp://127.0.0.1:{results_port}",
                   timeout_s=30)
        assert_one_line_error(r, str(models), "not a folder")
        assert "ready" not in r.stdout


def test_serve_refuses_an_address_without_tcp_before_binding():
    r, _ = cli("serve", "--frames", BAD_ADDRESS, "--metrics-port", "0", timeout_s=30)
    assert_one_line_error(r, BAD_ADDRESS, "tcp://HOST:PORT")
    assert "CURVE" not in r.stderr  # it is not an address beyond this machine: it is no address


def test_serve_accepts_a_models_folder_that_does_not_exist_yet(own_server, tmp_path):
    srv = own_server("--models", str(tmp_path / "not-yet"))
    assert srv.proc.poll() is None


TRAIN, ACQUIRE, ZARR = 'pip install torch==2.13.0 "livescope[train]"', 'pip install "livescope[acquire]"', \
    'pip install "livescope[zarr]"'


@pytest.mark.parametrize("missing,args,install", [
    ("torch", ("train", "denoise", "--data", "movie.tif", "--steps", "2"), TRAIN),
    ("skimage", ("calibrate", "pairs", "--output", "pairs.ome.zarr", "--grid", "1x1"), TRAIN),
    ("pymmcore_plus", ("demo", "--frames", "2"), ACQUIRE),
    ("useq", ("acquire", "--frames", "2", "--output", "run.ome.zarr"), ACQUIRE),
    ("pymmcore_plus", ("calibrate", "pairs", "--output", "pairs.ome.zarr", "--grid", "1x1"), ACQUIRE),
    ("tensorstore", ("denoise", "movie.tif", "out.ome.zarr"), ZARR),
    ("ome_writers", ("denoise", "movie.tif", "out.ome.zarr"), ZARR),
])
def test_a_command_whose_extra_is_not_installed_says_how_to_install_it(tmp_path, missing, args, install):
    # The plain install leaves out torch, onnx and scikit-image (training, calibration), pymmcore-plus
    # and useq-schema (acquisition) and tensorstore and ome-writers (OME-Zarr): as if one were not
    # installed (an import of it fails), the command says what to install, in one line.
    import numpy as np
    import tifffile

    tifffile.imwrite(tmp_path / "movie.tif", np.random.default_rng(0).poisson(50, (8, 64, 64)).astype(np.uint16))
    run = (f"import sys; sys.modules[{missing!r}] = None; sys.argv = ['livescope', *sys.argv[1:]]; "
           "from livescope.cli import main; main()")
    r = subprocess.run([sys.executable, "-c", run, *args], capture_output=True, text=True, check=False,
                       timeout=120, cwd=tmp_path)
    assert_one_line_error(r, f"needs {missing}", install)
    assert [p.name for p in tmp_path.iterdir()] == ["movie.tif"]  # it stopped before writing anything
