"""Execution providers: probe TensorRT -> CUDA -> CPU and remember what works.

onnxruntime-gpu lists TensorRT and CUDA as available even where their libraries are missing;
it then fails (or silently falls back to CPU) when a session is created. So each provider is
tried on the real model, and kept only if the session reports it as its first provider.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import subprocess
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Literal

import onnxruntime as ort
from pydantic import BaseModel, ConfigDict, Field

from livescope.validation import first_line

log = logging.getLogger("livescope.server")

PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
SHORT_NAMES = {"TensorrtExecutionProvider": "tensorrt", "CUDAExecutionProvider": "cuda",
               "CPUExecutionProvider": "cpu"}

# Providers that failed once are not tried again in this process: a failed TensorRT probe
# costs seconds and floods stderr.
_failed: set[str] = set()
_announced: set[str] = set()


class RuntimeOptions(BaseModel):
    """How sessions are created: one set for every model a server runs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    provider: str | None = Field(default=None, description="tensorrt|cuda|cpu; None = probe")
    intra_op_threads: int | None = Field(default=None, ge=1)
    fp16: bool = Field(default=False, description="TensorRT: allow fp16 kernels")
    graph_optimisation: Literal["disable", "basic", "extended", "all"] = "all"
    device_id: int = Field(default=0, ge=0, description="the GPU a CUDA or TensorRT session runs on")


_OPT_LEVELS = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
               "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
               "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
               "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}


def session_options(options: RuntimeOptions) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.graph_optimization_level = _OPT_LEVELS[options.graph_optimisation]
    so.log_severity_level = 3
    # Idle inference threads must not spin: they would starve the socket threads on small CPUs.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if options.intra_op_threads:
        so.intra_op_num_threads = options.intra_op_threads
    return so


def _provider_options(name: str, options: RuntimeOptions) -> dict[str, str]:
    if name == "CUDAExecutionProvider":
        # HEURISTIC: a new frame size must not stall for an exhaustive cuDNN search.
        return {"cudnn_conv_algo_search": "HEURISTIC", "device_id": str(options.device_id)}
    if name == "TensorrtExecutionProvider":
        return {"trt_fp16_enable": str(options.fp16), "trt_engine_cache_enable": "True",
                "device_id": str(options.device_id)}
    return {}


@contextlib.contextmanager
def _quiet_probe(active: bool):
    """Silence onnxruntime while a GPU provider is probed: a missing CUDA or TensorRT library
    is an expected outcome here, reported once in our own log, not as pages of stderr."""
    if not active:
        yield
        return
    ort.set_default_logger_severity(4)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # its Python fallback path print()s
            yield
    finally:
        ort.set_default_logger_severity(3)


def hidden_gpu_build(gpu_version: str | None, available: Sequence[str]) -> str | None:
    """Why the GPU providers are missing although onnxruntime-gpu (``gpu_version``) is installed:
    the CPU build, which installs the same `onnxruntime` package, was unpacked over it (pip does
    so for `livescope[gpu]`). None when there is nothing to say."""
    if gpu_version is None or "CUDAExecutionProvider" in available:
        return None
    return (f"onnxruntime-gpu {gpu_version} is installed, but the CPU build of onnxruntime hides it (both "
            "install the same package); make the GPU build the one in use: pip uninstall -y onnxruntime && "
            "pip install --force-reinstall --no-deps onnxruntime-gpu")


def _installed(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def gpu_build_problem() -> str | None:
    """`hidden_gpu_build` for this environment."""
    return hidden_gpu_build(_installed("onnxruntime-gpu"), ort.get_available_providers())


def candidate_providers(preferred: str | None = None) -> list[str]:
    available = set(ort.get_available_providers())
    order = [p for p in PREFERENCE if p in available and p not in _failed]
    if preferred:
        full = {v: k for k, v in SHORT_NAMES.items()}.get(preferred, preferred)
        if full not in available:
            problem = gpu_build_problem()
            raise ValueError(f"execution provider {preferred!r} is not available; have "
                             f"{sorted(SHORT_NAMES.get(p, p) for p in available)}"
                             + (f" ({problem})" if problem else ""))
        order = [full] + ([] if full == "CPUExecutionProvider" else ["CPUExecutionProvider"])
    return order


def visible_gpus() -> int:
    """How many GPUs this process may use: CUDA_VISIBLE_DEVICES where set, else what nvidia-smi lists
    (0 without either). Only spreads workers over devices: the session probe decides the provider."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(line.startswith("GPU ") for line in listed.stdout.splitlines()) if listed.returncode == 0 else 0


def create_session(
    model_path: Path, options: RuntimeOptions = RuntimeOptions()
) -> tuple[ort.InferenceSession, str]:
    """Create a session on the best provider that really works; return it and the provider."""
    errors: list[str] = []
    for name in candidate_providers(options.provider):
        providers: list = [(name, _provider_options(name, options))]
        if name != "CPUExecutionProvider":
            providers.append("CPUExecutionProvider")
        try:
            with _quiet_probe(name != "CPUExecutionProvider"):
                sess = ort.InferenceSession(
                    str(model_path), session_options(options), providers=providers
                )
        except Exception as e:  # onnxruntime raises several unrelated types here
            if "CPUExecutionProvider" == name:
                raise
            errors.append(f"{name}: {first_line(e)}")
            _failed.add(name)
            continue
        if sess.get_providers()[0] != name:
            errors.append(f"{name}: fell back to {sess.get_providers()[0]}")
            _failed.add(name)
            continue
        if name not in _announced:
            _announced.add(name)
            log.info("execution provider in use: %s", SHORT_NAMES.get(name, name))
            for err in errors:
                log.info("  skipped %s", err)
            if name == "CPUExecutionProvider" and (problem := gpu_build_problem()):
                log.warning("%s", problem)
        return sess, SHORT_NAMES.get(name, name)
    raise RuntimeError("no execution provider could run the model: " + "; ".join(errors))
