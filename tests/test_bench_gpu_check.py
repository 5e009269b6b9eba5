"""bench/gpu_check.py, the GPU check prepared for a CUDA machine, kept working on the CPU paths: the
same measurements (provider probe, denoise and localise speed, a stream through a real server)
in its --quick form, and its shell wrapper parses."""

from __future__ import annotations

import subprocess

from tests.bench_scripts import BENCH, load_bench_script


def test_the_gpu_check_runs_every_measurement_on_the_cpu_paths():
    gpu_check = load_bench_script("gpu_check.py")
    result = gpu_check.check(gpu_check.parse_args(["--quick", "--provider", "cpu"]))
    assert result["denoise"]["provider"] == "cpu" and result["denoise"]["per_s"] > 0
    assert [r["frame_px"] for r in result["localise"]] == [32, 64] and all(r["frames_per_s"] > 0
                                                                          for r in result["localise"])
    stream = result["stream"]
    assert stream["submitted"] > 0 and stream["results"] + stream["dropped"] == stream["submitted"]
    assert stream["latency_p99_ms"] >= stream["latency_p50_ms"] > 0
    assert "CPUExecutionProvider" in result["providers_available"]


def test_its_shell_wrapper_parses():
    assert subprocess.run(["bash", "-n", str(BENCH / "gpu_check.sh")], check=False).returncode == 0
