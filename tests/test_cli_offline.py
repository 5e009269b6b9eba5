"""`livescope denoise IN OUT`: a stack in, the restored stack out, mistakes in one line."""

import os
import subprocess
import sys

import numpy as np
import tifffile


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "livescope.cli", *args], capture_output=True,
                          text=True, timeout=120)


def test_denoise_writes_a_float32_stack_of_the_same_shape(tmp_path):
    noisy = np.random.default_rng(0).poisson(120, (3, 64, 80)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "in.tif", noisy, photometric="minisblack")
    r = cli("denoise", str(tmp_path / "in.tif"), str(tmp_path / "out.ome.tif"))
    assert r.returncode == 0, r.stderr
    assert "denoise@3" in r.stdout and "photons from camera estimated" in r.stdout
    out = tifffile.imread(tmp_path / "out.ome.tif")
    assert out.shape == (3, 64, 80) and out.dtype == np.float32
    assert out.std() < noisy.std()


def test_denoise_refuses_an_existing_output_and_a_missing_input(tmp_path):
    tifffile.imwrite(tmp_path / "in.tif", np.zeros((1, 16, 16), np.uint16))
    (tmp_path / "out.tif").write_bytes(b"keep me")
    for args, words in ((("in.tif", "out.tif"), "--overwrite"), (("nope.tif", "x.tif"), "nope.tif")):
        r = cli("denoise", *(str(tmp_path / a) for a in args))
        assert r.returncode == 2 and "Traceback" not in r.stderr
        assert r.stderr.startswith("livescope: error:") and words in r.stderr
    assert (tmp_path / "out.tif").read_bytes() == b"keep me"


def test_the_help_shows_how_to_name_a_version():
    # help text is rich markup: NAME[@VERSION] would print as NAME
    for command, shown in ((["denoise"], "denoise@VERSION"), (["localise"], "localise@VERSION"),
                           (["train", "denoise"], "NAME@VERSION"), (["train", "refocus"], "NAME@VERSION")):
        r = subprocess.run([sys.executable, "-m", "livescope.cli", *command, "--help"], capture_output=True,
                           text=True, env={**os.environ, "COLUMNS": "200"})
        assert r.returncode == 0 and shown in r.stdout, (command, r.stdout)


def test_a_tile_too_small_for_the_models_halo_is_one_line_naming_the_smallest_that_works(tmp_path):
    raw = tmp_path / "small.ome.tif"
    tifffile.imwrite(raw, np.full((2, 64, 64), 120, np.uint16), ome=True, metadata={"axes": "TYX"})
    r = cli("denoise", str(raw), str(tmp_path / "out.ome.zarr"), "--tile", "16")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "--tile: tile 16 px leaves no core inside a halo" in r.stderr and "at least" in r.stderr
    assert not (tmp_path / "out.ome.zarr").exists()
