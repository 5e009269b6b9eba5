"""What `pip install livescope` brings, and what it leaves to extras (issue 18: an install that fits
the machine; nothing pulls cloud-storage clients unless asked)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

PYPROJECT = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\[<>=!~; ]", r, maxsplit=1)[0].lower() for r in requirements}


def test_the_plain_install_brings_no_gpu_runtime_no_acquisition_and_no_zarr_writers():
    # ome-writers requires fsspec's S3/HTTP clients; pymmcore-plus requires ome-writers; tensorstore is 65 MB
    plain = _names(PYPROJECT["project"]["dependencies"])
    assert "onnxruntime" in plain
    assert not plain & {"onnxruntime-gpu", "pymmcore-plus", "useq-schema", "ome-writers", "tensorstore", "fsspec",
                        "torch", "scikit-image", "imagecodecs", "napari"}


def test_acquisition_training_and_clusters_bring_the_zarr_writers_they_write_with():
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert _names(extras["zarr"]) == {"ome-writers", "tensorstore"}
    for extra in ("acquire", "train", "cluster", "view"):
        assert "livescope[zarr]" in extras[extra], extra
    assert {"pymmcore-plus", "useq-schema"} <= _names(extras["acquire"])


def test_every_module_an_extra_brings_has_a_one_line_install_hint():
    from livescope.cli import _EXTRAS

    for module in ("torch", "onnx", "skimage", "pymmcore_plus", "useq", "tensorstore", "ome_writers", "napari",
                   "dask", "bioimageio"):
        assert module in _EXTRAS, module
