"""livescope models in the community's model zoo format: `livescope models export NAME@V OUT.zip`
writes a bioimage.io package that bioimageio.spec validates and bioimageio.core runs, giving what
livescope gives on the same frame; models that mean nothing to other tools are refused in one line.
Nothing is downloaded: the packages are built here, from the shipped models."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import numpy as np
import pytest
import tifffile
from bioimageio.core import predict
from bioimageio.core import test_model as bioimageio_test
from bioimageio.spec import load_model_description
from bioimageio.spec.model.v0_5 import TensorId

from livescope.server.offline import run_offline
from livescope.stackio import read_stack


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "livescope.cli", *args], capture_output=True, text=True,
                          timeout=300, check=False)


def noisy_frame(seed: int, baseline_adu: float, e_per_adu: float, size: int = 192) -> np.ndarray:
    """A camera frame (ADU) of blurred blobs at 5-80 photons, not the package's own test input."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    blobs = ndimage.gaussian_filter(rng.random((size, size)).astype(np.float32) ** 8, 2.0)
    photons = rng.poisson(5 + 75 * blobs / blobs.max())
    return np.round(photons / e_per_adu + baseline_adu).astype(np.uint16)


@pytest.mark.parametrize("model", ["denoise@3", "denoise@2"])
def test_an_exported_model_validates_and_bioimageio_core_reproduces_its_test_output(tmp_path, model):
    out = tmp_path / f"{model.replace('@', '-')}.zip"
    r = cli("models", "export", model, str(out))
    assert r.returncode == 0, r.stderr
    assert f"{model} -> {out}" in r.stdout
    summary = bioimageio_test(out)  # bioimageio.core: validates the description, runs the test input, compares
    assert summary.status == "passed", summary.format()
    with zipfile.ZipFile(out) as z:
        names = set(z.namelist())
    assert {"rdf.yaml", "model.onnx", "test_input.npy", "test_output.npy", "cover.png", "README.md",
            "livescope-card.yaml"} <= names  # the card, with its provenance and metrics, travels along
    descr = load_model_description(out)
    assert descr.weights.onnx is not None and descr.license == "BSD-3-Clause" and descr.cite


def test_a_camera_agnostic_package_for_a_camera_gives_what_livescope_gives_on_the_same_frame(tmp_path):
    out = tmp_path / "denoise.zip"
    r = cli("models", "export", "denoise@3", str(out), "--baseline", "100", "--e-per-adu", "0.5")
    assert r.returncode == 0, r.stderr
    assert bioimageio_test(out).status == "passed"

    frame = noisy_frame(seed=7, baseline_adu=100.0, e_per_adu=0.5, size=320)
    tifffile.imwrite(tmp_path / "frame.tif", frame[None])
    run_offline("denoise@3", tmp_path / "frame.tif", tmp_path / "ours.ome.tif", task="denoise",
                baseline_adu=100.0, e_per_adu=0.5)
    ours = read_stack(tmp_path / "ours.ome.tif").frames[0]
    theirs = predict(model=out, inputs={TensorId("raw"): frame[None, None].astype(np.float32)})
    theirs = np.asarray(theirs.members[TensorId("restored")].data).reshape(ours.shape)
    # the same restoration, in ADU, wherever the package says its output is valid: inside the halo
    # (bioimageio.core fills the halo from padded input; livescope runs the frame whole)
    halo = load_model_description(out).outputs[0].axes[-1].halo
    inside = (slice(halo, -halo),) * 2
    np.testing.assert_allclose(theirs[inside], ours[inside], rtol=0, atol=1e-3 * float(np.ptp(ours)))


@pytest.mark.parametrize("args,words", [
    (("localise@1", "out.zip"), "localise@1 is a localise model; only image-to-image models"),
    (("denoise@2", "out.zip", "--baseline", "100", "--e-per-adu", "0.5"), "takes ADU already"),
    (("denoise@3", "out.zip", "--baseline", "100"), "give --baseline and --e-per-adu together"),
    (("denoise@3", "out.tar"), "a bioimage.io package is a .zip file"),
    (("denoise@9", "out.zip"), "denoise@9 does not exist"),
])
def test_what_cannot_be_exported_is_refused_in_one_line(tmp_path, args, words):
    model, name, *rest = args
    r = cli("models", "export", model, str(tmp_path / name), *rest)
    assert r.returncode == 2 and r.stderr.startswith("livescope: error:") and words in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not any(tmp_path.iterdir())


def test_an_existing_package_is_kept_unless_overwrite(tmp_path):
    out = tmp_path / "denoise.zip"
    out.write_bytes(b"precious")
    r = cli("models", "export", "denoise@2", str(out))
    assert r.returncode == 2 and "already exists" in r.stderr and out.read_bytes() == b"precious"
    assert cli("models", "export", "denoise@2", str(out), "--overwrite").returncode == 0
    assert bioimageio_test(out).status == "passed"


def test_a_sample_frame_becomes_the_test_input(tmp_path):
    frame = noisy_frame(seed=3, baseline_adu=100.0, e_per_adu=1.0, size=200)
    tifffile.imwrite(tmp_path / "mine.tif", frame[None])
    out = tmp_path / "denoise.zip"
    assert cli("models", "export", "denoise@2", str(out), "--sample", str(tmp_path / "mine.tif")).returncode == 0
    with zipfile.ZipFile(out) as z, z.open("test_input.npy") as f:
        test_input = np.load(f)
    assert test_input.shape == (1, 1, 200, 200)  # a multiple of the model's 4 px
    np.testing.assert_array_equal(test_input[0, 0], frame)
    assert bioimageio_test(out).status == "passed"
