"""A C client written from docs/protocol.md alone agrees with the server (issue 16, defect 9).

tests/c_client/livescope_client.c is built with the system C compiler against libzmq and run
against a real server: each of its checks is one rule of the doc, so the doc and the server
cannot drift apart unnoticed. Its checks marked expected-fail are disagreements waiting for a
server change (they print `xfail`); one that passes prints `XPASS`, reported here as a warning.

CI installs a compiler and libzmq's headers (.ci/run); elsewhere the test is skipped without them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import warnings
from pathlib import Path

import pytest

SOURCE = Path(__file__).parent / "c_client" / "livescope_client.c"
CFLAGS = ["-std=c99", "-Wall", "-Wextra", "-pedantic", "-Werror", "-O1"]


def _unavailable(reason: str) -> None:
    """Without a compiler or libzmq's headers: a failure in CI (it must run there), else a skip."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason}: CI must build the C protocol client (.ci/run installs libzmq3-dev and a C compiler)")
    pytest.skip(f"{reason} (install libzmq3-dev and a C compiler to run the C protocol client)")


@pytest.fixture(scope="module")
def c_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cc = shutil.which("cc")
    if cc is None:
        _unavailable("no C compiler (`cc`) on PATH")
    build = tmp_path_factory.mktemp("c_client")
    probe = build / "probe.c"
    probe.write_text("#include <zmq.h>\nint main(void) { void *c = zmq_ctx_new(); return zmq_ctx_term(c); }\n")
    found = subprocess.run([cc, "-std=c99", "-o", str(build / "probe"), str(probe), "-lzmq"],
                           capture_output=True, text=True, check=False)
    if found.returncode != 0:
        _unavailable(f"cannot build against libzmq (zmq.h or libzmq missing): {found.stderr.strip()[-300:]}")
    binary = build / "livescope_client"
    built = subprocess.run([cc, *CFLAGS, "-o", str(binary), str(SOURCE), "-lzmq", "-lm"],
                           capture_output=True, text=True, check=False)
    assert built.returncode == 0, f"the C client does not compile cleanly:\n{built.stderr}"
    return binary


def test_a_c_client_written_from_the_doc_agrees_with_the_server(c_client, own_server):
    srv = own_server()
    run = subprocess.run([str(c_client), srv.frames, srv.results], capture_output=True, text=True, check=False,
                         timeout=240)
    lines = run.stdout.splitlines()
    print(run.stdout, run.stderr, sep="\n")
    failed = [line for line in lines if line.startswith("FAIL ")]
    assert run.returncode == 0 and not failed, (
        f"the C client (exit {run.returncode}) disagrees with the server:\n" + "\n".join(failed or lines)
        + (f"\n{run.stderr}" if run.stderr else ""))
    checks = [line for line in lines if line.split(" ", 1)[0] in ("ok", "xfail", "XPASS")]
    assert len(checks) >= 30 and not any(line.startswith("skip ") for line in lines), run.stdout
    for line in lines:
        if line.startswith("XPASS "):
            warnings.warn(f"C client: {line}", stacklevel=1)
