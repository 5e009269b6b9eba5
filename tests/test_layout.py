"""The design's dependency rules: the server never loads torch or pymmcore-plus; the core
needs only numpy, pyzmq and pydantic."""

import subprocess
import sys


def modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", f"{code}\nimport sys; print(' '.join(sys.modules))"],
                         capture_output=True, text=True, check=True).stdout
    return {m.split(".")[0] for m in out.split()}


def test_the_server_needs_neither_torch_nor_pymmcore_plus():
    loaded = modules_after("import livescope.cli, livescope.server.server")
    assert "torch" not in loaded and "pymmcore_plus" not in loaded


def test_the_core_needs_only_numpy_pyzmq_and_pydantic():
    loaded = modules_after("import livescope.protocol, livescope.client, livescope.modelcard")
    assert not {"torch", "pymmcore_plus", "onnxruntime", "useq"} & loaded


def test_the_folders_map_into_one_namespace():
    import livescope.acquire
    import livescope.models
    import livescope.server

    for pkg, folder in ((livescope.acquire, "acquire"), (livescope.server, "server"),
                        (livescope.models, "models")):
        assert pkg.__file__.replace("\\", "/").endswith(f"/{folder}/__init__.py")
