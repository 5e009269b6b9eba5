"""`livescope demo`: one command, every frame restored, and nothing left running after Ctrl-C."""

import os
import re
import signal
import subprocess
import sys
import time


def _ctrl_c_as_at_a_terminal() -> None:
    # A shell starts background jobs with SIGINT ignored, and a child inherits that: the demo
    # must get Ctrl-C as it does when a user runs it, however the tests were started.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def demo(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "livescope.cli", "demo", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "COLUMNS": "200"}, preexec_fn=_ctrl_c_as_at_a_terminal, **kw)


def test_the_demo_restores_every_frame_and_says_how_much_cleaner_they_are(tmp_path):
    p = demo("--frames", "12", "--size", "256", "--output", str(tmp_path / "out"))
    out, err = p.communicate(timeout=240)
    assert p.returncode == 0, err
    assert re.search(r"sent / restored\s*│\s*12 / 12", out), out
    assert re.search(r"dropped\s*│\s*0 ", out), out
    psnr = re.search(r"raw ([\d.]+) dB -> restored ([\d.]+) dB", out)
    assert psnr and float(psnr.group(2)) > float(psnr.group(1)), out
    assert (tmp_path / "out" / "raw.ome.zarr").is_dir()
    assert (tmp_path / "out" / "raw.denoise.ome.zarr").is_dir()


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if text.encode() in f.read():
                    pids.append(int(pid))
        except OSError:
            pass
    return pids


def test_ctrl_c_stops_the_demo_and_its_server(tmp_path):
    p = demo("--frames", "100000", "--size", "64", "--output", str(tmp_path / "out"))
    address = None
    deadline = time.monotonic() + 120
    while address is None and time.monotonic() < deadline:
        line = p.stdout.readline()
        m = re.search(r"server ready on (tcp://\S+)", line)
        address = m.group(1) if m else None
    assert address, "the demo never reported its server"
    assert _processes_mentioning(address), "the server should be running"
    time.sleep(3)  # mid-acquisition
    p.send_signal(signal.SIGINT)
    try:
        p.communicate(timeout=60)
    finally:
        p.kill()  # never left running (and loading the machine) if it did not stop
    assert p.returncode != 0
    time.sleep(0.5)
    assert _processes_mentioning(address) == [], "the server outlived the demo"
