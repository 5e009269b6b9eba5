"""The design's dependency rules: the server never loads torch or pymmcore-plus; the core
needs only numpy, pyzmq and pydantic; the import contracts (pyproject's [tool.importlinter]: the
CLI above the parts, the server independent of models and acquire, the core importing no part, no
cycles) hold, and they do catch a forbidden import."""

import os
import shutil
import subprocess
import sys
from pathlib import Path


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


ROOT = Path(__file__).resolve().parents[1]


def check_imports(project: Path) -> subprocess.CompletedProcess:
    """`.ci/check-imports` (lint-imports on pyproject's contracts) run on ``project``, with this
    interpreter's environment first on PATH (pip, lint-imports)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(["bash", str(ROOT / ".ci" / "check-imports"), str(project)],
                          capture_output=True, text=True, env=env, timeout=240)


def test_the_import_contracts_hold():
    result = check_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_lazy_import_of_the_server_from_the_core_breaks_the_contracts(tmp_path):
    project = tmp_path / "project"
    shutil.copytree(ROOT, project, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", ".pytest_cache", "tests", "bench", "docs"))
    protocol = project / "livescope" / "protocol.py"
    protocol.write_text(protocol.read_text() + "\n\ndef _planted():\n    from livescope.server import tiling  # noqa\n")
    result = check_imports(project)
    assert result.returncode != 0
    assert "livescope.protocol -> livescope.server.tiling" in result.stdout
