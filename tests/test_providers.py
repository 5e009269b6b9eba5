"""Execution providers: which onnxruntime build is in use, and what a user is told when the GPU
build they installed is hidden by the CPU build (both install the same `onnxruntime` package)."""

from __future__ import annotations

import onnxruntime as ort
import pytest

from livescope.server.providers import candidate_providers, gpu_build_problem, hidden_gpu_build

CPU_BUILD = ["AzureExecutionProvider", "CPUExecutionProvider"]
GPU_BUILD = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def test_a_gpu_build_hidden_by_the_cpu_build_is_named_with_the_command_that_fixes_it():
    problem = hidden_gpu_build("1.31.1", CPU_BUILD)
    assert problem is not None
    assert "onnxruntime-gpu 1.31.1 is installed" in problem
    assert "pip uninstall -y onnxruntime && pip install --force-reinstall --no-deps onnxruntime-gpu" in problem


@pytest.mark.parametrize(("gpu_version", "available"), [(None, CPU_BUILD), ("1.31.1", GPU_BUILD), (None, GPU_BUILD)])
def test_nothing_is_said_when_the_build_in_use_is_the_one_installed(gpu_version, available):
    assert hidden_gpu_build(gpu_version, available) is None


def test_the_plain_install_is_the_cpu_build_and_says_nothing():
    # `pip install livescope` pulls the CPU onnxruntime only (the GPU build is the `gpu` extra)
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this environment has the GPU build of onnxruntime")
    assert gpu_build_problem() is None
    assert candidate_providers() == ["CPUExecutionProvider"]


def test_asking_for_a_provider_the_build_lacks_names_what_there_is():
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this environment has the GPU build of onnxruntime")
    with pytest.raises(ValueError, match=r"execution provider 'cuda' is not available; have \[.*'cpu'"):
        candidate_providers("cuda")
